"""A reverse proxy in front of Azurite that holds List Blobs requests at a gate the test opens.

topn is pointed at the proxy as its blob endpoint; every request goes through to the real Azurite
unchanged, but once `passing` List Blobs requests of the watched container have gone through, the
next ones wait until the test calls `open()`. So a test can hold a run's listing at a chosen page
(and see what the run does meanwhile) without timing luck.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
import anyio
from aiohttp import web
from yarl import URL

# Hop-by-hop headers and those aiohttp sets itself.
DROPPED_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


class ListingGate:
    """Counts and holds List Blobs requests on one container."""

    def __init__(self, target: str, container: str, passing: int, refuse: bool = False) -> None:
        self._target = target.rstrip("/")  # http://127.0.0.1:PORT (no account path)
        self._container = container
        self._passing = passing
        self._refuse = refuse  # answer the held requests 403 at once instead of holding them
        self._opened = anyio.Event()
        self.listed = 0  # List Blobs requests that went through
        self.held = 0  # List Blobs requests that had to wait at the gate
        self.arrived_at: list[datetime] = []  # when each List Blobs request arrived, held or not

    def open(self) -> None:
        self._opened.set()

    def _is_listing(self, request: web.Request) -> bool:
        query = request.rel_url.query
        return (
            request.method == "GET"
            and query.get("restype") == "container"
            and query.get("comp") == "list"
            and request.path.rstrip("/").endswith(f"/{self._container}")
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self._is_listing(request):
            self.arrived_at.append(datetime.now(UTC))
            if self.listed >= self._passing and not self._opened.is_set():
                self.held += 1
                if self._refuse:
                    return permission_mismatch()
                await self._opened.wait()
            self.listed += 1
        return await relay(request, f"{self._target}{request.rel_url}")


async def relay(request: web.Request, url: str | URL, trust: ssl.SSLContext | None = None) -> web.Response:
    """`request` sent on to `url` as the client sent it, and the answer as the server gave it."""
    headers = {name: value for name, value in request.headers.items() if name.lower() not in DROPPED_HEADERS}
    body = await request.read()
    async with (
        # No header of aiohttp's own: Shared Key signs Content-Type, and the client chose its headers.
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=trust) if trust is not None else None,
            auto_decompress=False,
            skip_auto_headers=("Content-Type", "Accept", "Accept-Encoding", "User-Agent"),
        ) as session,
        session.request(
            request.method, url, headers=headers, data=body or None, allow_redirects=False
        ) as answer,
    ):
        payload = await answer.read()
        kept = {name: value for name, value in answer.headers.items() if name.lower() not in DROPPED_HEADERS}
        return web.Response(status=answer.status, headers=kept, body=payload)


def permission_mismatch(method: str = "GET") -> web.Response:
    """Blob Storage's answer to an authenticated identity whose role lacks the operation's data action
    (e.g. a role removed meanwhile); a HEAD gets the status and headers only."""
    body = (
        '<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthorizationPermissionMismatch</Code>'
        "<Message>This request is not authorized to perform this operation using this permission.</Message>"
        "</Error>"
    )
    return web.Response(
        status=403,
        headers={"x-ms-error-code": "AuthorizationPermissionMismatch", "Content-Type": "application/xml"},
        body=None if method == "HEAD" else body.encode(),
    )


@contextlib.asynccontextmanager
async def listing_gate(
    azurite_endpoint: str, container: str, passing: int, refuse: bool = False
) -> AsyncIterator[tuple[ListingGate, str]]:
    """The gate and the blob endpoint to give topn (Azurite's, through the proxy on a free port)."""
    parts = urlsplit(azurite_endpoint)
    gate = ListingGate(f"{parts.scheme}://{parts.netloc}", container, passing, refuse)
    app = web.Application(client_max_size=1 << 30)  # the node script and test blobs go through too
    app.router.add_route("*", "/{tail:.*}", gate.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    site = web.SockSite(runner, listener)
    await site.start()
    try:
        yield gate, f"{parts.scheme}://127.0.0.1:{port}{parts.path}"
    finally:
        gate.open()  # nothing stays held when the test ends
        await runner.cleanup()
