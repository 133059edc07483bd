"""A job's onAllTasksComplete can be changed by PATCH and PUT, but not from terminatejob back to noaction."""

from __future__ import annotations

import uuid

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from tests.conftest import BatchEndpoint
from tests.integration.emulator.conftest import batch_client

pytestmark = pytest.mark.asyncio(loop_scope="session")

TERMINATE = models.BatchAllTasksCompleteMode.TERMINATE_JOB
NO_ACTION = models.BatchAllTasksCompleteMode.NO_ACTION


async def test_terminatejob_cannot_go_back_to_noaction(batch_emulator: BatchEndpoint) -> None:
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    async with batch_client(batch_emulator) as client:
        await client.create_job(
            models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id="no-such-pool"))
        )
        # A task that never runs (its pool does not exist) keeps the job active after the change.
        await client.create_task(job_id, models.BatchTaskCreateOptions(id="waits", command_line="/bin/true"))
        await client.update_job(job_id, models.BatchJobUpdateOptions(all_tasks_complete_mode=TERMINATE))
        assert (await client.get_job(job_id)).all_tasks_complete_mode == TERMINATE

        with pytest.raises(HttpResponseError) as patched:
            await client.update_job(job_id, models.BatchJobUpdateOptions(all_tasks_complete_mode=NO_ACTION))
        with pytest.raises(HttpResponseError) as replaced:
            # A PUT that leaves the property out would reset it to noaction: refused as well.
            await client.replace_job(
                job_id, models.BatchJob(pool_info=models.BatchPoolInfo(pool_id="no-such-pool"))
            )
        for refused in (patched, replaced):
            assert refused.value.status_code == 400
            assert refused.value.error is not None and refused.value.error.code == "InvalidPropertyValue"
            details = {detail.code: detail.message for detail in refused.value.error.details}
            assert details["PropertyName"] == "onAllTasksComplete"
        job = await client.get_job(job_id)
        assert (job.all_tasks_complete_mode, job.state) == (TERMINATE, models.BatchJobState.ACTIVE)

        # Other changes, and keeping terminatejob, still work.
        await client.update_job(
            job_id, models.BatchJobUpdateOptions(priority=5, all_tasks_complete_mode=TERMINATE)
        )
        assert (await client.get_job(job_id)).priority == 5
        await (await client.begin_delete_job(job_id, polling_interval=0.1)).result()
