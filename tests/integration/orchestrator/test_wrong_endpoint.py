"""The credential check against live servers that answer but are not the configured service or account.

Azurite stands in for "a Storage service where Batch was expected" and the Batch emulator for the
reverse; both are the real processes from tests/conftest.py, driven by the real SDK clients.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from aiohttp import web

from orchestrator.azure.clients import BATCH, STORAGE, check_credentials, open_clients
from orchestrator.errors import ConfigError
from orchestrator.settings import Settings, load_settings
from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.secret_scan import find_secrets

pytestmark = pytest.mark.asyncio(loop_scope="session")

PROJECT = Path(__file__).resolve().parents[3]


def settings_for(batch_endpoint: str, blob_endpoint: str) -> Settings:
    base = load_settings(PROJECT / "config" / "local.toml", {})
    return replace(
        base,
        batch=replace(base.batch, endpoint=batch_endpoint),
        storage=replace(base.storage, blob_endpoint=blob_endpoint),
    )


def server_root(endpoint: str) -> str:
    """scheme://host:port of an endpoint, without the account path."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


async def refused_check(settings: Settings) -> tuple[ConfigError, dict[str, dict[str, int]]]:
    """Run the credential check, which must refuse; the error and the requests it cost."""
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        with pytest.raises(ConfigError) as raised:
            await check_credentials(clients, settings)
        return raised.value, clients.requests.snapshot()


def assert_names_the_problem(error: ConfigError, settings: Settings, *fragments: str) -> None:
    message = str(error)
    for fragment in fragments:
        assert fragment in message, message
    keys = [settings.batch.account_key or "", settings.storage.account_key or ""]
    assert find_secrets([("error message", message)], keys) == []


@pytest.mark.parametrize("with_account_path", [True, False], ids=["azurite-url", "azurite-root"])
async def test_a_batch_endpoint_that_is_azurite_is_a_config_error(
    azurite: StorageEndpoint, batch_emulator: BatchEndpoint, with_account_path: bool
) -> None:
    # Measured: Azurite answers the Batch get_pool with 403 AuthorizationFailure (XML) under its account
    # path, and 400 (no code) at its root; neither is a wrong key, both are the wrong service.
    batch_url = azurite.endpoint if with_account_path else server_root(azurite.endpoint)
    settings = settings_for(batch_url, azurite.endpoint)
    error, requests = await refused_check(settings)
    assert_names_the_problem(
        error, settings, "TOPN_BATCH_ENDPOINT", "[batch] endpoint", batch_url, "'topnlocal'", "not the Batch"
    )
    assert "refused the credentials" not in str(error)
    # One request, not retried: a wrong address is final. (Counted by total: the label comes from the
    # path, and an account path in front of /pools/ names no Batch operation.)
    assert sum(requests[BATCH].values()) == 1
    assert requests[STORAGE] == {}


async def test_a_blob_endpoint_that_is_the_batch_emulator_is_a_config_error(
    batch_emulator: BatchEndpoint,
) -> None:
    # Measured: the emulator answers the container request with 403 AuthenticationFailed in JSON.
    settings = settings_for(batch_emulator.endpoint, batch_emulator.endpoint)
    error, requests = await refused_check(settings)
    assert_names_the_problem(
        error,
        settings,
        "TOPN_STORAGE_BLOB_ENDPOINT",
        "[storage] blob_endpoint",
        batch_emulator.endpoint,
        "'devstoreaccount1'",
        "JSON",
    )
    assert "refused the credentials" not in str(error)
    assert requests[BATCH] == {"get_pool": 1, "list_jobs": 1}  # the Batch half passed: pools and jobs read
    assert requests[STORAGE] == {"get_container_properties": 1}


async def test_a_blob_endpoint_with_a_wrong_account_path_is_a_config_error(
    azurite: StorageEndpoint, batch_emulator: BatchEndpoint
) -> None:
    # Measured: Azurite answers 404 ResourceNotFound for an account it does not have (its known
    # account's missing container is 404 ContainerNotFound, which the check accepts).
    wrong_account = f"{server_root(azurite.endpoint)}/otheraccount"
    settings = settings_for(batch_emulator.endpoint, wrong_account)
    error, requests = await refused_check(settings)
    assert_names_the_problem(
        error,
        settings,
        "TOPN_STORAGE_BLOB_ENDPOINT",
        wrong_account,
        "'devstoreaccount1'",
        "404 ResourceNotFound",
    )
    assert sum(requests[STORAGE].values()) == 1  # labelled by path, which here has an unknown account
    assert requests[BATCH] == {"get_pool": 1, "list_jobs": 1}


async def test_the_right_endpoints_with_no_container_or_pool_yet_pass_the_check(
    azurite: StorageEndpoint, batch_emulator: BatchEndpoint
) -> None:
    # The same 404s the check accepts (PoolNotFound, ContainerNotFound) for a fresh pool and prefix.
    base = settings_for(batch_emulator.endpoint, azurite.endpoint)
    settings = replace(
        base,
        pool=replace(base.pool, id="never-created-pool"),
        storage=replace(base.storage, container_prefix="nevercreated"),
    )
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        await check_credentials(clients, settings)
        assert clients.requests.snapshot() == {
            BATCH: {"get_pool": 1, "list_jobs": 1},
            STORAGE: {"get_container_properties": 1},
        }


async def test_an_existing_container_on_the_right_account_passes_the_check(
    azurite: StorageEndpoint, batch_emulator: BatchEndpoint
) -> None:
    # The success answer is read too (its format); Azurite's real one must still pass.
    base = settings_for(batch_emulator.endpoint, azurite.endpoint)
    settings = replace(base, storage=replace(base.storage, container_prefix="checkexists"))
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        await clients.blob_service.create_container("checkexists-input")
        try:
            await check_credentials(clients, settings)
        finally:
            await clients.blob_service.delete_container("checkexists-input")


WebPage = Callable[[int], Awaitable[str]]


@pytest_asyncio.fixture(loop_scope="session")
async def web_page_server() -> AsyncIterator[WebPage]:
    """Start plain web servers that answer every request with one HTML page and a chosen status."""
    runners: list[web.AppRunner] = []

    async def start(status: int) -> str:
        async def page(request: web.Request) -> web.Response:
            return web.Response(
                status=status, text="<html><body>Welcome</body></html>", content_type="text/html"
            )

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", page)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.mark.parametrize("status", [200, 405])
async def test_a_web_page_as_the_batch_endpoint_is_a_config_error(
    web_page_server: WebPage, azurite: StorageEndpoint, status: int
) -> None:
    # 200: the SDK cannot read the page as a pool; 405: the page says so in HTML, not Batch's JSON.
    url = await web_page_server(status)
    settings = settings_for(url, azurite.endpoint)
    error, requests = await refused_check(settings)
    assert_names_the_problem(error, settings, "TOPN_BATCH_ENDPOINT", url, "not the Batch")
    assert requests[BATCH] == {"get_pool": 1}


@pytest.mark.parametrize("status", [200, 405])
async def test_a_web_page_as_the_blob_endpoint_is_a_config_error(
    web_page_server: WebPage, batch_emulator: BatchEndpoint, azurite: StorageEndpoint, status: int
) -> None:
    # 200 matters most: the SDK reads only the headers of a success, so the page would pass unread.
    url = f"{await web_page_server(status)}/{azurite.account_name}"
    settings = settings_for(batch_emulator.endpoint, url)
    error, requests = await refused_check(settings)
    assert_names_the_problem(error, settings, "TOPN_STORAGE_BLOB_ENDPOINT", url, "HTML page")
    assert requests[STORAGE] == {"get_container_properties": 1}
