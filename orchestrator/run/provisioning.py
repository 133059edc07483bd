"""Provisioning, half of PREPARING: the pool from the keeper → the run's job → usable nodes.

The run never creates, changes or deletes the pool: the process's pool keeper does (and stages the
node script its start task brings). The job is created while the nodes boot, so tasks can queue.
A resumed run with no work unit left to run needs none of it: it only collects and cleans up.
A resumed run's job (a successor, or one created again) that meets the account's active-jobs quota
waits for a job to end, within the run's deadline (`job.quota_wait`), as the daemon's admission does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

import anyio
import structlog
from azure.batch.models import BatchJobConstraints, BatchJobCreateOptions, BatchPoolInfo
from azure.core.exceptions import ResourceExistsError

from orchestrator.azure import quota
from orchestrator.azure.retry import error_code_of, retry_call
from orchestrator.azure.states import job_state
from orchestrator.errors import RunFailedError
from orchestrator.run import renewal, resume
from orchestrator.run.context import RunContext, RunLedger
from orchestrator.settings import RunSettings

log = structlog.get_logger()


async def provision(
    run: RunContext,
    ledger: RunLedger,
    needed_until: datetime,
    on_job_ready: Callable[[str | None], None] | None = None,
) -> str | None:
    """The pool's handle, this run's job, a usable node.

    `needed_until` is when the run's SAS end: a node that joins or reboots until then runs the start
    task. Returns the node script's URL when each task must bring it along, else None;
    `on_job_ready` hears the same as soon as the job exists (tasks may be added from then on).
    """
    started = time.monotonic()
    if run.resume is not None and not resume.units_to_run(run.resume) and not run.still_listing:
        # Every unit has its outcome: no pool, no job (an empty successor would never end), no node.
        ledger.stage_s["provisioning"] = 0.0
        return None
    handle = await run.pool.ensure(needed_until)
    await _create_job(run, ledger, handle.pool_id)  # tasks may queue while the nodes boot
    if on_job_ready is not None:
        on_job_ready(handle.task_script_url)
    await run.pool.wait_usable()
    ledger.stage_s["provisioning"] = round(time.monotonic() - started, 3)
    return handle.task_script_url


def job_create_options(settings: RunSettings, job_id: str, pool_id: str) -> BatchJobCreateOptions:
    """A run's job as created (also by the daemon, which creates it first to wait out the job quota)."""
    return BatchJobCreateOptions(
        id=job_id,
        pool_info=BatchPoolInfo(pool_id=pool_id),
        # noaction until every task is added: a job with zero tasks counts as complete.
        all_tasks_complete_mode="noaction",
        constraints=BatchJobConstraints(
            max_wall_clock_time=timedelta(seconds=settings.run_timeout_s),
            max_task_retry_count=settings.task_max_retries,
        ),
    )


# Bounds the successor loop: each pass journals a new job; only jobs ending as fast as they are made loop.
MAX_SUCCESSORS_PER_RESUME = 5


async def _create_job(run: RunContext, ledger: RunLedger, pool_id: str) -> None:
    """The run's current job, created or found usable; a resume whose job ended goes on in a successor."""
    moved = False
    for _ in range(MAX_SUCCESSORS_PER_RESUME + 1):
        ended = await _create_or_find_job(run, ledger, pool_id)
        if ended is None:
            # A successor made now holds none of the tasks the journal saw added: all go in.
            ledger.job_is_new = ledger.job_is_new or moved
            ledger.job_created = True
            return
        if run.resume is None:
            raise RunFailedError(f"cannot create job {run.job_id}: it exists already and has ended ({ended})")
        await _move_to_successor(run, ended)
        moved = True
    raise RunFailedError(
        f"job {run.job_id} ended ({ended}) as soon as it was made, {MAX_SUCCESSORS_PER_RESUME} times "
        "in a row; check its constraints and who ends the run's jobs, then resume again"
    )


async def _create_or_find_job(run: RunContext, ledger: RunLedger, pool_id: str) -> str | None:
    """Create the current job; None when it is usable (new, or ours and still running), else why it ended."""
    job = job_create_options(run.settings.run, run.job_id, pool_id)
    # JobExists means a resumed run: the job is ours (its id holds our run id).
    refusals = 0
    while True:
        try:
            await retry_call(run.retry, "create_job", lambda: run.batch.create_job(job))
            ledger.job_is_new = True
            return None
        except ResourceExistsError as error:
            code = error_code_of(error)
            if code == quota.ACTIVE_JOBS_QUOTA_CODE and _waits_out_job_quota(run):
                refusals += 1
                await _wait_out_job_quota(run, refusals)
                continue
            conflict = quota.classify_conflict(code)
            if conflict == quota.Conflict.EXISTS:
                break
            if conflict == quota.Conflict.QUOTA and code is not None:
                raise quota.account_quota_error(
                    code,
                    run.settings.batch.account_name,
                    advice="Terminate or delete jobs you no longer need (topn deletes its own with "
                    "[run] delete_job = true)",
                ) from None
            if conflict == quota.Conflict.BEING_DELETED and run.resume is not None:
                return code
            raise RunFailedError(
                f"cannot create job {run.job_id}: {code} (409): {error.message}; wait until the old job "
                "is gone, or run again"
            ) from None
    ledger.job_is_new = False
    if run.resume is None:
        return None  # created just before by this process (the daemon admits a batch by its job)
    found = await retry_call(
        run.retry, "get_job", lambda: run.batch.get_job(run.job_id, select=["id", "state", "executionInfo"])
    )
    state = job_state(found)
    reason = found.execution_info.termination_reason if found.execution_info is not None else None
    # One that ended with its tasks takes no new one: are there any to add (to run again)?
    to_add = reason == resume.ENDED_WITH_ITS_TASKS and await _tasks_to_add(run)
    return resume.job_end_reason(state, reason, tasks_to_add=to_add)


def _waits_out_job_quota(run: RunContext) -> bool:
    """Whether the active-jobs quota is waited out: for a run under way (resumed), or when someone listens.

    A new `topn run` stops at once with exit 2 naming the quota (nothing of it runs yet); a resumed
    run (a successor job, or its job created again) would otherwise be stranded half done, and the
    daemon waits for every batch.
    """
    return run.resume is not None or run.on_quota_wait is not None


async def _wait_out_job_quota(run: RunContext, refusals: int) -> None:
    """One doubling wait (capped by `[daemon] quota_backoff_max_s`) before the job is asked for again.

    The run's deadline (`fail_after` around PREPARING) bounds the whole wait: past it the run stops
    resumable (exit 1), never failed.
    """
    wait_s = quota.quota_backoff_s(refusals, run.settings.daemon.quota_backoff_max_s)
    log.info(
        "job.quota_wait",
        job_id=run.job_id,
        refusals=refusals,
        wait_s=wait_s,
        note="the Batch account's active-jobs quota is full; the job is asked for again once another "
        "job ends (within the run's deadline)",
    )
    if run.on_quota_wait is not None:
        run.on_quota_wait(refusals, wait_s)
    await anyio.sleep(wait_s)


async def _tasks_to_add(run: RunContext) -> bool:
    """Whether a resumed run has tasks to add: unsubmitted ones, or ones Storage failed (one listing)."""
    assert run.resume is not None
    record = run.resume
    if any(task_id not in record.completed for task_id in resume.unsubmitted_task_ids(record)):
        return True
    awaited = [task_id for task_id in run.task_ids if task_id not in record.completed]
    if not awaited:
        return False
    failed = renewal.failed_by_infrastructure(run, awaited, await renewal.listed_tasks(run))
    if failed:  # they go on in the successor with every other unfinished unit
        log.info("tasks.retried", tasks=len(failed), reason="infrastructure", from_state=None)
    return bool(failed)


async def _move_to_successor(run: RunContext, reason: str) -> None:
    """Journal the run's unfinished units as the next job's, before that job is created (kill-safe)."""
    assert run.resume is not None
    previous, number = run.job_id, run.jobs.number + 1
    units = resume.units_for_successor(run.resume, run.task_ids)
    if run.journal is not None:
        await run.journal.record_successor_job(run.run_id, number, units)
    run.jobs.move(number, units)
    log.warning(
        "job.superseded",
        job_id=previous,
        successor_job_id=run.job_id,
        reason=reason,
        tasks=len(units),
        note="the job ended under the run; its unfinished tasks go on in a new job (the old one is left "
        "for clean-up)",
    )
