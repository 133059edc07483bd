"""A pool that is still being deleted (issue 14, point 4): `[pool] id` names a pool Batch is deleting,
which keeps it `deleting` for a while and answers 409 `PoolBeingDeleted` to a pool add with its id.
`topn run` reads that 409 by its code (not as "already exists", which would reuse a dying pool) and
stops at once with the message and exit status docs/azure.md gives, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure.batch import models
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from orchestrator.settings.model import PoolSettings
from tests.conftest import StartEmulator, StorageEndpoint
from tests.e2e.fault_support import run_topn_live, write_corpus
from tests.e2e.run_cli import topn_environment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

POOL_ID = "being-deleted"
# Far longer than the run: the pool is `deleting` throughout, as a real pool is for minutes.
DELETE_DELAY_S = 300


async def test_a_pool_still_being_deleted_stops_the_run_naming_the_wait_and_another_id(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator(["--pool-delete-delay-s", str(DELETE_DELAY_S)])
    image = PoolSettings()  # the image the run's config names: only the pool's state is at odds
    credential = AzureNamedKeyCredential(batch.account_name, batch.account_key)
    async with BatchClient(batch.endpoint, credential) as client:
        await client.create_pool(
            models.BatchPoolCreateOptions(
                id=POOL_ID,
                vm_size="standard_d2s_v3",
                target_dedicated_nodes=0,
                virtual_machine_configuration=models.VirtualMachineConfiguration(
                    image_reference=models.BatchVmImageReference(
                        publisher=image.image_publisher, offer=image.image_offer, sku=image.image_sku
                    ),
                    node_agent_sku_id=image.node_agent_sku_id,
                ),
            )
        )
        await client.begin_delete_pool(POOL_ID)  # the deletion goes on; nobody waits for it
        assert (await client.get_pool(POOL_ID)).state == models.BatchPoolState.DELETING
    write_corpus(tmp_path / "in", 2)
    env = topn_environment(
        batch,
        azurite,
        tmp_path / ".topn",
        TOPN_POOL_ID=POOL_ID,
        TOPN_STORAGE_CONTAINER_PREFIX="beingdeleted",
    )
    run = await run_topn_live(["run", "in", "--out", "out", "--json"], tmp_path, env)
    failures = [event for event in run.events() if event["event"] == "run.failed"]
    assert run.exit_code == 1, run.stderr[-3000:]
    assert len(failures) == 1, run.stderr[-3000:]
    assert failures[0]["error_type"] == "PoolError"
    assert failures[0]["error"] == (
        f"pool {POOL_ID} is being deleted; wait until it is gone or set [pool] id to another name"
    )
    assert failures[0]["resumable"] is False  # a new run once the pool is gone, as docs/azure.md says
    # It stopped at the pool: no job was created, and the pool is still the one being deleted.
    async with BatchClient(batch.endpoint, credential) as client:
        assert [job.id async for job in client.list_jobs()] == []
        assert (await client.get_pool(POOL_ID)).state == models.BatchPoolState.DELETING
