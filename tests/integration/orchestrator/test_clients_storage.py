"""open_clients, check_credentials, request counting and SAS scopes against a real Azurite."""

from __future__ import annotations

import base64
import socket
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from azure.storage.blob.aio import BlobClient, ContainerClient

from orchestrator.azure.clients import STORAGE, check_credentials, open_clients
from orchestrator.azure.retry import SDK_RETRY_KWARGS
from orchestrator.azure.sas import (
    blob_url,
    container_url,
    mint_blob_read_sas,
    mint_container_write_sas,
    sas_window,
    utc_now,
)
from orchestrator.errors import CredentialError, ServiceUnavailableError
from orchestrator.settings import Settings, load_settings
from tests.conftest import BatchEndpoint, StorageEndpoint

pytestmark = pytest.mark.asyncio(loop_scope="session")

PROJECT = Path(__file__).resolve().parents[3]
WRONG_KEY = base64.b64encode(b"not the key of this storage account!").decode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def storage_settings(azurite: StorageEndpoint, **storage: str) -> Settings:
    base = load_settings(PROJECT / "config" / "local.toml", {})
    return replace(base, storage=replace(base.storage, blob_endpoint=azurite.endpoint, **storage))


async def test_storage_requests_are_counted_by_operation(azurite: StorageEndpoint) -> None:
    async with AsyncExitStack() as stack:
        clients = await open_clients(storage_settings(azurite), stack)
        container = clients.blob_service.get_container_client("topncount")
        await container.create_container()
        await container.upload_blob("a b.txt", b"one two")
        await (await container.download_blob("a b.txt")).readall()
        await container.delete_container()
        assert clients.requests.by_operation(STORAGE) == {
            "create_container": 1,
            "upload_blob": 1,
            "download_blob": 1,
            "delete_container": 1,
        }


async def test_sas_scopes_hold_on_a_real_blob_service(azurite: StorageEndpoint) -> None:
    settings = storage_settings(azurite)
    key = settings.storage.account_key
    start, expiry = sas_window(utc_now(), 600, 60)
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        inputs = clients.blob_service.get_container_client("topnsas-in")
        await inputs.create_container()
        await inputs.upload_blob("dir/é #1.txt", b"input text")
        read_sas = mint_blob_read_sas(
            account_name=azurite.account_name,
            container="topnsas-in",
            blob_name="dir/é #1.txt",
            start=start,
            expiry=expiry,
            account_key=key,
        )
        read_url = blob_url(azurite.endpoint, "topnsas-in", "dir/é #1.txt", read_sas)
        async with BlobClient.from_blob_url(read_url, **SDK_RETRY_KWARGS) as reader:
            assert await (await reader.download_blob()).readall() == b"input text"
            with pytest.raises(HttpResponseError) as refused:
                await reader.upload_blob(b"overwrite", overwrite=True)
            assert refused.value.status_code == 403

        await clients.blob_service.create_container("topnsas-out")
        write_sas = mint_container_write_sas(
            account_name=azurite.account_name,
            container="topnsas-out",
            start=start,
            expiry=expiry,
            account_key=key,
        )
        async with ContainerClient.from_container_url(
            container_url(azurite.endpoint, "topnsas-out", write_sas), **SDK_RETRY_KWARGS
        ) as writer:
            await writer.upload_blob("a_OUTPUT.txt", b"result")
            with pytest.raises(HttpResponseError) as cannot_read:
                await (await writer.download_blob("a_OUTPUT.txt")).readall()
            assert cannot_read.value.status_code == 403
            with pytest.raises(HttpResponseError) as cannot_list:
                async for _ in writer.list_blobs():
                    pass
            assert cannot_list.value.status_code == 403  # refused for want of permission, nothing else
        for name in ("topnsas-in", "topnsas-out"):
            await clients.blob_service.delete_container(name)


async def test_a_wrong_storage_key_is_one_request_and_a_clear_error(azurite: StorageEndpoint) -> None:
    from orchestrator.azure.clients import _translate_check_error  # the check's storage half, without Batch

    settings = storage_settings(azurite, account_key=WRONG_KEY)
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        with pytest.raises(HttpResponseError) as refused:
            await clients.blob_service.get_container_client("topn-input").exists()
        error = _translate_check_error(refused.value, settings, "storage")
        assert isinstance(error, CredentialError)
        assert "TOPN_STORAGE_ACCOUNT_KEY" in str(error) and WRONG_KEY not in str(error)
        assert clients.requests.total(STORAGE) == 1  # no SDK retries underneath


async def test_a_dead_storage_endpoint_is_reported_by_name(azurite: StorageEndpoint) -> None:
    from orchestrator.azure.clients import _translate_check_error

    dead = f"http://127.0.0.1:{free_port()}/devstoreaccount1"
    settings = replace(
        storage_settings(azurite), storage=replace(storage_settings(azurite).storage, blob_endpoint=dead)
    )
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        with pytest.raises(ServiceRequestError) as failed:  # connection refused, nothing answered
            await clients.blob_service.get_container_client("topn-input").exists()
        error = _translate_check_error(failed.value, settings, "storage")
        assert isinstance(error, ServiceUnavailableError) and dead in str(error)


def both_settings(azurite: StorageEndpoint, batch_endpoint: str) -> Settings:
    base = storage_settings(azurite)
    return replace(base, batch=replace(base.batch, endpoint=batch_endpoint))


async def test_the_credential_check_costs_one_request_per_service(
    azurite: StorageEndpoint, batch_emulator: BatchEndpoint
) -> None:
    async with AsyncExitStack() as stack:
        clients = await open_clients(both_settings(azurite, batch_emulator.endpoint), stack)
        await check_credentials(clients, both_settings(azurite, batch_emulator.endpoint))
        assert clients.requests.snapshot() == {
            "batch": {"get_pool": 1},
            "storage": {"get_container_properties": 1},
        }


async def test_the_credential_check_names_a_dead_batch_endpoint(azurite: StorageEndpoint) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = both_settings(azurite, dead)
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        with pytest.raises(ServiceUnavailableError) as raised:
            await check_credentials(clients, settings)
    assert dead in str(raised.value) and "TOPN_BATCH_ENDPOINT" in str(raised.value)
    assert clients.requests.total("batch") == 1  # refused once, not retried
