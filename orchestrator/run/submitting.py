"""SUBMITTING: add the tasks not yet in the job, then let the job end once they have all finished."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta

import structlog
from azure.batch.models import (
    AutoUserSpecification,
    BatchJobUpdateOptions,
    BatchTaskConstraints,
    BatchTaskCreateOptions,
    EnvironmentSetting,
    ResourceFile,
    UserIdentity,
)
from azure.core.exceptions import HttpResponseError

from orchestrator import naming
from orchestrator.azure import submit
from orchestrator.azure.retry import error_code_of, retry_call
from orchestrator.run import renewal
from orchestrator.run.context import RunContext, RunLedger
from orchestrator.run.preparing import Prepared
from orchestrator.run.resume import unsubmitted_task_ids

log = structlog.get_logger()

# A job that ended (or is ending) on its own once every task was added and finished.
JOB_ENDED_CODES = frozenset({"JobCompleted", "JobBeingTerminated"})


async def submit_run_tasks(
    run: RunContext, ledger: RunLedger, prepared: Prepared, deadline_at: datetime
) -> None:
    """Add the tasks not yet recorded as added (all, unless resumed), then let the job end with them."""
    started = time.monotonic()
    unsubmitted = set(run.task_ids)
    old_sas_left = False
    superseded: tuple[str, ...] = ()
    if run.resume is not None:
        # A job that had to be created again (deleted, or a Batch account that forgot it) holds
        # none of the tasks the journal saw added: every unfinished one goes in again.
        recorded = unsubmitted_task_ids(run.resume) if not ledger.job_is_new else run.task_ids
        unsubmitted = set(recorded) - set(run.resume.completed)
        if not ledger.job_is_new:
            renewed = await renewal.renew_expiring_tasks(run, deadline_at)
            unsubmitted |= set(renewed.to_add)
            superseded, old_sas_left = renewed.superseded, renewed.old_sas_left
            ledger.completed_in_job = renewed.completed_in_job
    tasks = [
        task_of_unit(run, prepared, unit_index, unit)
        for unit_index, unit in enumerate(run.units)
        if run.task_ids[unit_index] in unsubmitted
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
        tasks=report.tasks_added,
        requests=report.requests,
        duration_s=duration,
    )


def task_of_unit(
    run: RunContext, prepared: Prepared, unit_index: int, unit: Sequence[int]
) -> BatchTaskCreateOptions:
    """The task of one work unit: its inputs as resource files under safe names, one command."""
    minter = prepared.minter
    settings = run.settings.run
    staged = [prepared.staged[index] for index in unit]
    files = [(naming.node_input_path(item.index, item.relpath), item.relpath) for item in staged]
    # An input that could not be uploaded has no blob: a resource file for it would fail the whole
    # task before it starts, so the node is given the name alone and fails only that file.
    resource_files = [
        ResourceFile(http_url=minter.blob_read_url(run.input_container, item.blob_name), file_path=node_input)
        for item, (node_input, _) in zip(staged, files, strict=True)
        if item.unreadable is None
    ]
    script = naming.NODE_SCRIPT_PATH
    if prepared.task_script_url is not None:
        resource_files.append(
            ResourceFile(http_url=prepared.task_script_url, file_path=naming.TASK_NODE_SCRIPT_PATH)
        )
        script = naming.TASK_NODE_SCRIPT_PATH
    return BatchTaskCreateOptions(
        id=run.batch_task_id(run.task_ids[unit_index]),
        command_line=naming.task_command_line(
            files,
            top=settings.top,
            tokenizer=settings.tokenizer,
            python=run.settings.pool.node_python,
            script=script,
        ),
        resource_files=resource_files,
        environment_settings=[
            EnvironmentSetting(
                name=naming.OUTPUT_SAS_VARIABLE, value=minter.container_write_url(run.output_container)
            )
        ],
        constraints=BatchTaskConstraints(
            max_wall_clock_time=timedelta(seconds=settings.task_max_wall_clock_s),
            max_task_retry_count=settings.task_max_retries,
        ),
        user_identity=UserIdentity(auto_user=AutoUserSpecification(scope="pool", elevation_level="nonadmin")),
    )
