"""A bare SharedKey-signed HTTP client, for speaking any api-version's wire shapes to the emulator."""

from __future__ import annotations

import json
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

from emulator.auth import decode_account_key, sign, string_to_sign
from tests.conftest import BatchEndpoint

JSON_BODY = "application/json; odata=minimalmetadata"


class SignedHttp:
    """Sends requests signed as Microsoft's Batch clients sign them, with a chosen api-version."""

    def __init__(self, emulator: BatchEndpoint, session: aiohttp.ClientSession, api_version: str) -> None:
        self.emulator = emulator
        self.session = session
        self.api_version = api_version
        self.key = decode_account_key(emulator.account_key)

    async def call(
        self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """(status, decoded JSON answer or None); `path` is unencoded, e.g. /pools/p1."""
        status, payload = await self.send(method, path, body, query)
        return status, (json.loads(payload) if payload else None)

    async def send(
        self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """(status, raw answer bytes)."""
        raw_path = quote(path)
        raw_query = urlencode({"api-version": self.api_version, **(query or {})}, quote_via=quote)
        data = json.dumps(body).encode() if body is not None else b""
        headers = {"ocp-date": formatdate(usegmt=True)}
        if body is not None:
            headers["Content-Type"] = JSON_BODY
        if method not in ("GET", "HEAD"):
            headers["Content-Length"] = str(len(data))
        text = string_to_sign(method, raw_path, raw_query, headers.items(), self.emulator.account_name)
        headers["Authorization"] = f"SharedKey {self.emulator.account_name}:{sign(self.key, text)}"
        url = URL(f"{self.emulator.endpoint}{raw_path}?{raw_query}", encoded=True)
        async with self.session.request(
            method, url, data=data or None, headers=headers, skip_auto_headers=("Content-Type",)
        ) as response:
            return response.status, await response.read()

    async def ok(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None) -> Any:
        """The JSON answer of a call that must succeed (any 2xx)."""
        status, answer = await self.call(method, path, body, query)
        assert 200 <= status < 300, f"{method} {path} -> {status}: {answer}"
        return answer
