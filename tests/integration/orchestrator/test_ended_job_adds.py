"""A resume that adds tasks to a job which ended meanwhile stops resumable (the real SDK, the emulator).

The job a resume saw running can end before its adds land (its other tasks all finished, and it is
set to end with them): Batch then refuses the adds with 409 `JobCompleted`. That is not a failed run:
the next resume goes on in a successor job.
"""

from __future__ import annotations

import uuid

import pytest
from azure.batch.aio import BatchClient
from azure.batch.models import BatchJobCreateOptions, BatchPoolInfo, BatchTaskCreateOptions
from azure.core.credentials import AzureNamedKeyCredential

from orchestrator.azure.retry import SDK_RETRY_KWARGS, RetryPolicy
from orchestrator.azure.submit import submit_tasks
from orchestrator.errors import JobEndedError, RunFailedError
from orchestrator.run.renewal import ended_job_is_resumable
from tests.conftest import BatchEndpoint

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAST = RetryPolicy(max_attempts=2, base_delay_s=0.05, max_delay_s=0.2, deadline_s=10)


def batch_client(endpoint: BatchEndpoint) -> BatchClient:
    credential = AzureNamedKeyCredential(endpoint.account_name, endpoint.account_key)
    return BatchClient(endpoint.endpoint, credential, **SDK_RETRY_KWARGS)


async def add_one(batch: BatchClient, job_id: str, *, resumed: bool) -> None:
    async with ended_job_is_resumable(batch, job_id, FAST, resumed=resumed):
        await submit_tasks(
            batch,
            job_id,
            [BatchTaskCreateOptions(id="t000000-g1", command_line="true")],
            concurrency=1,
            retry=FAST,
        )


async def test_adds_refused_by_a_job_that_ended_are_a_resumable_stop_for_a_resume(
    batch_emulator: BatchEndpoint,
) -> None:
    job_id = f"topn-ended-{uuid.uuid4().hex[:8]}"
    async with batch_client(batch_emulator) as batch:
        # Set to end with its tasks, and holding none: it completes at once (AllTasksComplete).
        await batch.create_job(
            BatchJobCreateOptions(
                id=job_id,
                pool_info=BatchPoolInfo(pool_id="no-such-pool"),
                all_tasks_complete_mode="terminatejob",
            )
        )
        with pytest.raises(JobEndedError, match=f"job {job_id} ended"):
            await add_one(batch, job_id, resumed=True)
        with pytest.raises(RunFailedError, match="JobCompleted") as not_resumed:
            await add_one(batch, job_id, resumed=False)  # a first run's job cannot have ended so
        assert not isinstance(not_resumed.value, JobEndedError)
        await batch.begin_delete_job(job_id)


async def test_a_refused_task_in_a_running_job_stays_a_failure(batch_emulator: BatchEndpoint) -> None:
    job_id = f"topn-open-{uuid.uuid4().hex[:8]}"
    async with batch_client(batch_emulator) as batch:
        await batch.create_job(
            BatchJobCreateOptions(id=job_id, pool_info=BatchPoolInfo(pool_id="no-such-pool"))
        )
        await add_one(batch, job_id, resumed=True)  # an open job takes it: nothing raised
        with pytest.raises(RunFailedError) as refused:
            async with ended_job_is_resumable(batch, job_id, FAST, resumed=True):
                raise RunFailedError("the Batch service refused task t000001 of job: InvalidPropertyValue")
        assert not isinstance(refused.value, JobEndedError)
        await batch.begin_delete_job(job_id)
