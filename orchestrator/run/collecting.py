"""RUNNING and COLLECTING: watch the job; save each file's results as soon as its task is seen finished."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import structlog
from azure.core.exceptions import HttpResponseError

from orchestrator import naming
from orchestrator.azure import collect, monitor, submit
from orchestrator.files import file_stat
from orchestrator.results import FileCounts, failure_details, file_entry, top_of
from orchestrator.run.context import FileResult, RunContext, RunLedger
from orchestrator.run.resume import failed_relpaths, file_error, outcome_succeeded

log = structlog.get_logger()


async def run_and_collect(
    run: RunContext, ledger: RunLedger, *, watch: bool, on_watched: Callable[[], Awaitable[None]]
) -> None:
    """Watch the job; download each success the moment it is seen; then wait for the last downloads.

    `watch` is False for a run resumed in COLLECTING (the job has nothing left to report);
    `on_watched` runs once no task is left to watch, while the last downloads may still be going.
    """
    started = time.monotonic()
    send, receive = anyio.create_memory_object_stream[monitor.TaskOutcome](max_buffer_size=len(run.task_ids))
    limiter = anyio.CapacityLimiter(run.settings.run.download_concurrency)
    total = len(run.task_ids)
    # A resumed run's recorded completions are final: neither awaited nor reported again.
    finished = dict(run.resume.completed) if run.resume is not None else {}
    awaited = [task_id for task_id in run.task_ids if task_id not in finished]

    def counts_moved(counts: monitor.Counts) -> None:
        if run.progress is not None:
            run.progress.update("running", counts.completed, total)

    async with anyio.create_task_group() as group:
        for task_id, recorded in finished.items():
            group.start_soon(_settle_recorded_task, run, ledger, task_id, recorded, limiter)
        if watch:
            group.start_soon(
                lambda: monitor.watch_job(
                    run.batch,
                    run.job_id,
                    [run.batch_task_id(task_id) for task_id in awaited],
                    send,
                    poll_min_s=run.settings.run.poll_min_s,
                    poll_max_s=run.settings.run.poll_max_s,
                    retry=run.retry,
                    on_counts=counts_moved,
                    # Completed tasks it does not await still count in the job's totals.
                    already_completed=0 if ledger.job_is_new else ledger.completed_in_job,
                )
            )
            async with receive:
                async for outcome in receive:
                    # The job knows a re-issued task by its generation's id; the run by its unit's.
                    unit_outcome = dataclasses.replace(outcome, task_id=run.unit_task_id(outcome.task_id))
                    group.start_soon(_handle_outcome, run, ledger, unit_outcome, limiter)
        ledger.stage_s["running"] = round(time.monotonic() - started, 3)
        collecting_started = time.monotonic()
        await on_watched()
    ledger.stage_s["collecting"] = round(time.monotonic() - collecting_started, 3)


async def _settle_recorded_task(
    run: RunContext,
    ledger: RunLedger,
    task_id: str,
    recorded: Mapping[str, Any],
    limiter: anyio.CapacityLimiter,
) -> None:
    """A task the journal saw finish: rebuild its files' results, collecting only what was not saved."""
    assert run.resume is not None
    record = run.resume
    outcome = monitor.TaskOutcome(
        task_id=task_id,
        succeeded=outcome_succeeded(recorded),
        exit_code=recorded.get("exit_code"),
        failure_code=recorded.get("failure_code"),
        failure_message=recorded.get("message"),
        node_id=None,
        duration_s=None,
    )
    failed = set(failed_relpaths(record))
    to_collect: list[int] = []
    for index in run.units[run.unit_by_task[task_id]]:
        relpath = run.inputs[index].relpath
        saved = record.downloads.get(relpath)
        if relpath in failed:
            details = file_error(record, relpath)
            ledger.results[index] = FileResult(
                file_entry(relpath, task_id=task_id, succeeded=False, error=details), succeeded=False
            )
        elif (
            saved is not None
            and (await anyio.to_thread.run_sync(file_stat, Path(saved.local_path)))[0] == saved.size_bytes
        ):
            # Saved already: its counts come from the counts blob, the file is not fetched again.
            counts = await collect.read_counts(run.blobs, run.output_container, relpath, run.retry)
            _add_success(run, ledger, index, task_id, counts)
        else:
            to_collect.append(index)
    if not to_collect:
        return
    tail = message = ""
    if not outcome.succeeded:
        tail = await collect.task_stderr_tail(
            run.batch, run.jobs.holding(task_id), run.batch_task_id(task_id), run.retry
        )
        message = outcome.failure_message or f"the task exited with code {outcome.exit_code}"
    async with anyio.create_task_group() as group:
        for index in to_collect:
            group.start_soon(_collect_file, run, ledger, index, outcome, limiter, message, tail)


async def _handle_outcome(
    run: RunContext, ledger: RunLedger, outcome: monitor.TaskOutcome, limiter: anyio.CapacityLimiter
) -> None:
    """Collect every file of a finished work unit (each download bounded by `limiter`)."""
    unit = run.units[run.unit_by_task[outcome.task_id]]
    if run.journal is not None:
        await run.journal.record_task_completed(
            run.run_id,
            outcome.task_id,
            {
                "status": "succeeded" if outcome.succeeded else "failed",
                "exit_code": outcome.exit_code,
                "failure_code": outcome.failure_code,
                "message": outcome.failure_message,
            },
        )
    tail = ""
    message = ""
    if not outcome.succeeded:
        tail = await collect.task_stderr_tail(
            run.batch, run.job_id, run.batch_task_id(outcome.task_id), run.retry
        )
        message = outcome.failure_message or f"the task exited with code {outcome.exit_code}"
        if len(unit) == 1:  # nothing to salvage: the node's only input failed
            await _record_failure(run, ledger, unit[0], outcome, message, tail)
            return
    async with anyio.create_task_group() as group:
        for index in unit:
            group.start_soon(_collect_file, run, ledger, index, outcome, limiter, message, tail)


async def _collect_file(
    run: RunContext,
    ledger: RunLedger,
    index: int,
    outcome: monitor.TaskOutcome,
    limiter: anyio.CapacityLimiter,
    message: str,
    tail: str,
) -> None:
    """One file of a finished unit: its outputs if the node wrote them, else a failure."""
    relpath = run.inputs[index].relpath
    if outcome.succeeded:
        log.info(
            "task.completed",
            task_id=outcome.task_id,
            file=relpath,
            exit_code=outcome.exit_code,
            duration_s=round(outcome.duration_s, 3) if outcome.duration_s is not None else None,
        )
    async with limiter:
        try:
            saved = await collect.download_outputs(
                run.blobs, run.output_container, relpath, run.out_dir, run.retry
            )
        except collect.OutputUnusableError as error:
            await _record_failure(run, ledger, index, outcome, message or str(error), tail)
            return
        except HttpResponseError as error:  # retries spent: this file fails, the run goes on
            reason = f"its outputs could not be downloaded: {submit.describe_http_error(error)}"
            await _record_failure(run, ledger, index, outcome, message or reason, tail)
            return
    _add_success(run, ledger, index, outcome.task_id, saved.counts)
    if run.journal is not None:
        await run.journal.record_output_downloaded(
            run.run_id, relpath, str(saved.local_path), saved.size_bytes
        )
    log.info(
        "output.downloaded",
        task_id=outcome.task_id,
        file=relpath,
        bytes=saved.size_bytes,
        invalid_bytes=saved.counts.invalid_bytes,
    )
    if run.progress is not None:
        run.progress.update("collecting", len(ledger.results), len(run.inputs))


def _add_success(run: RunContext, ledger: RunLedger, index: int, task_id: str, counts: FileCounts) -> None:
    relpath = run.inputs[index].relpath
    ledger.counts.add(index, counts.counts)
    ledger.results[index] = FileResult(
        file_entry(
            relpath,
            task_id=task_id,
            succeeded=True,
            top=top_of(counts.counts, run.settings.run.top),
            words=counts.words,
            invalid_bytes=counts.invalid_bytes,
            output=naming.output_name(relpath),
        ),
        succeeded=True,
    )


async def _record_failure(
    run: RunContext, ledger: RunLedger, index: int, outcome: monitor.TaskOutcome, message: str, tail: str
) -> None:
    relpath = run.inputs[index].relpath
    message = ledger.unreadable_inputs.get(index, message)  # the reason, not its consequence on the node
    details = failure_details(
        exit_code=outcome.exit_code, failure_code=outcome.failure_code, message=message, stderr_tail=tail
    )
    ledger.results[index] = FileResult(
        file_entry(relpath, task_id=outcome.task_id, succeeded=False, error=details), succeeded=False
    )
    if run.journal is not None:  # what a resumed run's summary entry is rebuilt from
        await run.journal.record_file_failed(run.run_id, relpath, details)
    log.warning(
        "task.failed",
        task_id=outcome.task_id,
        file=relpath,
        exit_code=outcome.exit_code,
        failure_code=outcome.failure_code,
        stderr_tail=tail,
    )
