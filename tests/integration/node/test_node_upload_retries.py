"""Transient storage errors: the node retries (bounded), then succeeds or exits 3 naming the status.

Requests go through a small proxy in front of the real Azurite that answers the first PUTs with 503,
the way a busy storage account does; everything else is forwarded untouched (the SAS in the query
does not sign the host, so it stays valid through the proxy).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from azure.storage.blob.aio import BlobServiceClient

from node.pack import build_zipapp
from tests.conftest import StorageEndpoint
from tests.secret_scan import find_secrets

_BUSY_BODY = (
    '<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
    "<Message>The server is busy.</Message></Error>"
)


@dataclass
class FaultyProxy:
    endpoint: str  # like the Azurite endpoint, with the account path
    failures_left: int = 0
    puts_seen: int = 0
    statuses: list[int] = field(default_factory=list)


@pytest.fixture(scope="module")
def node_pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_zipapp(tmp_path_factory.mktemp("pyz") / "node.pyz")


@pytest_asyncio.fixture
async def faulty_proxy(azurite: StorageEndpoint) -> AsyncIterator[FaultyProxy]:
    upstream = azurite.endpoint.split("/devstoreaccount1")[0]
    proxy = FaultyProxy(endpoint="")
    async with aiohttp.ClientSession(auto_decompress=False) as session:

        async def forward(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            if request.method == "PUT":
                proxy.puts_seen += 1
                if proxy.failures_left > 0:
                    proxy.failures_left -= 1
                    proxy.statuses.append(503)
                    return web.Response(
                        status=503, text=_BUSY_BODY, headers={"x-ms-error-code": "ServerBusy"}
                    )
            headers = {key: value for key, value in request.headers.items() if key.lower() != "host"}
            async with session.request(
                request.method, upstream + request.path_qs, headers=headers, data=body
            ) as answer:
                payload = await answer.read()
                proxy.statuses.append(answer.status)
                passed = {
                    key: value
                    for key, value in answer.headers.items()
                    if key.lower() not in ("content-length", "transfer-encoding", "connection")
                }
                return web.Response(status=answer.status, body=payload, headers=passed)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        proxy.endpoint = f"http://127.0.0.1:{port}/devstoreaccount1"
        try:
            yield proxy
        finally:
            await runner.cleanup()


async def _writable_container(azurite: StorageEndpoint) -> tuple[str, str]:
    name = f"node-{uuid.uuid4().hex[:12]}"
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        await service.create_container(name)
    sas = generate_container_sas(
        azurite.account_name,
        name,
        account_key=azurite.account_key,
        permission=ContainerSasPermissions(create=True, write=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),  # noqa: UP017 (matches the node's 3.10 style)
    )
    return name, sas


async def _run(pyz: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(pyz), *args],
        cwd=cwd,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_transient_503s_are_retried_until_the_upload_succeeds(
    azurite: StorageEndpoint, faulty_proxy: FaultyProxy, node_pyz: Path, tmp_path: Path
) -> None:
    container, sas = await _writable_container(azurite)
    (tmp_path / "in.txt").write_text("retry me retry\n", encoding="utf-8")
    faulty_proxy.failures_left = 2
    completed = await _run(
        node_pyz,
        ["--filepath", "in.txt", "--output-container-url", f"{faulty_proxy.endpoint}/{container}?{sas}"],
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    assert faulty_proxy.statuses.count(503) == 2
    assert faulty_proxy.puts_seen == 4  # two blobs, two of the attempts refused
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        blob = service.get_blob_client(container, "in_OUTPUT.txt")
        text = (await (await blob.download_blob()).readall()).decode("utf-8")
    assert "retry:\t2\nme:\t1\n" in text


async def test_persistent_503s_exit_3_after_bounded_retries(
    azurite: StorageEndpoint, faulty_proxy: FaultyProxy, node_pyz: Path, tmp_path: Path
) -> None:
    container, sas = await _writable_container(azurite)
    (tmp_path / "in.txt").write_text("never stored\n", encoding="utf-8")
    faulty_proxy.failures_left = 1_000
    completed = await _run(
        node_pyz,
        [
            *("--filepath", "in.txt", "--upload-retries", "1"),
            *("--output-container-url", f"{faulty_proxy.endpoint}/{container}?{sas}"),
        ],
        cwd=tmp_path,
    )
    assert completed.returncode == 3, completed.stderr
    assert faulty_proxy.puts_seen == 4  # each of the two blobs: one attempt and one retry
    assert f"container '{container}'" in completed.stderr
    assert "HTTP 503 ServerBusy" in completed.stderr
    leaks = find_secrets([("stderr", completed.stderr), ("stdout", completed.stdout)], [azurite.account_key])
    assert not leaks, leaks
