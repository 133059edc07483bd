"""SUBMITTING: add the tasks not yet in the job, then let the job end once they have all finished."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

import structlog
from azure.batch.models import BatchJobUpdateOptions
from azure.core.exceptions import HttpResponseError

from orchestrator.azure import submit
from orchestrator.azure.retry import error_code_of, retry_call
from orchestrator.run import renewal
from orchestrator.run.context import RunContext, RunLedger
from orchestrator.run.preparing import Prepared
from orchestrator.run.resume import units_to_run, unsubmitted_task_ids
from orchestrator.run.unit_tasks import stage_manifests, task_of_unit

log = structlog.get_logger()

# A job that ended (or is ending) on its own once every task was added and finished.
JOB_ENDED_CODES = frozenset({"JobCompleted", "JobBeingTerminated"})


async def submit_run_tasks(
    run: RunContext, ledger: RunLedger, prepared: Prepared, deadline_at: datetime
) -> None:
    """Add the tasks not yet recorded as added (all, unless resumed), then let the job end with them."""
    listed_now = run.task_ids[len(run.resume.task_ids) :] if run.resume is not None else []
    if run.resume is not None and not units_to_run(run.resume) and not listed_now:
        # Every unit has its outcome, so the job was switched to `terminatejob` before (outcomes are
        # recorded only once the monitor runs, after that switch): nothing to add, no job to touch.
        ledger.stage_s["submitting"] = 0.0
        return
    started = time.monotonic()
    unsubmitted = set(run.task_ids) - prepared.added_early  # added while the inputs were staged
    old_sas_left = False
    superseded: tuple[str, ...] = ()
    if run.resume is not None:
        # A job that had to be created again (deleted, or a Batch account that forgot it) holds
        # none of the tasks the journal saw added: every unfinished one goes in again.
        recorded = unsubmitted_task_ids(run.resume) if not ledger.job_is_new else run.task_ids
        # Units of pages this resume listed are new to the job whatever it holds.
        unsubmitted = (set(recorded) - set(run.resume.completed)) | set(listed_now)
        if not ledger.job_is_new:
            renewed = await renewal.renew_expiring_tasks(run, deadline_at)
            unsubmitted |= set(renewed.to_add)
            superseded, old_sas_left = renewed.superseded, renewed.old_sas_left
            ledger.completed_in_job = renewed.completed_in_job
    to_add = [unit_index for unit_index in range(len(run.units)) if run.task_ids[unit_index] in unsubmitted]
    await stage_manifests(
        run,
        prepared.minter,
        [(unit, [prepared.staged[index] for index in run.units[unit]]) for unit in to_add],
    )
    tasks = [
        task_of_unit(run, prepared.minter, prepared.task_script_url, unit_index) for unit_index in to_add
    ]

    async def added(task_ids: Sequence[str]) -> None:
        if run.journal is not None:
            await run.journal.record_tasks_submitted(
                run.run_id, [run.unit_task_id(item) for item in task_ids]
            )
        log.debug("tasks.chunk_added", job_id=run.job_id, tasks=len(task_ids))

    resumed = run.resume is not None
    async with renewal.ended_job_is_resumable(run.batch, run.job_id, run.retry, resumed=resumed):
        report = await submit.submit_tasks(
            run.batch,
            run.job_id,
            tasks,
            concurrency=run.settings.run.submit_concurrency,
            retry=run.retry,
            on_chunk_added=added,
            max_tasks_per_request=run.settings.run.submit_chunk_tasks,
        )
    if superseded:
        # Only now that their replacements are in: the job never runs out of unfinished tasks.
        await renewal.delete_superseded(run, superseded)
    update = BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob")
    if run.resume is not None and not ledger.job_is_new:
        update.constraints = renewal.resumed_job_constraints(run, deadline_at)
    try:
        await retry_call(run.retry, "update_job", lambda: run.batch.update_job(run.job_id, update))
    except HttpResponseError as error:
        # A resumed run whose tasks all finished while topn was down: the job ended on its own.
        if error_code_of(error) not in JOB_ENDED_CODES or tasks:
            raise
    if run.resume is not None and not old_sas_left and not report.already_existed:
        # Every task this run awaits carries this run's SAS now (TaskExists would mean an older one).
        await renewal.record_sas_expiries(run, prepared.minter)
    duration = round(time.monotonic() - started, 3)
    ledger.stage_s["submitting"] = duration
    log.info(
        "tasks.submitted",
        job_id=run.job_id,
        tasks=report.tasks_added + len(prepared.added_early),
        first_task_s=ledger.first_task_s,
        requests=report.requests,
        duration_s=duration,
    )
