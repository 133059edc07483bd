"""The pool's image pair as a user meets it (issue 14, point 6): an unsupported pair stops `topn run`
with exit 2 naming supported pairs, before any pool exists; a warning kept by an earlier run is shown
by `topn status`."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from orchestrator.service import status
from tests.conftest import StartEmulator, StorageEndpoint
from tests.e2e.fault_support import run_topn_live, write_corpus
from tests.e2e.run_cli import topn_environment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]


async def test_an_unsupported_image_pair_stops_the_run_before_a_pool_exists(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    write_corpus(tmp_path / "in", 1)
    env = topn_environment(
        batch,
        azurite,
        tmp_path / ".topn",
        TOPN_POOL_ID="image-check",
        TOPN_POOL_NODE_AGENT_SKU_ID="batch.node.ubuntu 20.04",
    )
    run = await run_topn_live(["run", "in", "--out", "out", "--json"], tmp_path, env)
    assert run.exit_code == 2, run.stderr[-3000:]
    failed = [event for event in run.events() if event["event"] in ("run.failed", "command.failed")]
    message = failed[-1]["error"]
    assert "'batch.node.ubuntu 20.04' is not an image and node agent pair" in message
    assert "canonical/ubuntu-24_04-lts/server with node agent 'batch.node.ubuntu 24.04'" in message
    credential = AzureNamedKeyCredential(batch.account_name, batch.account_key)
    async with BatchClient(batch.endpoint, credential) as client:
        assert [pool.id async for pool in client.list_pools()] == []


async def test_topn_status_repeats_a_kept_image_warning(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    state = tmp_path / ".topn"
    await status.remember_pool_warning(
        state, "old-pool", "the pool's image reaches its end of life in 20 days"
    )
    run = await run_topn_live(["status", "--json"], tmp_path, topn_environment(batch, azurite, state))
    assert run.exit_code == 0, run.stderr[-3000:]
    warnings = [event for event in run.events() if event["event"] == "pool.image_end_of_life"]
    assert [(event["pool_id"], event["message"]) for event in warnings] == [
        ("old-pool", "the pool's image reaches its end of life in 20 days")
    ]
