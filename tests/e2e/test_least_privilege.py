"""Least privilege, tested (issue 5, point 7) on the SAS a real run hands its nodes.

One `topn run` keeps its job; the SAS are then read back from the task and pool definitions
through the Batch API (what the node really gets), and tried against the real Azurite:

* the output container SAS can create and write blobs but cannot read, list or delete them, and
  is useless on any other container;
* a task's manifest SAS reads that one blob and nothing else, and cannot write or delete it;
* the inputs' read SAS (in the manifests) reads the run's own input blobs, and cannot list, write
  or delete them, nor read any other container;
* the node script's SAS cannot replace the script;
* an expired SAS, minted the way a run mints one, is refused;
* no key, SAS signature or token appears in anything the run printed or wrote, nor in the
  emulator's log and the node folders of the run.

The wrong Batch or Storage key (exit 2, one request, nothing created) is covered by
tests/e2e/test_cli_usage.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_asyncio
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.storage.blob.aio import BlobClient, ContainerClient

from orchestrator.azure.sas import container_url, mint_container_read_sas, mint_container_write_sas
from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.fault_support import run_topn_live
from tests.e2e.run_cli import topn_environment
from tests.secret_scan import find_secrets, texts_under
from tests.task_units import manifest_url, task_manifest

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

PREFIX = "leastpriv"
POOL_ID = "least-privilege"
# Names that must survive URL encoding in blob names and SAS URLs (issue 5, point 6).
TEXTS = {
    "plain.txt": "red green red blue\n",
    "odd names/a b#c?d%e 'q' \"w\" é.txt": "ünïcode words, ünïcode names\n",
}
# Small SDK retry budget: a 403 is final anyway, and nothing here should wait on backoff.
NO_RETRIES: dict[str, Any] = {"retry_total": 0}


@dataclass(frozen=True)
class FinishedRun:
    run_id: str
    folder: Path
    stdout: str
    stderr: str
    output_sas_url: str  # TOPN_OUTPUT_SAS_URL of a task: the output container with its SAS
    manifest_sas_urls: list[str]  # every resource file URL of the run's tasks: their unit manifests
    input_sas_urls: list[str]  # the container SAS URLs the manifests give for reading the inputs
    input_blobs: list[str]  # the inputs' blob names, as the manifests give them
    node_script_sas_url: str  # the start task's resource file
    tasks: list[Any]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def finished_run(
    tmp_path_factory: pytest.TempPathFactory, azurite: StorageEndpoint, batch_emulator: BatchEndpoint
) -> AsyncIterator[FinishedRun]:
    """One real run through the CLI whose job is kept, and the SAS its tasks and pool were given."""
    folder = tmp_path_factory.mktemp("least-privilege")
    for relpath, text in TEXTS.items():
        path = folder / "in" / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    env = topn_environment(
        batch_emulator,
        azurite,
        folder / ".topn",
        TOPN_RUN_DELETE_JOB="false",
        TOPN_STORAGE_CONTAINER_PREFIX=PREFIX,
        TOPN_POOL_ID=POOL_ID,
    )
    run = await run_topn_live(["run", "in", "--out", "out", "--json", "--log-level", "debug"], folder, env)
    assert run.exit_code == 0, run.stderr[-3000:]
    run_id = run.summary()["run_id"]
    credential = AzureNamedKeyCredential(batch_emulator.account_name, batch_emulator.account_key)
    async with BatchClient(batch_emulator.endpoint, credential) as batch:
        tasks = [task async for task in batch.list_tasks(f"topn-{run_id}")]
        pool = await batch.get_pool(POOL_ID)
    outputs = {
        str(setting.value)
        for task in tasks
        for setting in task.environment_settings or []
        if setting.name == "TOPN_OUTPUT_SAS_URL"
    }
    assert len(outputs) == 1, "every task of a run writes to the same output container"
    assert pool.start_task is not None and pool.start_task.resource_files
    manifests = [await task_manifest(task) for task in tasks]
    yield FinishedRun(
        run_id=run_id,
        folder=folder,
        stdout=run.stdout,
        stderr=run.stderr,
        output_sas_url=outputs.pop(),
        manifest_sas_urls=[manifest_url(task) for task in tasks],
        input_sas_urls=sorted({str(url) for manifest in manifests for url in manifest["sources"]}),
        input_blobs=[str(item["blob"]) for manifest in manifests for item in manifest["inputs"]],
        node_script_sas_url=str(pool.start_task.resource_files[0].http_url),
        tasks=tasks,
    )


def with_path(url: str, path: str) -> str:
    """`url` pointing at another path, keeping its SAS query (to try a SAS outside its scope)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{path}?{parts.query}"


def sas_fields(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


async def status_of_failure(call: Any) -> tuple[int | None, str | None]:
    """Await `call()`; it must fail with an HTTP error, whose status and error code are returned."""
    with pytest.raises(HttpResponseError) as refused:
        await call()
    error_code = getattr(refused.value, "error_code", None)  # set by the storage SDK on its errors
    return refused.value.status_code, error_code


async def test_the_output_sas_creates_and_writes_but_cannot_read_list_or_delete(
    finished_run: FinishedRun, azurite: StorageEndpoint
) -> None:
    fields = sas_fields(finished_run.output_sas_url)
    assert sorted(fields["sp"]) == sorted("cw")  # create and write, nothing else
    assert fields.get("sr") == "c"
    container = ContainerClient.from_container_url(finished_run.output_sas_url, **NO_RETRIES)
    async with container:
        # What the node does: create a blob, and write it again when a retry repeats the upload.
        await container.upload_blob("probe/written-by-node.txt", b"first", overwrite=False)
        await container.upload_blob("probe/written-by-node.txt", b"second", overwrite=True)

        existing = "plain_OUTPUT.txt"  # the run's own output: there, and still not readable
        assert await status_of_failure(lambda: container.download_blob(existing)) == (
            403,
            "AuthorizationPermissionMismatch",
        )
        blob = container.get_blob_client(existing)
        assert (await status_of_failure(blob.get_blob_properties))[0] == 403

        async def list_all() -> None:
            [item async for item in container.list_blobs()]

        assert (await status_of_failure(list_all))[0] == 403
        assert (await status_of_failure(lambda: container.delete_blob(existing)))[0] == 403
        assert (await status_of_failure(lambda: container.delete_blob("probe/written-by-node.txt")))[0] == 403

    # The account key sees both blobs intact: the refusals above changed nothing.
    owner = ContainerClient.from_connection_string(
        azurite.connection_string, f"{PREFIX}-out-{finished_run.run_id}", **NO_RETRIES
    )
    async with owner:
        assert await (await owner.download_blob("probe/written-by-node.txt")).readall() == b"second"
        assert (await (await owner.download_blob(existing)).readall()).startswith(b"Word\tCount")

    # The same SAS on any other container (another run's outputs, the inputs) is refused.
    account_path = urlsplit(finished_run.output_sas_url).path.rsplit("/", 1)[0]
    for other in (f"{PREFIX}-out-20000101t000000z-000000", f"{PREFIX}-input"):
        elsewhere = ContainerClient.from_container_url(
            with_path(finished_run.output_sas_url, f"{account_path}/{other}"), **NO_RETRIES
        )
        async with elsewhere:
            assert (await status_of_failure(partial(elsewhere.upload_blob, "x.txt", b"x")))[0] == 403


async def test_a_manifest_sas_reads_its_one_blob_and_cannot_write_or_delete(
    finished_run: FinishedRun,
) -> None:
    assert len(finished_run.manifest_sas_urls) == len(finished_run.tasks) >= 2
    for url in finished_run.manifest_sas_urls:
        fields = sas_fields(url)
        assert fields["sp"] == "r" and fields.get("sr") == "b"
        blob = BlobClient.from_blob_url(url, **NO_RETRIES)
        async with blob:
            assert b'"format":"topn.unit"' in await (await blob.download_blob()).readall()
            assert await status_of_failure(partial(blob.upload_blob, b"tampered", overwrite=True)) == (
                403,
                "AuthorizationPermissionMismatch",
            )
            assert (await status_of_failure(blob.delete_blob))[0] == 403
    # Each SAS names its own manifest: swapped onto another one, or onto an input, it is refused.
    first, second = finished_run.manifest_sas_urls[:2]
    input_path = f"{urlsplit(finished_run.input_sas_urls[0]).path}/runs/{finished_run.run_id}/plain.txt"
    for path in (urlsplit(second).path, input_path):
        swapped = BlobClient.from_blob_url(with_path(first, path), **NO_RETRIES)
        async with swapped:
            assert (await status_of_failure(swapped.download_blob))[0] == 403


async def test_the_input_sas_reads_the_runs_inputs_and_nothing_else(
    finished_run: FinishedRun, azurite: StorageEndpoint
) -> None:
    # One container SAS for every unit: the run's own input container, which holds its inputs only.
    assert len(finished_run.input_sas_urls) == 1
    url = finished_run.input_sas_urls[0]
    fields = sas_fields(url)
    assert fields["sp"] == "r" and fields.get("sr") == "c"
    input_container = f"{PREFIX}-in-{finished_run.run_id}"
    assert urlsplit(url).path.endswith(f"/{input_container}")
    assert sorted(finished_run.input_blobs) == sorted(f"runs/{finished_run.run_id}/{name}" for name in TEXTS)
    container = ContainerClient.from_container_url(url, **NO_RETRIES)
    async with container:
        for name in finished_run.input_blobs:
            # The odd file name travels as a blob name in the manifest and reaches the right blob.
            content = (await (await container.download_blob(name)).readall()).decode("utf-8")
            assert content == TEXTS[name.split(f"runs/{finished_run.run_id}/", 1)[1]]
        first = finished_run.input_blobs[0]
        overwrite = partial(container.upload_blob, first, b"x", overwrite=True)
        assert (await status_of_failure(overwrite))[0] == 403
        assert (await status_of_failure(partial(container.delete_blob, first)))[0] == 403

        async def list_them() -> None:
            _ = [blob async for blob in container.list_blobs()]

        assert (await status_of_failure(list_them))[0] == 403
    # Moved onto another container (the output container, the node script's), it reads nothing.
    account = urlsplit(url).path.rsplit("/", 1)[0]
    for other in (f"{PREFIX}-out-{finished_run.run_id}", f"{PREFIX}-app"):
        async with ContainerClient.from_connection_string(azurite.connection_string, other) as owner:
            names = [blob.name async for blob in owner.list_blobs()]
        assert names, other
        elsewhere = ContainerClient.from_container_url(with_path(url, f"{account}/{other}"), **NO_RETRIES)
        async with elsewhere:
            assert (await status_of_failure(partial(elsewhere.download_blob, names[0])))[0] == 403


async def test_the_node_script_sas_cannot_replace_the_script(finished_run: FinishedRun) -> None:
    assert sas_fields(finished_run.node_script_sas_url)["sp"] == "r"
    script = BlobClient.from_blob_url(finished_run.node_script_sas_url, **NO_RETRIES)
    async with script:
        assert (await (await script.download_blob()).readall())[:2] == b"#!"
        assert (await status_of_failure(lambda: script.upload_blob(b"#!/bin/sh\n", overwrite=True)))[0] == 403


async def test_the_run_sas_outlive_the_run_deadline(finished_run: FinishedRun) -> None:
    """No SAS can expire mid-run: every one lasts at least [run] run_timeout_s (1800 s in local.toml)."""
    must_last_until = datetime.now(UTC) + timedelta(seconds=1800) - timedelta(minutes=5)
    urls = [
        finished_run.output_sas_url,
        finished_run.node_script_sas_url,
        *finished_run.manifest_sas_urls,
        *finished_run.input_sas_urls,
    ]
    for url in urls:
        expiry = datetime.fromisoformat(sas_fields(url)["se"].replace("Z", "+00:00"))
        assert expiry > must_last_until


async def test_an_expired_sas_is_refused(finished_run: FinishedRun, azurite: StorageEndpoint) -> None:
    """SAS minted exactly as a run mints them, but with a window that ended an hour ago."""
    start, expiry = datetime.now(UTC) - timedelta(hours=3), datetime.now(UTC) - timedelta(hours=1)
    input_container = f"{PREFIX}-in-{finished_run.run_id}"
    read_token = mint_container_read_sas(
        account_name=azurite.account_name,
        container=input_container,
        start=start,
        expiry=expiry,
        account_key=azurite.account_key,
    )
    expired_read = ContainerClient.from_container_url(
        container_url(azurite.endpoint, input_container, read_token), **NO_RETRIES
    )
    async with expired_read:
        read = partial(expired_read.download_blob, finished_run.input_blobs[0])
        assert (await status_of_failure(read))[0] == 403
    output_container = f"{PREFIX}-out-{finished_run.run_id}"
    write_token = mint_container_write_sas(
        account_name=azurite.account_name,
        container=output_container,
        start=start,
        expiry=expiry,
        account_key=azurite.account_key,
    )
    expired_write = ContainerClient.from_container_url(
        container_url(azurite.endpoint, output_container, write_token), **NO_RETRIES
    )
    async with expired_write:
        assert (await status_of_failure(lambda: expired_write.upload_blob("late.txt", b"late")))[0] == 403


async def test_no_key_signature_or_token_leaks_anywhere(
    finished_run: FinishedRun, azurite: StorageEndpoint, batch_emulator: BatchEndpoint
) -> None:
    signatures = [
        sas_fields(url)["sig"]
        for url in [
            finished_run.output_sas_url,
            finished_run.node_script_sas_url,
            *finished_run.manifest_sas_urls,
            *finished_run.input_sas_urls,
        ]
    ]
    # The signatures themselves, decoded and as they travel, besides the scanner's own `sig=` pattern.
    secrets = [batch_emulator.account_key, azurite.account_key, *signatures]
    secrets += [url.split("sig=", 1)[1].split("&", 1)[0] for url in finished_run.input_sas_urls]
    run_node_folders = batch_emulator.root / POOL_ID
    texts = [
        ("stdout", finished_run.stdout),
        ("stderr", finished_run.stderr),
        *texts_under(finished_run.folder),  # results, summary.json, the journal (SQLite, read as text)
        *texts_under(batch_emulator.log_dir),  # the emulator's own event log
        # Task and start-task stdout/stderr, upload logs. Not the bundle's unpacked wheels
        # (shared/topn-node-cache): azure-storage-blob's own source carries Azurite's published
        # development key, for `UseDevelopmentStorage=true`; nothing there is written by a run.
        *[(name, text) for name, text in texts_under(run_node_folders) if "/topn-node-cache/" not in name],
    ]
    assert any(name.endswith("journal.sqlite3") for name, _ in texts), "the journal was not scanned"
    assert any("workitems" in name for name, _ in texts), "the node folders of the run were not scanned"
    assert find_secrets(texts, secrets) == []
