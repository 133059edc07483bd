"""Every operation the emulator serves refuses a request whose SharedKey signature is wrong.

The routes come from the emulator's own route table, so an operation added later is covered too;
each is called over HTTP with a well-formed Authorization header carrying a wrong signature.
"""

from __future__ import annotations

import base64
import re
from email.utils import formatdate

import aiohttp
import pytest

import emulator.server  # noqa: F401 - registers every handler in ROUTES
from emulator.rest import ROUTES
from tests.conftest import BatchEndpoint

pytestmark = pytest.mark.asyncio(loop_scope="session")
API = "api-version=2025-06-01"
WRONG_SIGNATURE = base64.b64encode(b"\0" * 32).decode("ascii")


def concrete(path: str) -> str:
    """A route's path with every `{parameter}` filled in."""
    return re.sub(r"\{[^}]+\}", "x1", path)


@pytest.mark.parametrize(
    ("method", "path"), sorted({(method, path) for method, path, _ in ROUTES}), ids=lambda value: str(value)
)
async def test_a_wrong_signature_is_refused_by_every_operation(
    batch_emulator: BatchEndpoint, method: str, path: str
) -> None:
    body = b"{}" if method in ("POST", "PUT", "PATCH") else b""
    headers = {
        "Authorization": f"SharedKey {batch_emulator.account_name}:{WRONG_SIGNATURE}",
        "ocp-date": formatdate(usegmt=True),
        "Content-Type": "application/json; odata=minimalmetadata",
        "Content-Length": str(len(body)),
    }
    url = f"{batch_emulator.endpoint}{concrete(path)}?{API}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=body, headers=headers) as response,
    ):
        text = await response.text()
    assert response.status == 403, f"{method} {path}: {response.status} {text[:300]}"
    if method != "HEAD":  # a HEAD answer has no body to name the error in
        assert "AuthenticationFailed" in text
