"""Blob inputs against a real Azurite: paged listing (requests counted), refusals, the read SAS scope."""

from __future__ import annotations

import gc
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import pytest_asyncio
from azure.core.exceptions import HttpResponseError, ServiceRequestError
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


# logs/2026/ listed two names a page.
PAGES_OF_TWO = [
    ["logs/2026/.hidden", "logs/2026/a/b.txt"],
    ["logs/2026/c.txt", "logs/2026/deep/er/d.txt"],
    [],
]


async def names_by_page(
    client: BlobServiceClient, azurite: StorageEndpoint, container: str
) -> list[list[str]]:
    """The names list_pages gives for logs/2026/, two a page."""
    prefix = prefix_of(azurite, f"az://{container}/logs/2026/")
    return [
        [blob.name for blob in page]
        async for page in blobinputs.list_pages(
            client, prefix, FAST_RETRY, account_name=azurite.account_name, page_size=2
        )
    ]


async def test_a_prefix_is_listed_page_by_page_one_request_each(
    seeded: tuple[BlobServiceClient, str, CountingHook], azurite: StorageEndpoint
) -> None:
    client, container, hook = seeded
    # Five names start with the prefix; the folder marker, alone on the last page, is left out.
    assert await names_by_page(client, azurite, container) == PAGES_OF_TWO
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


def live_sdk_pagers() -> int:
    """How many of the storage SDK's List Blobs pagers are still in memory (held, or garbage in a cycle)."""
    return sum(1 for item in gc.get_objects() if type(item).__name__ == "BlobPropertiesPaged")


async def test_a_long_listing_holds_one_sdk_pager_not_one_per_page(
    seeded: tuple[BlobServiceClient, str, CountingHook], azurite: StorageEndpoint
) -> None:
    """A pager refers to itself, so only a garbage collection frees one: a run listing 20 pages of
    5,000 blobs kept several pages' deserialized blobs alive when each page had a pager of its own."""
    client, container, _ = seeded
    prefix = prefix_of(azurite, f"az://{container}/logs/")
    gc.collect()
    before = live_sdk_pagers()
    gc.disable()  # as if no collection came between the pages
    try:
        held = []
        async for _ in blobinputs.list_pages(
            client, prefix, FAST_RETRY, account_name=azurite.account_name, page_size=1
        ):
            held.append(live_sdk_pagers() - before)
        left = live_sdk_pagers() - before
    finally:
        gc.enable()
    assert len(held) >= 6 and max(held) == 1, held
    assert left == 0  # freed once the listing ends, not at the next full collection


async def test_a_page_that_fails_once_is_listed_again_from_its_marker(
    seeded: tuple[BlobServiceClient, str, CountingHook], azurite: StorageEndpoint
) -> None:
    """A lost connection on the second page: that page is asked again, with a fresh pager, from its marker."""
    _, container, _ = seeded
    listings = 0

    def lose_the_second_page(request: Any) -> None:
        nonlocal listings
        if "comp=list" in request.http_request.url:
            listings += 1
            if listings == 2:
                raise ServiceRequestError("connection reset by the test")

    async with BlobServiceClient.from_connection_string(
        azurite.connection_string, raw_request_hook=lose_the_second_page, **dict(SDK_RETRY_KWARGS)
    ) as losing:
        assert await names_by_page(losing, azurite, container) == PAGES_OF_TWO
    assert listings == 4  # three pages, the second twice
