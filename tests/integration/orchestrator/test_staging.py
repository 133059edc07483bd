"""Staging against a real Azurite: uploads, skip-on-same-MD5, SAS scopes, clean-up."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import pytest
import pytest_asyncio
import yarl
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline.transport import AioHttpTransport
from azure.storage.blob.aio import BlobClient, BlobServiceClient, ContainerClient

from orchestrator import naming, results
from orchestrator.azure import collect, sas, staging
from orchestrator.azure.putblob import BlobService
from orchestrator.azure.retry import SDK_RETRY_KWARGS, RetryPolicy
from orchestrator.inputs import discover_inputs
from tests.conftest import StorageEndpoint

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.2, deadline_s=20)


@pytest_asyncio.fixture(loop_scope="session")
async def blob_service(azurite: StorageEndpoint) -> AsyncIterator[BlobServiceClient]:
    sdk_kwargs: dict[str, Any] = dict(SDK_RETRY_KWARGS)
    async with BlobServiceClient.from_connection_string(azurite.connection_string, **sdk_kwargs) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session", params=["sdk", "putter"])
async def uploader(
    azurite: StorageEndpoint, request: pytest.FixtureRequest
) -> AsyncIterator[BlobServiceClient]:
    """The client uploads go through: the SDK's as anyone builds it, or topn's (azure/putblob.py)."""
    sdk_kwargs: dict[str, Any] = dict(SDK_RETRY_KWARGS)
    if request.param == "sdk":
        async with BlobServiceClient.from_connection_string(
            azurite.connection_string, **sdk_kwargs
        ) as client:
            yield client
        return
    credential = {"account_name": azurite.account_name, "account_key": azurite.account_key}
    transport = AioHttpTransport(**sdk_kwargs)
    async with BlobService(
        azurite.endpoint, credential=credential, putter_transport=transport, **sdk_kwargs
    ) as client:
        assert client.putter is not None
        yield client


def unique_container(stem: str) -> str:
    """A container no other test (nor this one's other parameter) uses in the shared Azurite."""
    return f"{stem}{uuid.uuid4().hex[:12]}-input"


def make_tree(root: Path) -> None:
    for relpath, text in {
        "a.txt": "alpha beta",
        "x/a.txt": "gamma",
        "y/é #%.txt": "delta delta",
        "empty.txt": "",
    }.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


async def test_inputs_are_uploaded_under_their_relative_paths_and_skipped_when_unchanged(
    uploader: BlobServiceClient, tmp_path: Path
) -> None:
    make_tree(tmp_path / "t")
    inputs = discover_inputs([tmp_path / "t"])
    run_id = naming.new_run_id()
    container = naming.input_container("topnstage", run_id)
    await staging.ensure_containers(uploader, [container, container], FAST_RETRY)
    recorded: list[str] = []

    async def record(item: staging.StagedInput) -> None:
        recorded.append(item.relpath)

    first = await staging.upload_inputs(
        uploader, container, run_id, inputs, concurrency=3, retry=FAST_RETRY, on_uploaded=record
    )
    assert sorted(recorded) == [item.relpath for item in inputs]
    assert [item.skipped for item in first] == [False] * 4
    for item, staged in zip(inputs, first, strict=True):
        blob = uploader.get_blob_client(container, f"runs/{run_id}/{item.relpath}")
        body = await (await blob.download_blob()).readall()
        assert body == item.path.read_bytes()
        assert staged.md5_hex == hashlib.md5(body, usedforsecurity=False).hexdigest()

    (tmp_path / "t" / "a.txt").write_text("changed", encoding="utf-8")
    second = await staging.upload_inputs(
        uploader, container, run_id, discover_inputs([tmp_path / "t"]), concurrency=3, retry=FAST_RETRY
    )
    assert {item.relpath: item.skipped for item in second} == {
        "a.txt": False,
        "empty.txt": True,
        "x/a.txt": True,
        "y/é #%.txt": True,
    }
    changed = uploader.get_blob_client(container, f"runs/{run_id}/a.txt")
    assert await (await changed.download_blob()).readall() == b"changed"

    deleted = await staging.delete_blobs_with_prefix(
        uploader, container, naming.run_input_prefix(run_id), FAST_RETRY
    )
    assert deleted == 4
    remaining = [
        b
        async for b in uploader.get_container_client(container).list_blobs(name_starts_with=f"runs/{run_id}/")
    ]
    assert remaining == []


async def test_sas_urls_grant_exactly_their_scope(
    blob_service: BlobServiceClient, azurite: StorageEndpoint
) -> None:
    run_id = naming.new_run_id()
    in_container, out_container = "topnsas-input", naming.output_container("topnsas", run_id)
    await staging.ensure_containers(blob_service, [in_container, out_container], FAST_RETRY)
    await blob_service.get_blob_client(in_container, "runs/r/a b#.txt").upload_blob(
        b"secret text", overwrite=True
    )
    minter = await staging.make_sas_minter(
        account_url=azurite.endpoint,
        account_name=azurite.account_name,
        account_key=azurite.account_key,
        delegation_source=None,
        run_timeout_s=60,
        margin_s=60,
    )
    assert azurite.account_key not in repr(minter)

    read_url = minter.blob_read_url(in_container, "runs/r/a b#.txt")
    async with BlobClient.from_blob_url(read_url, retry_total=0) as reader:
        assert await (await reader.download_blob()).readall() == b"secret text"
        with pytest.raises(HttpResponseError) as refused:
            await reader.upload_blob(b"overwrite", overwrite=True)
        assert refused.value.status_code == 403

    # The inputs' container SAS of a unit manifest: reads blobs by name, lists, writes and deletes nothing.
    source_url = minter.container_read_url(in_container)
    async with ContainerClient.from_container_url(source_url, retry_total=0) as source:
        assert await (await source.download_blob("runs/r/a b#.txt")).readall() == b"secret text"
        for refused_call in (
            lambda: source.upload_blob("runs/r/a b#.txt", b"overwrite", overwrite=True),
            lambda: source.delete_blob("runs/r/a b#.txt"),
        ):
            with pytest.raises(HttpResponseError) as refused:
                await refused_call()
            assert refused.value.status_code == 403
        with pytest.raises(HttpResponseError) as cannot_list:
            _ = [b async for b in source.list_blobs()]
        assert cannot_list.value.status_code == 403

    write_url = minter.container_write_url(out_container)
    async with ContainerClient.from_container_url(write_url, retry_total=0) as writer:
        await writer.upload_blob("result.txt", b"ok")
        with pytest.raises(HttpResponseError) as cannot_read:
            await (await writer.get_blob_client("result.txt").download_blob()).readall()
        assert cannot_read.value.status_code == 403
        with pytest.raises(HttpResponseError) as cannot_list:
            _ = [b async for b in writer.list_blobs()]
        assert cannot_list.value.status_code == 403
    other_container_url = write_url.replace(out_container, in_container)
    async with ContainerClient.from_container_url(other_container_url, retry_total=0) as elsewhere:
        with pytest.raises(HttpResponseError) as wrong_scope:
            await elsewhere.upload_blob("intruder.txt", b"no")
        assert wrong_scope.value.status_code == 403

    await staging.delete_container(blob_service, out_container, FAST_RETRY)
    await staging.delete_container(blob_service, out_container, FAST_RETRY)  # absent: no error


async def test_node_script_blob_is_keyed_by_content(blob_service: BlobServiceClient) -> None:
    await staging.ensure_containers(blob_service, ["topnnode-app"], FAST_RETRY)
    script = b"PK fake zipapp bytes"
    first = await staging.stage_node_script(blob_service, "topnnode-app", script, FAST_RETRY)
    again = await staging.stage_node_script(blob_service, "topnnode-app", script, FAST_RETRY)
    assert first == again == naming.node_blob_name(hashlib.sha256(script).hexdigest())


async def test_files_over_the_in_memory_limit_are_streamed_with_their_md5(
    uploader: BlobServiceClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(staging, "IN_MEMORY_LIMIT_BYTES", 1024)
    body = b"".join(f"line {number} of a larger file\n".encode() for number in range(5000))
    (tmp_path / "big.txt").write_bytes(body)
    container = unique_container("topnbig")
    await staging.ensure_containers(uploader, [container], FAST_RETRY)
    first = await staging.upload_input_file(
        uploader, container, "runs/r/big.txt", tmp_path / "big.txt", FAST_RETRY
    )
    md5_hex, skipped = first.md5_hex, first.skipped
    assert not skipped and md5_hex == hashlib.md5(body, usedforsecurity=False).hexdigest()
    blob = uploader.get_blob_client(container, "runs/r/big.txt")
    assert await (await blob.download_blob()).readall() == body
    uploaded_again = await staging.upload_input_file(
        uploader, container, "runs/r/big.txt", tmp_path / "big.txt", FAST_RETRY
    )
    again = (uploaded_again.md5_hex, uploaded_again.skipped)
    assert again == (md5_hex, True)


# --- an input that changes while it is uploaded ---------------------------------------------------


def change_file_after_reading(
    monkeypatch: pytest.MonkeyPatch, changes: int, keep_size_and_mtime: bool = False
) -> list[int]:
    """Make the first `changes` reads of an input rewrite it right after it was read (as a writer would)."""
    real_read = staging._md5_of_file
    calls: list[int] = []

    def read_then_change(path: Path) -> tuple[bytes | None, bytes]:
        result = real_read(path)
        calls.append(1)
        if len(calls) <= changes:
            info = path.stat()
            body = path.read_bytes()
            if keep_size_and_mtime:  # only the content differs: the MD5 of what was sent must catch it
                path.write_bytes(body[:-1] + bytes([body[-1] ^ 0x01]))
                os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
            else:
                path.write_bytes(body + f"more words {len(calls)}\n".encode())
        return result

    monkeypatch.setattr(staging, "_md5_of_file", read_then_change)
    monkeypatch.setattr(staging, "CHANGED_INPUT_RETRY_DELAYS_S", (0.0, 0.0))
    return calls


async def blob_body_and_md5(
    blob_service: BlobServiceClient, container: str, name: str
) -> tuple[bytes, bytes]:
    blob = blob_service.get_blob_client(container, name)
    properties = await blob.get_blob_properties()
    stored_md5 = properties.content_settings.content_md5
    assert stored_md5 is not None
    return await (await blob.download_blob()).readall(), bytes(stored_md5)


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
async def test_a_file_changed_during_its_upload_is_uploaded_again_as_it_now_is(
    uploader: BlobServiceClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    if streamed:
        monkeypatch.setattr(staging, "IN_MEMORY_LIMIT_BYTES", 1024)
    path = tmp_path / "growing.txt"
    path.write_bytes(b"tide gull net\n" * (200 if streamed else 1))
    calls = change_file_after_reading(monkeypatch, changes=1, keep_size_and_mtime=streamed)
    container = unique_container("topnchanged")
    await staging.ensure_containers(uploader, [container], FAST_RETRY)

    inputs = discover_inputs([path])
    staged = await staging.upload_inputs(uploader, container, "r1", inputs, concurrency=1, retry=FAST_RETRY)

    final = path.read_bytes()
    assert len(calls) == 2  # read, found changed, read again
    assert staged[0].md5_hex == hashlib.md5(final, usedforsecurity=False).hexdigest()
    assert staged[0].size_bytes == len(final) and not staged[0].skipped
    body, stored_md5 = await blob_body_and_md5(uploader, container, staged[0].blob_name)
    assert body == final and stored_md5.hex() == staged[0].md5_hex


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
async def test_a_file_that_keeps_changing_is_reported_and_leaves_no_blob(
    uploader: BlobServiceClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    if streamed:
        monkeypatch.setattr(staging, "IN_MEMORY_LIMIT_BYTES", 1024)
    path = tmp_path / "log file.txt"
    path.write_bytes(b"tide gull net\n" * (200 if streamed else 1))
    calls = change_file_after_reading(monkeypatch, changes=100, keep_size_and_mtime=streamed)
    container = unique_container("topnchanging")
    await staging.ensure_containers(uploader, [container], FAST_RETRY)
    recorded: list[str] = []

    async def record(item: staging.StagedInput) -> None:
        recorded.append(item.relpath)

    # That file fails alone (issue 10, point 5): staged as unreadable, with the reason, not the run.
    (staged,) = await staging.upload_inputs(
        uploader,
        container,
        "r2",
        discover_inputs([path]),
        concurrency=1,
        retry=FAST_RETRY,
        on_uploaded=record,
    )
    assert staged.unreadable is not None
    assert str(path) in staged.unreadable and "kept changing" in staged.unreadable
    assert len(calls) == len(staging.CHANGED_INPUT_RETRY_DELAYS_S) + 1  # bounded
    assert recorded == []  # nothing journalled as uploaded
    listed = [blob.name async for blob in uploader.get_container_client(container).list_blobs()]
    assert listed == []


# --- output blobs whose names would leave the results folder --------------------------------------


async def plant_blob_as_a_node_could(
    storage: StorageEndpoint, container: str, name: str, data: bytes
) -> None:
    """PUT a blob with the node's container write SAS and the name percent-encoded, as any HTTP client can.

    (The SDK would send `../` unencoded and the URL would be normalised; encoded, Azurite keeps it.)
    """
    now = datetime.now(UTC)
    token = sas.mint_container_write_sas(
        account_name=storage.account_name,
        container=container,
        start=now - timedelta(minutes=5),
        expiry=now + timedelta(hours=1),
        account_key=storage.account_key,
        user_delegation_key=None,
    )
    url = yarl.URL(f"{storage.endpoint}/{container}/{quote(name, safe='')}?{token}", encoded=True)
    async with aiohttp.ClientSession() as session:
        headers = {"x-ms-blob-type": "BlockBlob", "x-ms-version": "2021-12-02"}
        async with session.put(url, data=data, headers=headers) as response:
            assert response.status == 201, await response.text()


async def test_output_blobs_named_to_escape_are_never_written_outside_the_results_folder(
    blob_service: BlobServiceClient, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    container = naming.output_container("topnescape", naming.new_run_id())
    await staging.ensure_containers(blob_service, [container], FAST_RETRY)
    planted = {
        "a_OUTPUT.txt": b"Word\tCount\n",
        naming.unit_result_name("t000000"): b"result bytes",
        # What a rogue or buggy node holding the run's write SAS could leave next to the real outputs:
        "../escape_OUTPUT.txt": b"rogue",
        "/abs_OUTPUT.txt": b"rogue",
    }
    for name, data in planted.items():
        await plant_blob_as_a_node_could(azurite, container, name, data)
    stored = [blob.name async for blob in blob_service.get_container_client(container).list_blobs()]
    assert "../escape_OUTPUT.txt" in stored
    out_dir = tmp_path / "work" / "out"
    out_dir.mkdir(parents=True)

    # A unit's result is one blob; a task that left none is told apart from a failed download.
    assert await collect.read_unit_result(blob_service, container, "t000000", FAST_RETRY) == b"result bytes"
    assert await collect.read_unit_result(blob_service, container, "t000001", FAST_RETRY) is None
    # Outputs are written under names derived from the run's own inputs; an escaping one is refused.
    saved = await anyio.to_thread.run_sync(
        collect.save_outputs,
        out_dir,
        [("a_OUTPUT.txt", b"fine"), ("../escape_OUTPUT.txt", b"rogue"), ("/abs_OUTPUT.txt", b"rogue")],
    )
    assert saved[0] == out_dir / "a_OUTPUT.txt" and saved[0].read_bytes() == b"fine"
    assert all(isinstance(reason, str) and "not saved" in reason for reason in saved[1:]), saved
    # Every stored blob mapped to a local path the way results are: each escaping one is refused.
    refused = []
    for name in stored:
        try:
            mapped = await anyio.to_thread.run_sync(results.result_path, out_dir, name)
            assert mapped.is_relative_to(out_dir)
        except naming.UnsafeNameError:
            refused.append(name)
    assert sorted(refused) == sorted(name for name in planted if ".." in name or name.startswith("/"))
    outside = await anyio.to_thread.run_sync(files_outside, tmp_path, out_dir)
    assert outside == []


def files_outside(root: Path, folder: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file() and not path.is_relative_to(folder)]


async def test_a_symlink_in_the_results_folder_cannot_carry_an_output_outside(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "sub").symlink_to(elsewhere, target_is_directory=True)

    saved = await anyio.to_thread.run_sync(collect.save_outputs, out_dir, [("sub/a_OUTPUT.txt", b"x")])
    assert len(saved) == 1 and isinstance(saved[0], str) and "outside the results folder" in saved[0]
    assert list(elsewhere.iterdir()) == []
