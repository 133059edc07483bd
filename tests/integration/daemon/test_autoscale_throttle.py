"""A second enableAutoScale within Batch's 30 s (a restart right after a start) is waited out once."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from orchestrator.azure.clients import open_clients
from orchestrator.service import keeping
from tests.conftest import StartEmulator, StorageEndpoint
from tests.integration.daemon.support import daemon_settings_for
from tests.integration.emulator.conftest import pool_options

pytestmark = pytest.mark.asyncio(loop_scope="session")

FIRST = "$TargetDedicatedNodes = 0; $NodeDeallocationOption = taskcompletion;"
SECOND = (
    "$TargetDedicatedNodes = max(0, $CurrentDedicatedNodes - 1); $NodeDeallocationOption = taskcompletion;"
)


async def test_an_enable_refused_as_too_soon_is_waited_out_and_applied(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = await start_emulator(["--time-scale", "0.1"])  # Batch's 30 s between enables: 3 s here
    monkeypatch.setattr(keeping, "ENABLE_THROTTLE_WAIT_S", 3.1)

    def settings(formula: str):  # type: ignore[no-untyped-def]
        base = daemon_settings_for(
            batch,
            azurite,
            tmp_path / "state",
            "throttled-pool",
            TOPN_DAEMON_AUTOSCALE="true",
            TOPN_DAEMON_AUTOSCALE_FORMULA=formula,
        )
        return keeping.daemon_settings(base)

    async with AsyncExitStack() as stack:
        clients = await open_clients(settings(FIRST), stack)
        await clients.batch.create_pool(pool_options("throttled-pool", nodes=0))
        await keeping.apply_autoscale(settings(FIRST), clients)  # switches the fixed pool over
        with capture_logs() as events:
            await keeping.apply_autoscale(settings(SECOND), clients)  # a restart with another formula
        pool = await clients.batch.get_pool("throttled-pool")
    assert pool.enable_auto_scale and pool.auto_scale_formula == SECOND
    throttled = [event for event in events if event["event"] == "pool.autoscale_enable_throttled"]
    assert [(event["pool_id"], event["wait_s"]) for event in throttled] == [("throttled-pool", 3.1)]
