"""The main loop's heartbeat goes on while Batch or Storage hangs; readiness says they do not answer.

A real Daemon's loop and housekeeping, with the health app in front, on fake services that never
answer (tests/integration/daemon/test_daemon_liveness_hung_services.py does the same over TCP).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp.test_utils import TestClient, TestServer
from azure.core.exceptions import ResourceNotFoundError, ServiceRequestError

from orchestrator.service import daemon as daemon_module
from orchestrator.service import health
from orchestrator.service.health import build_app
from tests.unit.orchestrator.daemon.test_metrics_daemon_feed import Rig, open_rig

HEARTBEAT_S = 0.05
# Both shortened from the daemon's (10 s each) keeping their order: a service check may take longer
# than /livez allows the loop, so the loop must never wait for one.
LIVENESS_BOUND_S = 0.8
CHECK_TIMEOUT_S = 1.2


@pytest.fixture
async def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setattr(health, "LIVENESS_MIN_S", LIVENESS_BOUND_S)
    monkeypatch.setattr(daemon_module, "POOL_VIEW_EVERY_S", 0.1)
    monkeypatch.setattr(daemon_module, "REACHABILITY_TIMEOUT_S", CHECK_TIMEOUT_S, raising=False)
    made, store = await open_rig(tmp_path, TOPN_DAEMON_HEARTBEAT_S=str(HEARTBEAT_S))
    made.daemon.state.recovered = True
    try:
        yield made
    finally:
        await store.close()


async def probe(client: TestClient[Any, Any], path: str) -> tuple[int, dict[str, Any]]:
    response = await client.get(path)
    return response.status, await response.json()


async def watch_probes(client: TestClient[Any, Any], seconds: float) -> list[tuple[int, int]]:
    """(/livez status, /readyz status) every 50 ms for `seconds`."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.append(((await probe(client, "/livez"))[0], (await probe(client, "/readyz"))[0]))
        await anyio.sleep(0.05)
    return seen


async def wait_status(client: TestClient[Any, Any], path: str, status: int, within_s: float = 3) -> None:
    with anyio.fail_after(within_s):
        while True:
            if (await probe(client, path))[0] == status:
                return
            await anyio.sleep(0.05)


async def run_daemon_parts(rig: Rig, body: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> None:
    """The main loop and housekeeping as run_daemon runs them, the health app in front."""
    daemon = rig.daemon
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(daemon, None)))
    await client.start_server()
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(daemon.housekeep)
            group.start_soon(daemon.loop)
            await body(client)
            group.cancel_scope.cancel()
    finally:
        await client.close()


async def test_a_hanging_batch_leaves_livez_alive_and_makes_readyz_false(rig: Rig) -> None:
    async def body(client: TestClient[Any, Any]) -> None:
        await wait_status(client, "/readyz", 200)
        rig.batch.hang = True
        calls_before = rig.batch.calls
        seen = await watch_probes(client, 3 * LIVENESS_BOUND_S)
        assert rig.batch.calls >= calls_before + 2  # the pool view was tried, and hung, again and again
        assert {live for live, _ in seen} == {200}, "the heartbeat stopped while Batch hung"
        status, answer = await probe(client, "/readyz")
        assert status == 503 and answer["batch_reachable"] is False
        rig.batch.hang = False
        await wait_status(client, "/readyz", 200)

    await run_daemon_parts(rig, body)


async def test_a_wedged_loop_fails_livez_while_every_service_answers(rig: Rig) -> None:
    async def body(client: TestClient[Any, Any]) -> None:
        await wait_status(client, "/livez", 200)

        async def stuck(now: float) -> None:  # the loop's next step never returns (a bug)
            await anyio.sleep_forever()

        rig.daemon._close_due_batches = stuck  # type: ignore[method-assign]
        await wait_status(client, "/livez", 503, within_s=LIVENESS_BOUND_S + 1)
        assert (await probe(client, "/readyz"))[1]["services_reachable"] is True

    await run_daemon_parts(rig, body)


@pytest.mark.parametrize(
    ("failure", "reachable"),
    [
        (None, True),
        (ResourceNotFoundError("ContainerNotFound"), True),  # an answer: Storage is there
        (ServiceRequestError("connection refused"), False),
        ("hang", False),
    ],
    ids=["answers", "container-missing", "refused", "hangs"],
)
async def test_readyz_follows_whether_storage_answers(
    rig: Rig, failure: Exception | str | None, reachable: bool
) -> None:
    if failure == "hang":
        rig.blob_service.hang = True
    elif isinstance(failure, Exception):
        rig.blob_service.error = failure
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(rig.daemon, None)))
    await client.start_server()
    try:
        await rig.daemon.check_services()
        status, body = await probe(client, "/readyz")
        assert (status == 200) is reachable and body["storage_reachable"] is reachable
        assert body["batch_reachable"] is True
        assert rig.blob_service.containers == ["topn-input"]  # the daemon's own input container
    finally:
        await client.close()


async def test_the_loop_runs_once_per_heartbeat_s_as_documented(tmp_path: Path) -> None:
    """docs/configuration.md: `heartbeat_s` is the main loop's period (it used to run 4 times a second)."""
    made, store = await open_rig(tmp_path, TOPN_DAEMON_HEARTBEAT_S="0.6")
    beats: list[float] = []
    made.daemon.notifier.watchdog = lambda: beats.append(time.monotonic())  # type: ignore[method-assign]
    try:
        with anyio.move_on_after(1.5):
            await made.daemon.loop()
    finally:
        await store.close()
    assert 2 <= len(beats) <= 3  # at 0, 0.6 and 1.2 s (a loaded machine may delay the third)
    assert all(later - earlier >= 0.55 for earlier, later in itertools.pairwise(beats))
