"""Blob inputs against a real Azurite: paged listing (requests counted), refusals, the read SAS scope."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import pytest_asyncio
from azure.core.exceptions import HttpResponseError
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from orchestrator import blobinputs
from orchestrator.azure import sas, staging
from orchestrator.azure.retry import SDK_RETRY_KWARGS, RetryPolicy
from orchestrator.errors import InputError
from tests.conftest import StorageEndpoint
from tests.secret_scan import find_secrets

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.2, deadline_s=20)
BLOBS = {
    "logs/2026/a/b.txt": b"alpha beta",
    "logs/2026/c.txt": b"gamma",
    "logs/2026/deep/er/d.txt": b"delta",
    "logs/2026/.hidden": b"kept: the prefix names it",
    "logs/2026/folder/": b"",  # a folder marker: not an input
    "logs/2025/old.txt": b"not under the prefix",
    "logs/20260.txt": b"under the prefix logs/2026 but not logs/2026/",
}


class CountingHook:
    """Counts the HTTP requests a client sends (the SDK's raw_request_hook), by method and path."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    def __call__(self, request: Any) -> None:
        self.requests.append(f"{request.http_request.method} {request.http_request.url.split('?')[0]}")


@pytest_asyncio.fixture(loop_scope="session")
async def seeded(azurite: StorageEndpoint) -> AsyncIterator[tuple[BlobServiceClient, str, CountingHook]]:
    """A client counting its requests, and a container of the user's holding BLOBS (a fresh name)."""
    hook = CountingHook()
    sdk_kwargs: dict[str, Any] = dict(SDK_RETRY_KWARGS)
    async with BlobServiceClient.from_connection_string(
        azurite.connection_string, raw_request_hook=hook, **sdk_kwargs
    ) as client:
        container = f"userdata-{uuid.uuid4().hex[:12]}"
        await client.create_container(container)
        for name, data in BLOBS.items():
            await client.get_blob_client(container, name).upload_blob(data)
        hook.requests.clear()
        yield client, container, hook
        await client.delete_container(container)


def prefix_of(azurite: StorageEndpoint, argument: str) -> blobinputs.BlobPrefix:
    return blobinputs.parse_blob_argument(
        argument, blob_endpoint=azurite.endpoint, account_name=azurite.account_name
    )


async def test_a_prefix_is_listed_page_by_page_one_request_each(
    seeded: tuple[BlobServiceClient, str, CountingHook], azurite: StorageEndpoint
) -> None:
    client, container, hook = seeded
    prefix = prefix_of(azurite, f"az://{container}/logs/2026/")
    pages = [
        [blob.name for blob in page]
        async for page in blobinputs.list_pages(
            client, prefix, FAST_RETRY, account_name=azurite.account_name, page_size=2
        )
    ]
    # Five names start with the prefix; the folder marker, alone on the last page, is left out.
    assert pages == [
        ["logs/2026/.hidden", "logs/2026/a/b.txt"],
        ["logs/2026/c.txt", "logs/2026/deep/er/d.txt"],
        [],
    ]
    assert len(hook.requests) == 3
    assert all(request.startswith("GET ") and request.endswith(f"/{container}") for request in hook.requests)


async def test_listed_inputs_carry_their_container_name_size_and_etag(
    seeded: tuple[BlobServiceClient, str, CountingHook], azurite: StorageEndpoint
) -> None:
    client, container, hook = seeded
    prefixes = [
        prefix_of(azurite, f"az://{container}/logs/2026/"),
        prefix_of(azurite, f"{azurite.endpoint}/{container}/logs/2026"),  # the URL form, no trailing slash
    ]
    inputs = await blobinputs.list_blob_inputs(
        client, prefixes, FAST_RETRY, account_name=azurite.account_name
    )
    assert len(hook.requests) == 2  # one page per prefix: no HEAD or GET per blob
    merged = blobinputs.merge_inputs([], inputs)
    by_relpath = {item.relpath: item for item in merged}
    # The second prefix reaches the same four blobs (one input each: the first prefix's names) and
    # one more, logs/20260.txt, named after the prefix's last slash.
    assert sorted(by_relpath) == [".hidden", "20260.txt", "a/b.txt", "c.txt", "deep/er/d.txt"]
    item = by_relpath["a/b.txt"]
    assert item.blob is not None and item.size_bytes == len(BLOBS["logs/2026/a/b.txt"])
    properties = await client.get_blob_client(container, "logs/2026/a/b.txt").get_blob_properties()
    assert (item.blob.container, item.blob.name, item.blob.etag) == (
        container,
        "logs/2026/a/b.txt",
        properties.etag,
    )


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("az://no-such-container-{suffix}/x", "there is no container"),
        ("az://{container}/nothing/here/", "no blobs in container"),
    ],
    ids=["missing-container", "empty-prefix"],
)
async def test_a_missing_container_or_an_empty_prefix_is_a_clear_exit_2(
    seeded: tuple[BlobServiceClient, str, CountingHook],
    azurite: StorageEndpoint,
    argument: str,
    expected: str,
) -> None:
    client, container, _ = seeded
    prefix = prefix_of(azurite, argument.format(container=container, suffix=uuid.uuid4().hex[:8]))
    with pytest.raises(InputError) as refused:
        await blobinputs.list_blob_inputs(client, [prefix], FAST_RETRY, account_name=azurite.account_name)
    assert expected in str(refused.value) and refused.value.exit_code == 2
    assert find_secrets([("message", str(refused.value))], [azurite.account_key]) == []


async def test_a_refused_listing_is_a_403_with_the_fix_and_no_secret(
    seeded: tuple[BlobServiceClient, str, CountingHook], azurite: StorageEndpoint
) -> None:
    _, container, _ = seeded
    wrong_key = "d3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXkgd3Jvbmcga2V5IHdyb25nIGtleQ=="
    wrong = azurite.connection_string.replace(azurite.account_key, wrong_key)
    async with BlobServiceClient.from_connection_string(wrong, retry_total=0) as client:
        with pytest.raises(InputError) as refused:
            await blobinputs.list_blob_inputs(
                client,
                [prefix_of(azurite, f"az://{container}/logs/")],
                FAST_RETRY,
                account_name="devstoreaccount1",
            )
    message = str(refused.value)
    assert "HTTP 403" in message and "Storage Blob Data Reader" in message and container in message
    assert find_secrets([("message", message)], [azurite.account_key, wrong_key]) == []


async def test_the_blob_input_sas_reads_the_users_container_and_nothing_more(
    seeded: tuple[BlobServiceClient, str, CountingHook], azurite: StorageEndpoint
) -> None:
    """The manifests' source for a user's container: read only (sp=r, sr=c), no list, write or delete."""
    client, container, _ = seeded
    minter = await staging.make_sas_minter(
        account_url=azurite.endpoint,
        account_name=azurite.account_name,
        account_key=azurite.account_key,
        delegation_source=None,
        run_timeout_s=600,
        margin_s=60,
    )
    url = minter.container_read_url(container)
    assert "sp=r&" in url and "sr=c" in url
    async with ContainerClient.from_container_url(url, retry_total=0) as source:
        assert await (await source.download_blob("logs/2026/c.txt")).readall() == BLOBS["logs/2026/c.txt"]
        for refused_call in (
            partial(source.upload_blob, "logs/2026/c.txt", b"overwrite", overwrite=True),
            partial(source.upload_blob, "new.txt", b"new"),
            partial(source.delete_blob, "logs/2026/c.txt"),
        ):
            with pytest.raises(HttpResponseError) as refused:
                await refused_call()
            assert refused.value.status_code == 403

        async def list_them() -> None:
            _ = [blob async for blob in source.list_blobs()]

        with pytest.raises(HttpResponseError) as cannot_list:
            await list_them()
        assert cannot_list.value.status_code == 403
    # Moved onto another container, it reads nothing there.
    other = f"otherdata-{uuid.uuid4().hex[:12]}"
    await client.create_container(other)
    try:
        await client.get_blob_client(other, "x.txt").upload_blob(b"not yours")
        elsewhere_url = url.replace(f"/{container}?", f"/{other}?")
        async with ContainerClient.from_container_url(elsewhere_url, retry_total=0) as elsewhere:
            with pytest.raises(HttpResponseError) as wrong_scope:
                await (await elsewhere.download_blob("x.txt")).readall()
            assert wrong_scope.value.status_code == 403
    finally:
        await client.delete_container(other)
    # The user's blobs are as they were: nothing written or deleted.
    names = {blob.name: blob.size async for blob in client.get_container_client(container).list_blobs()}
    assert names == {name: len(data) for name, data in BLOBS.items()}
    assert sas.container_url(azurite.endpoint, container) == url.split("?", 1)[0]
