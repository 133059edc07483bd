"""Storage's authorization step, played in front of Azurite for an identity whose role lacks a right.

Azurite (`--oauth basic`) checks a token's signature, audience and lifetime, but it has no role
assignments: every identity it authenticates may do everything. Blob Storage authenticates a
request and then authorizes it against the identity's roles, answering 403
`AuthorizationPermissionMismatch` when no role grants the operation's data action. This TLS reverse
proxy puts that second step back: every request goes on to Azurite, and a container read that
Azurite authenticated (200, or 404 for a missing container) is answered as Storage answers an
identity without that right. Anything else passes through unchanged.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from yarl import URL

from tests.e2e.listing_gate import permission_mismatch, relay

# Hop-by-hop headers, and those aiohttp sets itself.


@dataclass
class StorageRoleCheck:
    """The proxy's state: where Azurite is, and what it was asked with Azurite's own answer."""

    azurite: str  # https://127.0.0.1:PORT, no account path
    trust: ssl.SSLContext  # trusts Azurite's certificate
    seen: list[tuple[str, int]] = field(default_factory=list)  # (what was asked, Azurite's status)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        container_read = (
            request.method in ("GET", "HEAD") and query.get("restype") == "container" and "comp" not in query
        )
        answer = await relay(request, URL(f"{self.azurite}{request.raw_path}", encoded=True), self.trust)
        asked = "container read" if container_read else f"{request.method} {query.get('comp', '')}"
        self.seen.append((asked, answer.status))
        if container_read and answer.status in (200, 404):
            return permission_mismatch(request.method)
        return answer


@contextlib.asynccontextmanager
async def storage_role_check(
    blob_endpoint: str, cert_file: Path, key_file: Path
) -> AsyncIterator[tuple[StorageRoleCheck, str]]:
    """The check in front of Azurite at `blob_endpoint`, over HTTPS with the services' certificate
    and key; and the blob endpoint to give topn instead (the same account path, the proxy's port)."""
    parts = urlsplit(blob_endpoint)
    check = StorageRoleCheck(
        f"{parts.scheme}://{parts.netloc}", ssl.create_default_context(cafile=str(cert_file))
    )
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(cert_file, key_file)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", check.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    await web.SockSite(runner, listener, ssl_context=serving).start()
    try:
        yield check, f"https://127.0.0.1:{port}{parts.path}"
    finally:
        await runner.cleanup()
