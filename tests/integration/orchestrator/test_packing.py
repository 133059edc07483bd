"""A unit's pack (azure/packing.py) against a real Azurite: one request when it fits, blocks when not."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from azure.storage.blob.aio import BlobServiceClient

from orchestrator import naming
from orchestrator.azure import packing
from orchestrator.azure.clients import STORAGE, CountingTransport, RequestCounter
from orchestrator.azure.putblob import BlobService
from orchestrator.azure.retry import SDK_RETRY_KWARGS, RetryPolicy
from orchestrator.azure.staging import StagedInput
from orchestrator.inputs import InputFile, discover_inputs
from tests.conftest import StorageEndpoint

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.2, deadline_s=20)
FILES = {
    "a.txt": b"alpha beta\n",
    "empty.txt": b"",
    "sub/\xc3\xa9 b.txt": "béta béta\n".encode(),
    "bin.dat": bytes(range(256)) * 3,
    "z.txt": b"last one",
}


def counted_service(azurite: StorageEndpoint, counter: RequestCounter, *, putter: bool) -> BlobServiceClient:
    """topn's blob client, every request counted: with its putter (shared key) or the SDK's client only
    (as under Entra ID, where there is no putter)."""
    kwargs: dict[str, Any] = dict(SDK_RETRY_KWARGS)
    credential = {"account_name": azurite.account_name, "account_key": azurite.account_key}
    transport = CountingTransport(counter, STORAGE, account_in_path=True, **kwargs)
    if not putter:
        return BlobServiceClient(azurite.endpoint, credential=credential, transport=transport, **kwargs)
    return BlobService(
        azurite.endpoint,
        credential=credential,
        putter_transport=CountingTransport(counter, STORAGE, account_in_path=True, **kwargs),
        transport=transport,
        **kwargs,
    )


@pytest_asyncio.fixture(loop_scope="session")
async def container(azurite: StorageEndpoint) -> AsyncIterator[str]:
    name = f"topnpack{uuid.uuid4().hex[:12]}-input"
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as client:
        await client.create_container(name)
        yield name
        await client.delete_container(name)


def _inputs(folder: Path) -> list[InputFile]:
    for relpath, data in FILES.items():
        path = folder / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return sorted(discover_inputs([folder]), key=lambda item: item.relpath)


async def _blob(client: BlobServiceClient, container: str, name: str) -> tuple[bytes, bytes | None]:
    blob = client.get_blob_client(container, name)
    data: bytes = await (await blob.download_blob()).readall()
    md5 = (await blob.get_blob_properties()).content_settings.content_md5
    return data, bytes(md5) if md5 else None


def _check_extents(staged: list[StagedInput], inputs: list[InputFile], pack: bytes) -> None:
    by_relpath = {item.relpath: item for item in staged}
    for item in inputs:
        entry = by_relpath[item.relpath]
        assert entry.extent is not None and entry.unreadable is None
        offset, length = entry.extent
        data = item.path.read_bytes()
        assert pack[offset : offset + length] == data
        assert entry.md5_hex == hashlib.md5(data, usedforsecurity=False).hexdigest()
        assert entry.size_bytes == length


@pytest.mark.parametrize("putter", [True, False], ids=["shared-key-putter", "sdk-only"])
async def test_a_pack_that_fits_one_put_is_one_request(
    azurite: StorageEndpoint, container: str, tmp_path: Path, putter: bool
) -> None:
    inputs = _inputs(tmp_path)
    counter = RequestCounter()
    heard: list[str] = []

    async def on_staged(item: StagedInput) -> None:
        heard.append(item.relpath)

    pack_name = naming.unit_pack_blob(f"t{uuid.uuid4().hex[:6]}")
    async with counted_service(azurite, counter, putter=putter) as client:
        staged = await packing.upload_packs(
            client,
            container,
            "r1",
            [(pack_name, inputs)],
            pack_max_bytes=1 << 20,
            concurrency=2,
            retry=FAST_RETRY,
            on_staged=on_staged,
        )
        assert counter.by_operation(STORAGE) == {"upload_blob": 1}
        pack, md5 = await _blob(client, container, pack_name)
    assert pack == b"".join(item.path.read_bytes() for item in inputs)  # in unit order, end to end
    assert md5 == hashlib.md5(pack, usedforsecurity=False).digest()
    _check_extents(staged, inputs, pack)
    assert sorted(heard) == sorted(item.relpath for item in inputs)


async def test_a_pack_over_the_single_put_limit_goes_up_in_blocks(
    azurite: StorageEndpoint, container: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packing, "PACK_PUT_BYTES", 100)
    inputs = _inputs(tmp_path)
    total = sum(len(data) for data in FILES.values())  # 798 bytes: 8 blocks of at most 100
    counter = RequestCounter()
    pack_name = naming.unit_pack_blob(f"t{uuid.uuid4().hex[:6]}")
    async with counted_service(azurite, counter, putter=True) as client:
        staged = await packing.upload_packs(
            client,
            container,
            "r1",
            [(pack_name, inputs)],
            pack_max_bytes=1 << 20,
            concurrency=1,
            retry=FAST_RETRY,
        )
        assert counter.by_operation(STORAGE) == {"stage_block": -(-total // 100), "commit_block_list": 1}
        pack, md5 = await _blob(client, container, pack_name)
    assert pack == b"".join(item.path.read_bytes() for item in inputs)
    assert md5 == hashlib.md5(pack, usedforsecurity=False).digest()
    _check_extents(staged, inputs, pack)


async def test_a_vanished_input_is_left_out_and_one_grown_past_the_limit_goes_up_alone(
    azurite: StorageEndpoint, container: str, tmp_path: Path
) -> None:
    inputs = _inputs(tmp_path)
    by_relpath = {item.relpath: item for item in inputs}
    by_relpath["a.txt"].path.unlink()
    by_relpath["z.txt"].path.write_bytes(b"grown " * 134)  # 804 bytes: over the pack limit of 800
    pack_name = naming.unit_pack_blob(f"t{uuid.uuid4().hex[:6]}")
    async with counted_service(azurite, RequestCounter(), putter=True) as client:
        staged = await packing.upload_packs(
            client,
            container,
            "r1",
            [(pack_name, inputs)],
            pack_max_bytes=800,
            concurrency=1,
            retry=FAST_RETRY,
        )
        pack, _ = await _blob(client, container, pack_name)
        alone, _ = await _blob(client, container, naming.input_blob_name("r1", "z.txt"))
    result = {item.relpath: item for item in staged}
    assert (
        result["a.txt"].unreadable is not None
        and "removed after the run started" in result["a.txt"].unreadable
    )
    assert result["a.txt"].extent is None
    assert result["z.txt"].extent is None and result["z.txt"].blob_name == naming.input_blob_name(
        "r1", "z.txt"
    )
    assert alone == b"grown " * 134 and result["z.txt"].size_bytes == 804
    kept = [item for item in inputs if item.relpath not in ("a.txt", "z.txt")]
    assert pack == b"".join(item.path.read_bytes() for item in kept)
    _check_extents([result[item.relpath] for item in kept], kept, pack)
