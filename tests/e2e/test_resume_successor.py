"""A run whose job ended under it while topn was down goes on in a successor job on resume.

The job's wall clock (`maxWallClockTime` = the first run's `run_timeout_s`, 10 s) runs out while the
run's tasks wait for the pool's only slot: the emulator, like the service, terminates the job
(`MaxWallClockTimeExpiry`), and its tasks will never run. `topn resume` journals the unfinished work
units as `topn-<run_id>-j2`'s, says why (`job.superseded`), creates that job and adds them with fresh
SAS; the old job is left for clean-up. A kill right after that decision resumes to the same job.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.fault_support import check_summary, job_tasks
from tests.e2e.held_back import FILES, held_back_run, sas_expiry_of
from tests.e2e.test_crash_resume import crash_environment, load_record, run_until
from tests.e2e.test_resume import event_named, wait_for_job_state

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(240)]


async def test_a_job_ended_by_its_wall_clock_is_followed_by_a_successor_job_even_across_a_kill(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = batch_emulator
    async with held_back_run(batch, azurite, tmp_path, seed=59) as held:
        run_id, before = held.run_id, held.before
        first_job, successor = f"topn-{run_id}", f"topn-{run_id}-j2"
        await wait_for_job_state(batch, first_job, "completed")
        normal = crash_environment(batch, azurite, tmp_path, TOPN_POOL_ID=held.pool_id)
        resume_started = datetime.now(UTC)
        # Killed right after the successor is journalled (the event follows the journal write).
        cut, killed = await run_until(
            ["resume", run_id, "--json"], tmp_path, normal, event_named("job.superseded")
        )
        assert killed and cut.exit_code == -9, cut.stderr[-3000:]
        (superseded,) = [event for event in cut.events() if event["event"] == "job.superseded"]
        assert superseded["job_id"] == first_job and superseded["successor_job_id"] == successor
        assert (superseded["reason"], superseded["tasks"]) == ("MaxWallClockTimeExpiry", FILES)
        moved = await load_record(tmp_path / ".topn", run_id)
        assert dict(moved.task_jobs) == dict.fromkeys(before.task_ids, 2) and moved.job_number == 2
        # None of them is in the successor yet as far as the journal knows: all are added there.
        assert moved.submitted_task_ids == frozenset()

        final, _ = await run_until(
            ["resume", run_id, "--json"], tmp_path, normal, None, on_event=held.release_once_submitted
        )
        status, _ = await run_until(["status", run_id, "--json"], tmp_path, normal, None)
    assert final.exit_code == 0, final.stderr[-3000:]
    assert check_summary(final.summary(), held.texts) == []
    names = [event["event"] for event in final.events()]
    # The successor is the journalled one: no second decision, no third job, no same-job renewal.
    assert "job.superseded" not in names and "tasks.resubmitted" not in names

    credential = AzureNamedKeyCredential(batch.account_name, batch.account_key)
    async with BatchClient(batch.endpoint, credential) as client:
        old = await client.get_job(first_job)
        assert old.execution_info is not None
        assert old.execution_info.termination_reason == "MaxWallClockTimeExpiry"
        jobs = [job.id async for job in client.list_jobs() if str(job.id).startswith(first_job)]
    assert sorted(jobs) == [first_job, successor]
    # The old job's tasks never ran; each work unit ran once, in the successor, with fresh SAS.
    old_tasks = await job_tasks(batch.endpoint, batch.account_name, batch.account_key, first_job)
    assert {task.state for task in old_tasks} == {"active"}
    tasks = await job_tasks(batch.endpoint, batch.account_name, batch.account_key, successor)
    assert sorted(task.id for task in tasks) == sorted(before.task_ids)
    assert {(task.state, task.execution_info.result) for task in tasks} == {("completed", "success")}
    assert [task.execution_info.retry_count for task in tasks] == [0] * FILES
    for task in tasks:
        urls = [resource.http_url for resource in task.resource_files]
        urls += [setting.value for setting in task.environment_settings if "sig=" in setting.value]
        assert len(urls) >= 2 and all(sas_expiry_of(url) > resume_started for url in urls), task.id

    after = await load_record(tmp_path / ".topn", run_id)
    assert after.state == "SUCCEEDED" and after.job_number == 2
    assert after.submitted_task_ids == set(before.task_ids)
    assert all(expiry > resume_started for expiry in after.sas_expiries.values())
    described = json.loads(status.stdout)
    assert described["job"]["job_id"] == successor and described["job"]["state"] == "completed"
