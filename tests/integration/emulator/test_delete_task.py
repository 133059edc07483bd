"""`delete_task` (DELETE /jobs/{jobId}/tasks/{taskId}) with the real SDK: gone, counted out, id reusable."""

from __future__ import annotations

import uuid

import pytest
from azure.batch import models
from azure.core.exceptions import ResourceNotFoundError

from tests.conftest import BatchEndpoint
from tests.integration.emulator.conftest import batch_client, pool_options, wait_for, wait_job_done

pytestmark = pytest.mark.asyncio(loop_scope="session")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_an_active_task_is_deleted_and_its_id_can_be_added_again(batch_emulator: BatchEndpoint) -> None:
    job_id = unique("job")
    async with batch_client(batch_emulator) as client:
        # A job on a pool that does not exist: its tasks stay active.
        await client.create_job(
            models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=unique("nopool")))
        )
        for task_id in ("keep", "renew"):
            await client.create_task(
                job_id, models.BatchTaskCreateOptions(id=task_id, command_line="/bin/true")
            )
        await client.delete_task(job_id, "renew")
        with pytest.raises(ResourceNotFoundError) as missing:
            await client.get_task(job_id, "renew")
        assert missing.value.error is not None and missing.value.error.code == "TaskNotFound"
        assert [task.id async for task in client.list_tasks(job_id)] == ["keep"]
        assert (await client.get_job_task_counts(job_id)).task_counts.active == 1
        with pytest.raises(ResourceNotFoundError):
            await client.delete_task(job_id, "renew")

        await client.create_task(
            job_id, models.BatchTaskCreateOptions(id="renew", command_line="/bin/echo second")
        )
        again = await client.get_task(job_id, "renew")
        assert (again.state, again.command_line) == (models.BatchTaskState.ACTIVE, "/bin/echo second")
        assert sorted([task.id async for task in client.list_tasks(job_id)]) == ["keep", "renew"]
        assert (await client.get_job_task_counts(job_id)).task_counts.active == 2


async def test_deleting_a_running_task_kills_it_and_frees_its_slot(batch_emulator: BatchEndpoint) -> None:
    pool_id, job_id = unique("pool"), unique("job")
    async with batch_client(batch_emulator) as client:
        await client.create_pool(pool_options(pool_id, nodes=1, slots=1))
        await client.create_job(
            models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id))
        )
        await client.create_task(
            job_id, models.BatchTaskCreateOptions(id="sleeper", command_line="sleep 300")
        )

        async def sleeper_running() -> bool:
            return bool((await client.get_task(job_id, "sleeper")).state == models.BatchTaskState.RUNNING)

        await wait_for(sleeper_running, what="the sleeper to run")
        await client.delete_task(job_id, "sleeper")
        with pytest.raises(ResourceNotFoundError):
            await client.get_task(job_id, "sleeper")
        # The only slot was the sleeper's: a new task can run only if the deletion freed it.
        await client.create_task(job_id, models.BatchTaskCreateOptions(id="after", command_line="/bin/true"))
        counts = await wait_job_done(client, job_id, 1)
        assert (counts.succeeded, counts.failed, counts.running, counts.active) == (1, 0, 0, 0)
        await client.begin_delete_pool(pool_id)  # the service finishes the deletion on its own
