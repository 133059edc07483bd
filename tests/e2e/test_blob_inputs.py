"""`topn run az://…` end to end (issue 13, point 1): blobs read where they live, mixed with a local folder.

Against the session's Azurite and Batch emulator, through the CLI as a user runs it. The expected
counts come from `run_cli.reference_top` (written from the spec); the user's container is compared
blob by blob (name, ETag, size) before and after, so a copy, a write or a deletion by topn shows.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_asyncio
from azure.core.exceptions import HttpResponseError
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.fault_support import check_summary, job_tasks, run_topn_live, write_corpus
from tests.e2e.run_cli import SHARED_POOL_ID, output_rows, reference_top, run_topn, topn_environment
from tests.e2e.test_crash_resume import (
    assert_no_partial_files,
    assert_one_task_per_input,
    count_after,
    crash_environment,
    load_record,
    run_id_in,
    run_until,
)
from tests.secret_scan import find_secrets
from tests.task_units import task_manifest

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(240)]

LOCAL = {"c.txt": "kelp kelp reef\n", "notes.txt": "tide tide tide gull\n"}
BLOBS = {
    "logs/2026/a/b.txt": "harbour gull gull net\n",
    "logs/2026/c.txt": "anchor anchor rope\n",
    "logs/2026/deep/er/d.txt": "lantern wick\n",
    "logs/2025/old.txt": "not under the prefix\n",
    "other/c.txt": "mast mast sail\n",
    "other/x.txt": "storm quay quay salt\n",
}
# Rewritten by the test once the run has listed it: the node counts what it reads.
REWRITTEN = "logs/2026/deep/er/d.txt"
NEW_TEXT = "orchard orchard apple wasp wasp wasp\n"


async def blob_state(client: BlobServiceClient, container: str) -> dict[str, tuple[str, int]]:
    """Every blob of the container: name -> (ETag without its quotes, size)."""
    return {
        str(blob.name): (str(blob.etag).strip('"'), int(blob.size))
        async for blob in client.get_container_client(container).list_blobs()
    }


@pytest_asyncio.fixture(loop_scope="session")
async def user_container(azurite: StorageEndpoint) -> AsyncIterator[tuple[BlobServiceClient, str]]:
    """A container of the user's, holding BLOBS (a fresh name: tests run side by side)."""
    async with BlobServiceClient.from_connection_string(azurite.connection_string, retry_total=2) as client:
        container = f"userlogs-{uuid.uuid4().hex[:12]}"
        await client.create_container(container)
        for name, text in BLOBS.items():
            await client.get_blob_client(container, name).upload_blob(text.encode("utf-8"))
        yield client, container
        await client.delete_container(container)


def write_tree(root: Path, texts: dict[str, str]) -> None:
    for relpath, text in texts.items():
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_text(text, encoding="utf-8")


async def test_blob_prefixes_and_a_local_folder_give_exact_results_and_leave_the_blobs_untouched(
    batch_emulator: BatchEndpoint,
    azurite: StorageEndpoint,
    user_container: tuple[BlobServiceClient, str],
    tmp_path: Path,
) -> None:
    client, container = user_container
    write_tree(tmp_path / "texts", LOCAL)
    before = await blob_state(client, container)
    env = topn_environment(
        batch_emulator,
        azurite,
        tmp_path / ".topn",
        TOPN_POOL_ID=SHARED_POOL_ID,
        TOPN_RUN_MAX_FILES_PER_TASK="3",
        TOPN_RUN_DELETE_RUN_BLOBS="true",  # clean-up deletes the run's containers, never the user's
    )
    rewritten_etag: list[str] = []

    async def rewrite_once_listed(event: dict[str, Any]) -> None:
        # The run is created after the listing and long before any node reads (no job exists yet).
        if event["event"] == "run.started" and not rewritten_etag:
            blob = client.get_blob_client(container, REWRITTEN)
            written = await blob.upload_blob(NEW_TEXT.encode("utf-8"), overwrite=True)
            rewritten_etag.append(str(written["etag"]).strip('"'))

    arguments = [f"az://{container}/logs/2026/", f"{azurite.endpoint}/{container}/other/", "texts"]
    run = await run_topn_live(
        ["run", *arguments, "--out", "out", "--json", "--log-level", "debug"],
        tmp_path,
        env,
        rewrite_once_listed,
    )
    assert run.exit_code == 0, run.stderr[-3000:]
    summary = run.summary()
    # Local names first; a later clash becomes `stem~N` in argument order, then blob name order.
    expected = {
        "c.txt": LOCAL["c.txt"],
        "notes.txt": LOCAL["notes.txt"],
        "a/b.txt": BLOBS["logs/2026/a/b.txt"],
        "c~2.txt": BLOBS["logs/2026/c.txt"],
        "deep/er/d.txt": NEW_TEXT,
        "c~3.txt": BLOBS["other/c.txt"],
        "x.txt": BLOBS["other/x.txt"],
    }
    assert check_summary(summary, expected) == []
    for relpath, text in expected.items():
        output = tmp_path / "out" / (relpath.removesuffix(".txt") + "_OUTPUT.txt")
        assert output_rows(output) == reference_top([text], "words", 10), relpath
    files = {entry["path"]: entry for entry in summary["files"]}
    assert files["c~2.txt"]["source"] == f"az://{container}/logs/2026/c.txt"
    assert files["c~3.txt"]["source"] == f"az://{container}/other/c.txt"
    assert summary["totals"]["bytes"] == sum(len(text.encode("utf-8")) for text in expected.values())

    # The blob rewritten after listing: counted as read, said once (event and summary note).
    changed = [event for event in run.events() if event["event"] == "input.changed"]
    assert [(event["file"], event["bytes"]) for event in changed] == [("deep/er/d.txt", len(NEW_TEXT))]
    assert f"az://{container}/{REWRITTEN}" in changed[0]["note"] and rewritten_etag[0] in changed[0]["note"]
    assert "counted as read" in files["deep/er/d.txt"]["note"]
    assert all("note" not in entry for relpath, entry in files.items() if relpath != "deep/er/d.txt")

    # Only the local files were uploaded; the user's blobs were neither copied, written nor deleted.
    uploaded = sorted(
        str(event["blob"])
        for event in run.events()
        if event["event"] == "blob.uploaded" and str(event["blob"]).startswith("runs/")
    )
    assert uploaded == [f"runs/{summary['run_id']}/{relpath}" for relpath in sorted(LOCAL)]
    after = await blob_state(client, container)
    assert after == {**before, REWRITTEN: (rewritten_etag[0], len(NEW_TEXT))}
    containers = {str(item.name) async for item in client.list_containers()}
    assert not {name for name in containers if summary["run_id"] in name}, "the run's own are deleted"
    assert container in containers
    assert find_secrets([("stdout", run.stdout), ("stderr", run.stderr)], [azurite.account_key]) == []


async def test_a_blob_input_run_killed_while_feeding_resumes_to_exact_results(
    batch_emulator: BatchEndpoint,
    azurite: StorageEndpoint,
    user_container: tuple[BlobServiceClient, str],
    tmp_path: Path,
) -> None:
    """SIGKILL at the first add-task request: blob units go in at once, local uploads still run."""
    client, container = user_container
    more = {f"logs/2026/more/m{number:02d}.txt": f"fog bell bell {number} cider\n" for number in range(10)}
    for name, text in more.items():
        await client.get_blob_client(container, name).upload_blob(text.encode("utf-8"))
    before = await blob_state(client, container)
    local = write_corpus(tmp_path / "in", 12, seed=31)
    env = crash_environment(batch_emulator, azurite, tmp_path, TOPN_RUN_UPLOAD_CONCURRENCY="1")
    arguments = [f"az://{container}/logs/2026/", "in"]
    first, killed = await run_until(
        ["run", *arguments, "--out", "out", "--json", "--log-level", "debug"],
        tmp_path,
        env,
        count_after(1, lambda event: event["event"] == "tasks.chunk_added"),
        yield_cpu=True,  # so the kill lands while most tasks are still to add
    )
    assert killed and first.exit_code == -9, (first.exit_code, first.stderr[-2000:])
    run_id = run_id_in(first)
    record = await load_record(tmp_path / ".topn", run_id)
    assert record.state == "PREPARING" and 0 < len(record.submitted_task_ids) < len(record.task_ids)
    blob_rows = [item for item in record.inputs if item.etag is not None]
    # The journal holds each blob input as listed: its address, size and ETag (schema 9).
    listed = {name: state for name, state in before.items() if name.startswith("logs/2026/")}
    assert {item.path: (str(item.etag).strip('"'), item.size_bytes) for item in blob_rows} == {
        f"az://{container}/{name}": state for name, state in listed.items()
    }
    assert not {item.relpath for item in blob_rows} & set(record.uploads)

    second, _ = await run_until(["resume", run_id, "--json", "--log-level", "debug"], tmp_path, env, None)
    assert second.exit_code == 0, second.stderr[-3000:]
    expected = {
        **{relpath: text for relpath, text in local.items()},
        "a/b.txt": BLOBS["logs/2026/a/b.txt"],
        "c.txt": BLOBS["logs/2026/c.txt"],
        "deep/er/d.txt": BLOBS["logs/2026/deep/er/d.txt"],
        **{name.removeprefix("logs/2026/"): text for name, text in more.items()},
    }
    summary = second.summary()
    assert check_summary(summary, expected) == []
    relpaths = sorted(expected)
    await assert_one_task_per_input(batch_emulator, run_id, relpaths)
    assert_no_partial_files(tmp_path / "out", relpaths)
    assert [event for event in first.events() + second.events() if event["event"] == "input.changed"] == []
    assert await blob_state(client, container) == before

    # What the nodes were handed for the user's container: read only (sp=r, sr=c), no list/write/delete.
    tasks = await job_tasks(
        batch_emulator.endpoint, batch_emulator.account_name, batch_emulator.account_key, f"topn-{run_id}"
    )
    sources = {str(url) for task in tasks for url in (await task_manifest(task))["sources"]}
    # The run's own input container and the user's (each SAS minted by the run that added the task).
    containers = {urlsplit(url).path.rsplit("/", 1)[1] for url in sources}
    assert containers == {f"topn-in-{run_id}", container}
    user_sources = [url for url in sources if urlsplit(url).path.endswith(f"/{container}")]
    for url in user_sources:
        fields = {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}
        assert (fields["sp"], fields["sr"]) == ("r", "c")
    async with ContainerClient.from_container_url(user_sources[0], retry_total=0) as source:
        assert (await (await source.download_blob("logs/2026/c.txt")).readall()).decode() == BLOBS[
            "logs/2026/c.txt"
        ]
        with pytest.raises(HttpResponseError) as cannot_write:
            await source.upload_blob("logs/2026/c.txt", b"x", overwrite=True)
        with pytest.raises(HttpResponseError) as cannot_delete:
            await source.delete_blob("logs/2026/c.txt")
        with pytest.raises(HttpResponseError) as cannot_list:
            _ = [blob async for blob in source.list_blobs()]
    assert {
        cannot_write.value.status_code,
        cannot_delete.value.status_code,
        cannot_list.value.status_code,
    } == {403}


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("az://no-such-container-{suffix}/logs/", "there is no container"),
        ("az://{container}/logs/2027/", "no blobs in container"),
        ("https://someoneelse.blob.core.windows.net/{container}/logs/", "names account 'someoneelse'"),
        ("az://{container}/logs/?sv=2023-11-03&sig=LEAKEDSIGNATURE", "has a query string"),
    ],
    ids=["missing-container", "empty-prefix", "other-account", "pasted-sas"],
)
async def test_a_blob_input_that_cannot_be_read_stops_topn_before_the_run_with_exit_2(
    batch_emulator: BatchEndpoint,
    azurite: StorageEndpoint,
    user_container: tuple[BlobServiceClient, str],
    tmp_path: Path,
    argument: str,
    expected: str,
) -> None:
    _, container = user_container
    env = topn_environment(batch_emulator, azurite, tmp_path / ".topn", TOPN_POOL_ID=SHARED_POOL_ID)
    shown = argument.format(container=container, suffix=uuid.uuid4().hex[:8])
    result = run_topn(["run", shown, "--out", "out"], tmp_path, env)
    assert result.exit_code == 2, result.stderr[-2000:]
    assert expected in result.stderr
    assert "LEAKEDSIGNATURE" not in result.stderr + result.stdout
    assert find_secrets([("stderr", result.stderr)], [azurite.account_key]) == []
    # Nothing was started: no run in the journal, no results folder.
    status = run_topn(["status", "--json"], tmp_path, env)
    assert status.exit_code == 0, status.stderr
    assert json.loads(status.stdout) == []
    assert not (tmp_path / "out").exists()
