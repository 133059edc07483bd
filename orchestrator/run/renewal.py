"""A resumed run's tasks must not carry a SAS that ends before its deadline (docs/journal.md).

Unstarted tasks whose SAS would expire are deleted and added again (same id, fresh SAS) by the
submitting stage; started ones keep theirs; the journal keeps the oldest SAS a task still carries.
"""

from __future__ import annotations

import contextlib
import math
from datetime import datetime, timedelta

import anyio
import structlog
from azure.batch.models import BatchJobConstraints, BatchJobUpdateOptions
from azure.core.exceptions import ResourceNotFoundError

from orchestrator.azure.retry import retry_call
from orchestrator.azure.staging import SasMinter
from orchestrator.azure.states import TaskState, task_state
from orchestrator.run import resume
from orchestrator.run.context import RunContext

log = structlog.get_logger()


async def record_sas_expiries(run: RunContext, minter: SasMinter) -> None:
    """Journal when the SAS this run's tasks carry end (a later resume compares them with its deadline)."""
    if run.journal is not None:
        for purpose in resume.SAS_PURPOSES:
            await run.journal.record_sas_expiry(run.run_id, purpose, minter.expires_at)


async def renew_expiring_tasks(run: RunContext, deadline_at: datetime) -> tuple[list[str], bool]:
    """A resumed run's tasks whose SAS end before its deadline: delete the unstarted ones, to add again.

    Returns (ids to add with fresh SAS, whether tasks with the old SAS stay in the job). Decided from
    the journal when it can be: SAS that outlive the deadline cost no request; otherwise one listing
    of the job's tasks (id and state only) shows which are active, started, or missing.
    """
    assert run.resume is not None
    record = run.resume
    awaited = [task_id for task_id in run.task_ids if task_id not in record.completed]
    submitted_before = set(record.submitted_task_ids)
    if not awaited:
        return [], False
    if not resume.sas_expire_before(record.sas_expiries, deadline_at):
        return [], any(task_id in submitted_before for task_id in awaited)

    async def listing() -> dict[str, TaskState]:
        found = run.batch.list_tasks(run.job_id, select=["id", "state"])
        return {str(task.id): task_state(task) async for task in found}

    states = await retry_call(run.retry, "list_tasks", listing)
    plan = resume.plan_sas_refresh(awaited, states)
    if plan.replace:
        # With `terminatejob` set, deleting the last unfinished tasks would end the job before they
        # are added again; the submitting stage sets it back once they are in.
        hold = BatchJobUpdateOptions(all_tasks_complete_mode="noaction")
        await retry_call(run.retry, "update_job", lambda: run.batch.update_job(run.job_id, hold))
    limiter = anyio.CapacityLimiter(run.settings.run.submit_concurrency)
    async with anyio.create_task_group() as group:
        for task_id in plan.replace:
            group.start_soon(_delete_task, run, task_id, limiter)
    log.info(
        "tasks.resubmitted",
        job_id=run.job_id,
        tasks=len(plan.replace),
        missing=len([task_id for task_id in plan.add if task_id in submitted_before]),
        running_kept=len(plan.kept_started),
        reason="sas_expiring",
    )
    return [*plan.replace, *plan.add], bool(plan.kept_started)


async def _delete_task(run: RunContext, task_id: str, limiter: anyio.CapacityLimiter) -> None:
    async with limiter:
        with contextlib.suppress(ResourceNotFoundError):  # gone already: it is added again all the same
            await retry_call(run.retry, "delete_task", lambda: run.batch.delete_task(run.job_id, task_id))


def resumed_job_constraints(run: RunContext, deadline_at: datetime) -> BatchJobConstraints:
    """The old job's constraints with a wall clock that lasts to this run's deadline.

    The job's `maxWallClockTime` counts from its creation and was set to the first run's
    `run_timeout_s`; the service would end a job resumed later than that under the run. The run
    was created before its job, so counting from the run's creation is a bound that lasts.
    """
    assert run.resume is not None
    lasting = deadline_at - run.resume.created_at
    return BatchJobConstraints(
        max_wall_clock_time=timedelta(seconds=math.ceil(lasting.total_seconds())),
        max_task_retry_count=run.settings.run.task_max_retries,
    )
