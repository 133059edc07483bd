"""Health server rules: a stale heartbeat fails /livez; readiness; the bearer token off loopback."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from orchestrator.errors import ConfigError
from orchestrator.service.claims import DaemonFolders
from orchestrator.service.daemon import DaemonState
from orchestrator.service.health import build_app, is_loopback, liveness_bound_s, required_token
from orchestrator.service.metrics import DaemonMetrics
from orchestrator.settings import DaemonSettings


def fake_daemon(state: DaemonState) -> Any:
    """What the handlers read of a daemon (probes and metrics only; the runs API needs a journal)."""
    settings = SimpleNamespace(daemon=DaemonSettings(heartbeat_s=1.0))
    return SimpleNamespace(state=state, services=SimpleNamespace(settings=settings), metrics=DaemonMetrics())


def new_state() -> DaemonState:
    folders = DaemonFolders(Path("/in"), Path("/done"), Path("/failed"), Path("/out"))
    return DaemonState(daemon_id="test", folders=folders)


async def client_for(daemon: Any, token: str | None = None) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(daemon, token)))
    await client.start_server()
    return client


async def test_livez_follows_the_loops_heartbeat_not_the_handler() -> None:
    state = new_state()
    client = await client_for(fake_daemon(state))
    try:
        state.heartbeat_at = time.monotonic()
        assert (await client.get("/livez")).status == 200
        state.heartbeat_at = time.monotonic() - liveness_bound_s(1.0) - 1  # a wedged loop
        response = await client.get("/livez")
        assert response.status == 503 and (await response.json())["alive"] is False
    finally:
        await client.close()


async def test_readyz_only_after_recovery_with_services_answering_no_resize_errors_not_draining() -> None:
    state = new_state()
    client = await client_for(fake_daemon(state))
    try:
        assert (await client.get("/readyz")).status == 503
        state.recovered = True
        assert (await client.get("/readyz")).status == 200
        state.pool_resize_errors = 1
        assert (await client.get("/readyz")).status == 503
        state.pool_resize_errors = 0
        state.batch_reachable = False  # the last pool view could not be read in time
        response = await client.get("/readyz")
        assert response.status == 503 and (await response.json())["batch_reachable"] is False
        state.batch_reachable = True
        state.storage_reachable = False  # the last Storage check was not answered in time
        response = await client.get("/readyz")
        body = await response.json()
        assert response.status == 503 and body["storage_reachable"] is False
        assert body["batch_reachable"] is True and body["services_reachable"] is False
        state.storage_reachable = True
        assert (await client.get("/readyz")).status == 200
        state.draining = True
        assert (await client.get("/readyz")).status == 503
    finally:
        await client.close()


async def test_a_token_guards_everything_but_the_probes() -> None:
    token = "t" * 24
    client = await client_for(fake_daemon(new_state()), token)
    try:
        assert (await client.get("/metrics")).status == 401
        assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status == 401
        allowed = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert allowed.status == 200 and "topn_build_info" in await allowed.text()
        assert (await client.get("/livez")).status == 200
    finally:
        await client.close()


def test_public_addresses_need_a_long_enough_token() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert required_token("127.0.0.1", {}) is None
    with pytest.raises(ConfigError, match="TOPN_DAEMON_TOKEN"):
        required_token("0.0.0.0", {})
    with pytest.raises(ConfigError, match="at least 16"):
        required_token("0.0.0.0", {"TOPN_DAEMON_TOKEN": "short"})
    assert required_token("0.0.0.0", {"TOPN_DAEMON_TOKEN": "x" * 16}) == "x" * 16
