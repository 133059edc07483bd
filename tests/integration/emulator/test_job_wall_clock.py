"""A job's `constraints.maxWallClockTime` with the real SDK: the job is terminated as the service does.

Running tasks end (`TaskEnded`), active ones stay active, the job completes with
`terminateReason = MaxWallClockTimeExpiry`, and adding a task then gets 409 `JobCompleted`.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from tests.conftest import BatchEndpoint, StartEmulator
from tests.integration.emulator.conftest import batch_client, pool_options, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def job_options(job_id: str, pool_id: str, wall_clock: timedelta) -> models.BatchJobCreateOptions:
    return models.BatchJobCreateOptions(
        id=job_id,
        pool_info=models.BatchPoolInfo(pool_id=pool_id),
        constraints=models.BatchJobConstraints(max_wall_clock_time=wall_clock),
    )


async def test_a_job_past_its_wall_clock_is_terminated_with_its_running_tasks(
    batch_emulator: BatchEndpoint,
) -> None:
    pool_id, job_id = unique("pool"), unique("job")
    async with batch_client(batch_emulator) as client:
        await client.create_pool(pool_options(pool_id, nodes=1, slots=1))
        try:
            await client.create_job(job_options(job_id, pool_id, timedelta(seconds=4)))
            # The only slot goes to the sleeper; the waiter never gets one.
            for task_id in ("sleeper", "waiter"):
                await client.create_task(
                    job_id, models.BatchTaskCreateOptions(id=task_id, command_line="sleep 300")
                )

            async def sleeper_running() -> bool:
                task = await client.get_task(job_id, "sleeper")
                return bool(task.state == models.BatchTaskState.RUNNING)

            await wait_for(sleeper_running, what="the sleeper to run")
            assert (await client.get_job(job_id)).state == models.BatchJobState.ACTIVE

            async def job_completed() -> bool:
                return bool((await client.get_job(job_id)).state == models.BatchJobState.COMPLETED)

            await wait_for(job_completed, timeout_s=60, what="the job's wall clock to end it")
            job = await client.get_job(job_id)
            assert job.execution_info is not None
            assert job.execution_info.termination_reason == "MaxWallClockTimeExpiry"
            assert job.execution_info.end_time is not None
            assert job.execution_info.end_time - job.creation_time >= timedelta(seconds=4)
            sleeper = await client.get_task(job_id, "sleeper")
            assert sleeper.state == models.BatchTaskState.COMPLETED
            assert sleeper.execution_info is not None and sleeper.execution_info.failure_info is not None
            assert sleeper.execution_info.failure_info.code == "TaskEnded"
            assert (await client.get_task(job_id, "waiter")).state == models.BatchTaskState.ACTIVE

            with pytest.raises(HttpResponseError) as refused:
                await client.create_task(
                    job_id, models.BatchTaskCreateOptions(id="late", command_line="true")
                )
            assert refused.value.status_code == 409
            assert refused.value.error is not None and refused.value.error.code == "JobCompleted"
        finally:
            await client.begin_delete_job(job_id)
            await client.begin_delete_pool(pool_id)


async def test_a_wall_clock_lengthened_by_patch_keeps_the_job_and_a_shortened_one_ends_it(
    batch_emulator: BatchEndpoint,
) -> None:
    kept, shortened = unique("kept"), unique("short")
    async with batch_client(batch_emulator) as client:
        for job_id in (kept, shortened):
            # On a pool that does not exist, so only the wall clock can end them.
            await client.create_job(job_options(job_id, unique("nopool"), timedelta(seconds=3)))
            await client.create_task(job_id, models.BatchTaskCreateOptions(id="t", command_line="true"))
        await client.update_job(
            kept,
            models.BatchJobUpdateOptions(
                constraints=models.BatchJobConstraints(max_wall_clock_time=timedelta(hours=1))
            ),
        )
        await client.update_job(
            shortened,
            models.BatchJobUpdateOptions(
                constraints=models.BatchJobConstraints(max_wall_clock_time=timedelta(seconds=1))
            ),
        )

        async def shortened_ended() -> bool:
            return bool((await client.get_job(shortened)).state == models.BatchJobState.COMPLETED)

        await wait_for(shortened_ended, timeout_s=30, what="the shortened wall clock to end its job")
        # The shortened job ended at its new (1 s) deadline; the kept one was created first, with the
        # same 3 s, and is still active well past them.
        kept_job = await client.get_job(kept)
        assert kept_job.state == models.BatchJobState.ACTIVE
        ended = await client.get_job(shortened)
        assert ended.execution_info is not None
        assert ended.execution_info.termination_reason == "MaxWallClockTimeExpiry"
        assert ended.execution_info.end_time is not None
        assert ended.execution_info.end_time - ended.creation_time < timedelta(seconds=3)
        for job_id in (kept, shortened):
            await client.begin_delete_job(job_id)


async def test_the_time_scale_runs_the_wall_clock_faster(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(["--time-scale", "0.01"])
    job_id = unique("job")
    async with batch_client(emulator) as client:
        # Five minutes on the service's clock: three seconds on the emulator's at 0.01.
        await client.create_job(job_options(job_id, unique("nopool"), timedelta(minutes=5)))

        async def job_completed() -> bool:
            return bool((await client.get_job(job_id)).state == models.BatchJobState.COMPLETED)

        await wait_for(job_completed, timeout_s=60, what="the scaled wall clock to end the job")
        job = await client.get_job(job_id)
        assert job.constraints is not None and job.constraints.max_wall_clock_time == timedelta(minutes=5)
        assert job.execution_info is not None
        assert job.execution_info.termination_reason == "MaxWallClockTimeExpiry"
