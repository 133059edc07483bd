"""Spot core quotas and failed allocations as the real azure.batch.aio.BatchClient reads them."""

from __future__ import annotations

import uuid

import pytest
from azure.batch import models
from azure.batch.aio import BatchClient

from tests.conftest import StartEmulator
from tests.integration.emulator.conftest import UBUNTU, batch_client, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _steady(client: BatchClient, pool_id: str) -> bool:
    pool = await client.get_pool(pool_id)
    return bool(pool.allocation_state == models.AllocationState.STEADY)


async def test_spot_nodes_over_the_subscriptions_spot_quota(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(["--max-spot-cores", "2"])
    pool_id = unique("spot")
    async with batch_client(emulator) as client:
        # standard_d2s_v3 has 2 cores: the quota holds one Spot node; dedicated cores are not limited.
        await client.create_pool(
            models.BatchPoolCreateOptions(
                id=pool_id,
                vm_size="standard_d2s_v3",
                virtual_machine_configuration=UBUNTU,
                target_dedicated_nodes=1,
                target_low_priority_nodes=3,
            )
        )
        await wait_for(lambda: _steady(client, pool_id), what="the pool to be steady")
        pool = await client.get_pool(pool_id)
        assert (pool.current_dedicated_nodes, pool.current_low_priority_nodes) == (1, 1)
        assert pool.target_low_priority_nodes == 3
        assert pool.resize_errors is not None and len(pool.resize_errors) == 1
        error = pool.resize_errors[0]
        assert error.code == "AccountSpotCoreQuotaReached"
        assert "spot core quota of 2" in (error.message or "")
        assert [(value.name, value.value) for value in error.error_values or []] == [
            ("CoreQuota", "2"),
            ("NodesNotAllocated", "2"),
        ]


async def test_the_first_allocation_fails_and_the_next_resize_gets_its_nodes(
    start_emulator: StartEmulator,
) -> None:
    emulator = await start_emulator(["--fault-allocation-failed", "1"])
    pool_id = unique("alloc")
    async with batch_client(emulator) as client:
        await client.create_pool(
            models.BatchPoolCreateOptions(
                id=pool_id,
                vm_size="standard_d2s_v3",
                virtual_machine_configuration=UBUNTU,
                target_dedicated_nodes=2,
            )
        )
        await wait_for(lambda: _steady(client, pool_id), what="the pool to be steady")
        pool = await client.get_pool(pool_id)
        assert (pool.target_dedicated_nodes, pool.current_dedicated_nodes) == (2, 0)
        assert pool.resize_errors is not None
        assert [(error.code, error.message) for error in pool.resize_errors] == [
            ("AllocationFailed", "Desired number of dedicated nodes could not be allocated")
        ]
        assert [value.name for value in pool.resize_errors[0].error_values or []] == ["Reason"]

        # Only the first allocation was made to fail: a resize now gets the nodes and clears the error.
        resize = await client.begin_resize_pool(
            pool_id, models.BatchPoolResizeOptions(target_dedicated_nodes=2), polling_interval=0.1
        )
        await resize.result()
        await wait_for(lambda: _steady(client, pool_id), what="the pool to be steady again")
        pool = await client.get_pool(pool_id)
        assert pool.resize_errors is None and pool.current_dedicated_nodes == 2
