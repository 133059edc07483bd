"""Account quotas with the real azure.batch.aio.BatchClient: active jobs and cores."""

from __future__ import annotations

import uuid

import pytest
from azure.batch import models
from azure.batch.aio import BatchClient
from azure.batch.models._models import BatchJobTerminateOptions  # not exported (SDK quirk)
from azure.core.exceptions import HttpResponseError, ResourceExistsError

from tests.conftest import StartEmulator
from tests.integration.emulator.conftest import UBUNTU, batch_client, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_a_job_over_the_active_jobs_quota_waits_for_one_to_complete(
    start_emulator: StartEmulator,
) -> None:
    emulator = await start_emulator(["--max-active-jobs", "2"])
    pool_info = models.BatchPoolInfo(pool_id="any-pool")
    async with batch_client(emulator) as client:
        first, second, third = unique("job"), unique("job"), unique("job")
        await client.create_job(models.BatchJobCreateOptions(id=first, pool_info=pool_info))
        await client.create_job(models.BatchJobCreateOptions(id=second, pool_info=pool_info))
        with pytest.raises(ResourceExistsError) as refused:
            await client.create_job(models.BatchJobCreateOptions(id=third, pool_info=pool_info))
        assert refused.value.status_code == 409
        assert (
            refused.value.error is not None and refused.value.error.code == "ActiveJobAndScheduleQuotaReached"
        )
        # A completed job no longer counts.
        terminate = await client.begin_terminate_job(
            first, options=BatchJobTerminateOptions(termination_reason="done"), polling_interval=0.1
        )
        await terminate.result()
        await client.create_job(models.BatchJobCreateOptions(id=third, pool_info=pool_info))
        assert {job.id async for job in client.list_jobs()} == {first, second, third}


async def test_a_resize_beyond_the_core_quota_ends_in_a_resize_error(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(["--max-dedicated-cores", "4", "--max-low-priority-cores", "2"])
    pool_id = unique("pool")
    async with batch_client(emulator) as client:
        # standard_d2s_v3 has 2 cores: 4 dedicated cores hold 2 nodes, 2 low-priority cores 1 node.
        await client.create_pool(
            models.BatchPoolCreateOptions(
                id=pool_id,
                vm_size="standard_d2s_v3",
                virtual_machine_configuration=UBUNTU,
                target_dedicated_nodes=1,
            )
        )
        await wait_for(lambda: _steady(client, pool_id), what="the pool to be steady")
        resize = await client.begin_resize_pool(
            pool_id,
            models.BatchPoolResizeOptions(target_dedicated_nodes=3, target_low_priority_nodes=2),
            polling_interval=0.1,
        )
        await resize.result()  # the request itself succeeds: the quota shows in the pool
        pool = await client.get_pool(pool_id)
        assert pool.allocation_state == models.AllocationState.STEADY
        assert (pool.target_dedicated_nodes, pool.current_dedicated_nodes) == (3, 2)
        assert (pool.target_low_priority_nodes, pool.current_low_priority_nodes) == (2, 1)
        assert pool.resize_errors is not None
        assert [error.code for error in pool.resize_errors] == [
            "AccountCoreQuotaReached",
            "AccountLowPriorityCoreQuotaReached",
        ]
        assert "core quota of 4" in (pool.resize_errors[0].message or "")

        # Shrinking back under the quota clears the error.
        shrink = await client.begin_resize_pool(
            pool_id, models.BatchPoolResizeOptions(target_dedicated_nodes=1), polling_interval=0.1
        )
        await shrink.result()
        pool = await client.get_pool(pool_id)
        assert pool.resize_errors is None and pool.current_dedicated_nodes == 1

        with pytest.raises(HttpResponseError) as unknown_size:
            await client.create_pool(
                models.BatchPoolCreateOptions(
                    id=unique("pool"), vm_size="mystery-size", virtual_machine_configuration=UBUNTU
                )
            )
        assert (unknown_size.value.status_code, unknown_size.value.error.code) == (
            400,
            "InvalidPropertyValue",
        )


async def _steady(client: BatchClient, pool_id: str) -> bool:
    pool = await client.get_pool(pool_id)
    return bool(pool.allocation_state == models.AllocationState.STEADY)
