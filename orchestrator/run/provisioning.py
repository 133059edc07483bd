"""Provisioning, half of PREPARING: the pool from the keeper → the run's job → usable nodes.

The run never creates, changes or deletes the pool: the process's pool keeper does (and stages the
node script its start task brings). The job is created while the nodes boot, so tasks can queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

from azure.batch.models import BatchJobConstraints, BatchJobCreateOptions, BatchPoolInfo
from azure.core.exceptions import ResourceExistsError

from orchestrator.azure import quota
from orchestrator.azure.retry import error_code_of, retry_call
from orchestrator.errors import RunFailedError
from orchestrator.run.context import RunContext, RunLedger
from orchestrator.settings import RunSettings


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


async def _create_job(run: RunContext, ledger: RunLedger, pool_id: str) -> None:
    job = job_create_options(run.settings.run, run.job_id, pool_id)
    # JobExists means a resumed run: the job is ours (its id holds our run id).
    try:
        await retry_call(run.retry, "create_job", lambda: run.batch.create_job(job))
        ledger.job_is_new = True
    except ResourceExistsError as error:
        code = error_code_of(error)
        conflict = quota.classify_conflict(code)
        if conflict == quota.Conflict.QUOTA and code is not None:
            raise quota.account_quota_error(
                code,
                run.settings.batch.account_name,
                advice="Terminate or delete jobs you no longer need (topn deletes its own with "
                "[run] delete_job = true)",
            ) from None
        if conflict != quota.Conflict.EXISTS:
            raise RunFailedError(
                f"cannot create job {run.job_id}: {code} (409): {error.message}; wait until the old job "
                "is gone, or run again"
            ) from None
        ledger.job_is_new = False
    ledger.job_created = True
