"""The short Put Blob pipeline (azure/putblob.py) against a real Azurite: what the SDK would store."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.storage.blob.aio import BlobServiceClient

from orchestrator import naming
from orchestrator.azure import staging
from orchestrator.azure.clients import STORAGE, CountingTransport, RequestCounter
from orchestrator.azure.putblob import BlobService
from orchestrator.azure.retry import SDK_RETRY_KWARGS, RetryPolicy, error_code_of
from orchestrator.inputs import discover_inputs
from tests.conftest import StorageEndpoint

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.2, deadline_s=20)
NAMES = ["runs/r/a.txt", "runs/r/y/é #%?&+.txt", "runs/r/sp ace/100%.txt"]


def topn_blob_service(azurite: StorageEndpoint, counter: RequestCounter, account_key: str) -> BlobService:
    """topn's blob client with its putter on a counting transport, as open_clients builds it."""
    sdk_kwargs: dict[str, Any] = dict(SDK_RETRY_KWARGS)
    return BlobService(
        azurite.endpoint,
        credential={"account_name": azurite.account_name, "account_key": account_key},
        putter_transport=CountingTransport(counter, STORAGE, account_in_path=True, **sdk_kwargs),
        **sdk_kwargs,
    )


@pytest_asyncio.fixture(loop_scope="session")
async def container(azurite: StorageEndpoint) -> AsyncIterator[str]:
    name = f"topnput{uuid.uuid4().hex[:12]}-input"
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as client:
        await client.create_container(name)
        yield name
        await client.delete_container(name)


@pytest.mark.parametrize("name", NAMES, ids=["plain", "escaped", "percent"])
async def test_a_put_blob_stores_the_bytes_md5_and_type_the_sdk_reads_back(
    azurite: StorageEndpoint, container: str, name: str
) -> None:
    counter = RequestCounter()
    data = "tide gull net é\n".encode()
    md5 = hashlib.md5(data, usedforsecurity=False).digest()
    async with topn_blob_service(azurite, counter, azurite.account_key) as client:
        assert client.putter is not None
        await client.putter.put(
            container, name, data, content_md5=md5, content_type="text/plain; charset=utf-8", overwrite=False
        )
        blob = client.get_blob_client(container, name)
        properties = await blob.get_blob_properties()
        assert await (await blob.download_blob()).readall() == data
    assert bytes(properties.content_settings.content_md5) == md5
    assert properties.content_settings.content_type == "text/plain; charset=utf-8"
    assert properties.blob_type == "BlockBlob"
    # The put went through the putter's transport, counted as the SDK's would be.
    assert counter.by_operation(STORAGE) == {"upload_blob": 1}


async def test_an_existing_blob_is_refused_unless_overwritten(
    azurite: StorageEndpoint, container: str
) -> None:
    name = "runs/r/twice.txt"
    async with topn_blob_service(azurite, RequestCounter(), azurite.account_key) as client:
        assert client.putter is not None
        putter = client.putter

        async def put(data: bytes, overwrite: bool) -> None:
            md5 = hashlib.md5(data, usedforsecurity=False).digest()
            await putter.put(
                container, name, data, content_md5=md5, content_type="text/plain", overwrite=overwrite
            )

        await put(b"first", overwrite=False)
        with pytest.raises(ResourceExistsError) as exists:
            await put(b"second", overwrite=False)
        assert exists.value.status_code == 409
        await put(b"third", overwrite=True)
        blob = client.get_blob_client(container, name)
        assert await (await blob.download_blob()).readall() == b"third"
        stored_md5 = (await blob.get_blob_properties()).content_settings.content_md5
        assert bytes(stored_md5) == hashlib.md5(b"third", usedforsecurity=False).digest()


async def test_a_wrong_key_is_an_authentication_error_that_shows_no_key(
    azurite: StorageEndpoint, container: str
) -> None:
    wrong_key = base64.b64encode(b"not the account key, 32 bytes!!!" * 2).decode()
    async with topn_blob_service(azurite, RequestCounter(), wrong_key) as client:
        assert client.putter is not None
        with pytest.raises(HttpResponseError) as refused:
            await client.putter.put(
                container,
                "runs/r/x.txt",
                b"x",
                content_md5=hashlib.md5(b"x", usedforsecurity=False).digest(),
                content_type="text/plain",
                overwrite=True,
            )
        # The SDK, refused the same way, names the same error code (Azurite's AuthorizationFailure).
        with pytest.raises(HttpResponseError) as sdk_refused:
            await client.get_blob_client(container, "runs/r/x.txt").upload_blob(b"x", overwrite=True)
    assert refused.value.status_code == sdk_refused.value.status_code == 403
    assert error_code_of(refused.value) == error_code_of(sdk_refused.value) is not None
    assert wrong_key not in str(refused.value) and wrong_key not in repr(client.putter)


async def test_staging_sends_small_files_through_the_putter(
    azurite: StorageEndpoint, container: str, tmp_path: Path
) -> None:
    for relpath, text in {"a.txt": "alpha", "sub/b.txt": "beta beta", "empty.txt": ""}.items():
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relpath).write_text(text, encoding="utf-8")
    inputs = discover_inputs([tmp_path])
    putter_requests = RequestCounter()
    async with topn_blob_service(azurite, putter_requests, azurite.account_key) as client:
        staged = await staging.upload_inputs(client, container, "r9", inputs, concurrency=2, retry=FAST_RETRY)
        again = await staging.upload_inputs(client, container, "r9", inputs, concurrency=2, retry=FAST_RETRY)
        for item in inputs:
            blob = client.get_blob_client(container, naming.input_blob_name("r9", item.relpath))
            assert await (await blob.download_blob()).readall() == item.path.read_bytes()
    assert [item.skipped for item in staged] == [False] * 3
    assert [item.skipped for item in again] == [True] * 3  # same MD5 already stored (read through the SDK)
    # Three first puts and three refused as existing: all on the putter's transport.
    assert putter_requests.by_operation(STORAGE) == {"upload_blob": 6}
