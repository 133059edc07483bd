"""A resumed run's tasks must not carry a SAS that ends before its deadline (docs/journal.md).

Unstarted tasks whose SAS would expire are re-issued with fresh SAS under their next generation's id
(naming.task_generation_id), and the old ones deleted once the new ones are in; started ones keep
theirs; the journal maps each work unit to its generation and keeps the oldest SAS a task still carries.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio
import structlog
from azure.batch.aio import BatchClient
from azure.batch.models import BatchJobConstraints, BatchTask
from azure.core.exceptions import ResourceNotFoundError

from orchestrator import naming
from orchestrator.azure import monitor
from orchestrator.azure.retry import RetryPolicy, retry_call
from orchestrator.azure.staging import SasMinter
from orchestrator.azure.states import TaskState, job_state, task_state
from orchestrator.errors import JobEndedError, RunFailedError
from orchestrator.run import resume
from orchestrator.run.context import RunContext

log = structlog.get_logger()


async def record_sas_expiries(run: RunContext, minter: SasMinter) -> None:
    """Journal when the SAS this run's tasks carry end (a later resume compares them with its deadline)."""
    if run.journal is not None:
        for purpose in resume.sas_purposes(run.inputs):
            await run.journal.record_sas_expiry(run.run_id, purpose, minter.expires_at)


@dataclass(frozen=True)
class Renewal:
    """What a resume does about tasks whose SAS end before its deadline, or that Storage failed."""

    to_add: tuple[str, ...] = ()  # work units whose task goes in (again) with fresh SAS
    superseded: tuple[str, ...] = ()  # Batch ids of the tasks they replace: deleted once those are in
    old_sas_left: bool = False  # whether tasks with the old SAS stay in the job (started ones)
    completed_in_job: int = 0  # completed tasks of the job that the run does not await (any more)


async def listed_tasks(run: RunContext) -> dict[str, BatchTask]:
    """The run's current job's tasks by Batch id: id, state and how they ended (one page per 1000)."""

    async def listing() -> dict[str, BatchTask]:
        found = run.batch.list_tasks(run.job_id, select=["id", "state", "executionInfo"])
        return {str(task.id): task async for task in found}

    return await retry_call(run.retry, "list_tasks", listing)


def failed_by_infrastructure(
    run: RunContext, awaited: Sequence[str], tasks: dict[str, BatchTask]
) -> list[str]:
    """The awaited units whose task in the job completed failed by Storage (a download or an upload)."""
    failed = []
    for task_id in awaited:
        task = tasks.get(run.batch_task_id(task_id))
        if task is None or task_state(task) != TaskState.COMPLETED:
            continue
        outcome = monitor.outcome_of(task)
        recorded = {
            "status": "succeeded" if outcome.succeeded else "failed",
            "exit_code": outcome.exit_code,
            "failure_code": outcome.failure_code,
        }
        if resume.failed_by_infrastructure(recorded):
            failed.append(task_id)
    return failed


async def renew_expiring_tasks(run: RunContext, deadline_at: datetime) -> Renewal:
    """A resumed run's awaited tasks: re-issue the unstarted ones whose SAS end before its deadline,
    and the ones Storage failed while topn was down; add again the ones missing from the job.

    One listing of the job's tasks (id, state, how they ended) shows which are active, started,
    completed (and why) or missing. An active task with stale SAS is re-issued under its next
    generation's id (journalled first), and the old one is deleted only after the new one is in: the
    job, set to end when all its tasks are complete, never runs out of unfinished tasks, and a deleted
    task that lingers cannot swallow its replacement. A task that failed because a resource file could
    not be downloaded or an output uploaded is re-issued the same way (it is completed: nothing to
    delete), so the outage costs a second attempt, not the file (docs/journal.md).
    """
    assert run.resume is not None
    record = run.resume
    awaited = [task_id for task_id in run.task_ids if task_id not in record.completed]
    submitted_before = set(record.submitted_task_ids)
    if not awaited:
        return Renewal()
    tasks = await listed_tasks(run)
    states = {batch_id: task_state(task) for batch_id, task in tasks.items()}
    current = {
        task_id: states[run.batch_task_id(task_id)]
        for task_id in awaited
        if run.batch_task_id(task_id) in states
    }
    stale = resume.sas_expire_before(record.sas_expiries, deadline_at, resume.sas_purposes(run.inputs))
    plan = resume.plan_sas_refresh(awaited, current)
    if not stale:  # the SAS outlive the deadline: only missing tasks go in again
        plan = resume.SasRefreshPlan((), plan.add, ())
    retried = failed_by_infrastructure(run, awaited, tasks)
    superseded = [run.batch_task_id(task_id) for task_id in plan.replace]
    for task_id in plan.add:
        # Journalled as re-issued but never added (a crash in between): its predecessor may still wait.
        generation = run.generations.get(task_id, 0)
        if generation > 0:
            previous = naming.task_generation_id(task_id, generation - 1)
            if states.get(previous) == TaskState.ACTIVE:
                superseded.append(previous)
    reissued = {task_id: run.generations.get(task_id, 0) + 1 for task_id in (*plan.replace, *retried)}
    if run.journal is not None:
        # Before the add: a crash after it must find the new ids, or the run would await the old ones.
        await run.journal.record_task_generations(run.run_id, reissued)
    run.generations.update(reissued)
    missing = len([task_id for task_id in plan.add if task_id in submitted_before])
    # Said only when a task of the job is concerned: a successor job's first adds re-issue nothing.
    if stale and (plan.replace or missing or plan.kept_started):
        log.info(
            "tasks.resubmitted",
            job_id=run.job_id,
            tasks=len(plan.replace),
            missing=missing,
            running_kept=len(plan.kept_started),
            reason="sas_expiring",
        )
    if retried:
        log.info("tasks.retried", tasks=len(retried), reason="infrastructure", from_state=None)
    to_add = (*plan.replace, *plan.add, *retried)
    # Tasks left with the old SAS: the started ones when those were stale, else every one not re-added.
    old_sas_left = bool(plan.kept_started) if stale else bool(set(awaited) & submitted_before - set(to_add))
    awaited_ids = {run.batch_task_id(task_id) for task_id in awaited}
    completed = [batch_id for batch_id, state in states.items() if state == TaskState.COMPLETED]
    completed_in_job = len(set(completed) - awaited_ids)
    return Renewal(to_add, tuple(superseded), old_sas_left, completed_in_job)


async def delete_superseded(run: RunContext, batch_task_ids: Sequence[str]) -> None:
    """Delete the tasks a resume re-issued, now that their replacements are in the job."""
    limiter = anyio.CapacityLimiter(run.settings.run.submit_concurrency)
    async with anyio.create_task_group() as group:
        for batch_task_id in batch_task_ids:
            group.start_soon(_delete_task, run, batch_task_id, limiter)


async def _delete_task(run: RunContext, task_id: str, limiter: anyio.CapacityLimiter) -> None:
    async with limiter:
        with contextlib.suppress(ResourceNotFoundError):  # gone already: nothing left to do
            await retry_call(run.retry, "delete_task", lambda: run.batch.delete_task(run.job_id, task_id))


@asynccontextmanager
async def ended_job_is_resumable(
    batch: BatchClient, job_id: str, retry: RetryPolicy, *, resumed: bool
) -> AsyncIterator[None]:
    """A resume adding tasks to a job that ended meanwhile (its other tasks all finished): resumable.

    The listing that decided what to re-issue saw the job running; when its last tasks finish before
    the adds, the job ends and refuses them. The next resume goes on in a successor job.
    """
    try:
        yield
    except RunFailedError:
        if not resumed:
            raise
        job = await retry_call(retry, "get_job", lambda: batch.get_job(job_id, select=["id", "state"]))
        if job_state(job).runs_tasks:
            raise
        raise JobEndedError(
            f"job {job_id} ended (its other tasks all finished) while this resume was adding tasks to "
            "it; a resume goes on in a new job"
        ) from None


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
