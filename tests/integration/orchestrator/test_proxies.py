"""The clients' transport uses the proxy the environment names, read once per endpoint (azure/proxies.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web
from azure.core.rest import HttpRequest

from orchestrator.azure.clients import STORAGE, CountingTransport, RequestCounter

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Recorder:
    """A loopback HTTP server that answers every request with its own name and remembers what it saw."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[str] = []
        self.url = ""

    async def answer(self, request: web.Request) -> web.Response:
        self.seen.append(request.raw_path)
        return web.Response(text=self.name)


@pytest_asyncio.fixture(loop_scope="session")
async def servers() -> AsyncIterator[tuple[Recorder, Recorder]]:
    """A stand-in endpoint and a stand-in proxy, each on a free loopback port."""
    recorders = (Recorder("endpoint"), Recorder("proxy"))
    runners = []
    for recorder in recorders:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", recorder.answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        recorder.url = f"http://127.0.0.1:{port}"
        runners.append(runner)
    try:
        yield recorders
    finally:
        for runner in runners:
            await runner.cleanup()


async def answers_from(transport: CountingTransport, url: str) -> list[str]:
    texts = []
    async with transport:
        for _ in range(3):
            response = await transport.send(HttpRequest("GET", url))
            texts.append(response.text())
    return texts


async def test_requests_go_through_the_proxy_the_environment_names(
    servers: tuple[Recorder, Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, proxy = servers
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", proxy.url)
    transport = CountingTransport(RequestCounter(), STORAGE, account_in_path=False)
    assert await answers_from(transport, f"{endpoint.url}/account/c/b.txt") == ["proxy"] * 3
    assert endpoint.seen == [] and len(proxy.seen) == 3


async def test_no_proxy_hosts_are_reached_directly(
    servers: tuple[Recorder, Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, proxy = servers
    for name in ("NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    transport = CountingTransport(RequestCounter(), STORAGE, account_in_path=False)
    assert await answers_from(transport, f"{endpoint.url}/account/c/b.txt") == ["endpoint"] * 3
    assert proxy.seen == [] and endpoint.seen == ["/account/c/b.txt"] * 3
