"""A job's maxWallClockTime ends it, as the service does, also after a PATCH moved the limit."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from azure.batch import models

from tests.conftest import BatchEndpoint
from tests.integration.emulator.conftest import batch_client, pool_options, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_wall_clock_terminates_the_job_and_its_running_task(batch_emulator: BatchEndpoint) -> None:
    pool_id, job_id = unique("pool"), unique("job")
    async with batch_client(batch_emulator) as client:
        await client.create_pool(pool_options(pool_id))
        await client.create_job(
            models.BatchJobCreateOptions(
                id=job_id,
                pool_info=models.BatchPoolInfo(pool_id=pool_id),
                constraints=models.BatchJobConstraints(max_wall_clock_time=timedelta(seconds=1)),
            )
        )
        # Renewed before it runs out, as topn's resume does: the job must outlive the first limit.
        await client.update_job(
            job_id,
            models.BatchJobUpdateOptions(
                constraints=models.BatchJobConstraints(max_wall_clock_time=timedelta(seconds=3))
            ),
        )
        await client.create_task(
            job_id, models.BatchTaskCreateOptions(id="sleeps", command_line="/bin/sleep 60")
        )

        async def running() -> bool:
            return (await client.get_task(job_id, "sleeps")).state == models.BatchTaskState.RUNNING

        await wait_for(running, 15, "the task to start")
        job = await client.get_job(job_id)
        assert job.state == models.BatchJobState.ACTIVE  # past the first limit, inside the second

        async def ended() -> bool:
            return (await client.get_job(job_id)).state == models.BatchJobState.COMPLETED

        await wait_for(ended, 15, "the job's wall clock to end it")
        job = await client.get_job(job_id)
        assert job.execution_info is not None
        assert job.execution_info.termination_reason == "MaxWallClockTimeExpiry"
        assert job.execution_info.end_time is not None and job.creation_time is not None
        assert job.execution_info.end_time - job.creation_time >= timedelta(seconds=3)
        task = await client.get_task(job_id, "sleeps")
        assert task.state == models.BatchTaskState.COMPLETED
        assert (
            task.execution_info is not None
            and task.execution_info.result == models.BatchTaskExecutionResult.FAILURE
        )
        await client.begin_delete_pool(pool_id)
