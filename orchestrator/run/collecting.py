"""RUNNING and COLLECTING: watch the job; save a unit's results (one blob per task) as soon as it finishes."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import structlog
from azure.core.exceptions import HttpResponseError

from node.result import ResultFormatError, UnitResult, decode_result_blob
from orchestrator import naming
from orchestrator.azure import collect, monitor, submit
from orchestrator.files import file_stat
from orchestrator.results import FileCounts, failure_details, file_entry, top_of
from orchestrator.run import splitting, units
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
    """A task the journal saw finish: rebuild its files' results, saving only what was not saved."""
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
    unit = run.units[run.unit_by_task[task_id]]
    saved_already: set[int] = set()
    for index in unit:
        relpath = run.inputs[index].relpath
        saved = record.downloads.get(relpath)
        if relpath in failed:
            details = file_error(record, relpath)
            ledger.results[index] = FileResult.of(
                file_entry(relpath, task_id=task_id, succeeded=False, error=details)
            )
        elif (
            saved is not None
            and (await anyio.to_thread.run_sync(file_stat, Path(saved.local_path)))[0] == saved.size_bytes
        ):
            saved_already.add(index)  # its counts come from the result blob; the file is not written again
    if all(index in ledger.results for index in unit):
        return
    if task_id in run.unit_by_task and run.unit_by_task[task_id] in run.ranges:
        await _collect_range(run, ledger, outcome, limiter, saved_already=bool(saved_already))
        return
    await _collect_unit(run, ledger, outcome, limiter, saved_already=saved_already)


async def _handle_outcome(
    run: RunContext, ledger: RunLedger, outcome: monitor.TaskOutcome, limiter: anyio.CapacityLimiter
) -> None:
    """Collect a finished work unit: one result blob, every file's `_OUTPUT` rendered and saved here.

    The outcome is journalled first, at once: COLLECTING is recorded once no task is left to watch,
    and a run resumed from there collects exactly the completions the journal holds.
    """
    if run.journal is not None:
        await run.journal.record_task_completed(
            run.run_id,
            outcome.task_id,
            units.outcome_record(
                succeeded=outcome.succeeded,
                exit_code=outcome.exit_code,
                failure_code=outcome.failure_code,
                message=outcome.failure_message,
            ),
        )
    if run.unit_by_task[outcome.task_id] in run.ranges:
        await _collect_range(run, ledger, outcome, limiter, saved_already=False)
        return
    await _collect_unit(run, ledger, outcome, limiter, saved_already=set())


async def _collect_range(
    run: RunContext,
    ledger: RunLedger,
    outcome: monitor.TaskOutcome,
    limiter: anyio.CapacityLimiter,
    *,
    saved_already: bool,
) -> None:
    """A split input's range finished: once all have, its merged result is journalled and reported."""
    settled = await splitting.settle_range(run, ledger, outcome, limiter, saved_already=saved_already)
    if settled is None:
        return
    index = settled.index
    relpath = run.inputs[index].relpath
    # Summarised under its first range's task, as the journal records the input.
    as_input = dataclasses.replace(settled.outcome, task_id=splitting.first_range_task(run, index))
    if isinstance(settled, splitting.MergedInput):
        if settled.saved is None:  # saved by the run before a resume
            _add_success(run, ledger, index, as_input.task_id, settled.counts)
        else:
            if run.journal is not None:
                await run.journal.record_unit_collected(
                    run.run_id, None, saved=[(relpath, settled.saved, settled.size)]
                )
            _report_saved(run, ledger, as_input, index, settled.size, settled.counts)
    else:
        if run.journal is not None:
            await run.journal.record_unit_collected(run.run_id, None, failed=[(relpath, settled.details)])
        _report_failure(run, ledger, settled.outcome, index, settled.details)
    if run.progress is not None:
        run.progress.update("collecting", len(ledger.results), len(run.inputs))


async def _collect_unit(
    run: RunContext,
    ledger: RunLedger,
    outcome: monitor.TaskOutcome,
    limiter: anyio.CapacityLimiter,
    *,
    saved_already: set[int],
) -> None:
    """Read the unit's result blob, save the outputs not saved yet, journal the unit in one transaction."""
    unit_inputs = run.units[run.unit_by_task[outcome.task_id]]
    pending = {index for index in unit_inputs if index not in ledger.results}  # not failed in the journal
    message = tail = ""
    async with limiter:
        if not outcome.succeeded:
            tail = await collect.task_stderr_tail(
                run.batch, run.jobs.holding(outcome.task_id), run.batch_task_id(outcome.task_id), run.retry
            )
            message = outcome.failure_message or f"the task exited with code {outcome.exit_code}"
        result, problem = await _read_result(run, outcome)
    settled = units.settle_unit(result, [run.inputs[index].relpath for index in unit_inputs])
    wanted = [item for item in settled if unit_inputs[item.position] in pending]
    to_write = [
        item
        for item in wanted
        if isinstance(item, units.RenderedFile) and unit_inputs[item.position] not in saved_already
    ]
    written = await anyio.to_thread.run_sync(
        collect.save_outputs, run.out_dir, [(item.output_name, item.text) for item in to_write]
    )
    where = {item.position: place for item, place in zip(to_write, written, strict=True)}
    saved: list[tuple[int, Path, int, FileCounts]] = []
    failures: list[tuple[int, dict[str, Any]]] = []
    changed: list[tuple[int, str, int | None]] = []  # blob inputs that changed since listing
    for item in wanted:
        index = unit_inputs[item.position]
        place = where.get(item.position)
        if isinstance(item, units.RenderedFile) and not isinstance(place, str):
            note = _changed_since_listing(run, index, item)
            if note is not None:
                changed.append((index, note, item.size_bytes))
            if place is None:  # saved by the run before a resume
                _add_success(run, ledger, index, outcome.task_id, item.counts)
            else:
                saved.append((index, place, len(item.text), item.counts))
            continue
        reason = place if isinstance(place, str) else None
        if isinstance(item, units.FailedFile):
            reason = item.reason
        # The reason, not its consequence on the node: an input that could not be uploaded is `not_found`.
        reason = ledger.unreadable_inputs.get(index) or reason or message or problem
        details = failure_details(
            exit_code=outcome.exit_code,
            failure_code=outcome.failure_code,
            message=reason or "the task's result does not mention this file",
            stderr_tail=tail,
        )
        failures.append((index, details))
    if run.journal is not None:
        await run.journal.record_unit_collected(
            run.run_id,
            outcome.task_id,
            saved=[(run.inputs[index].relpath, path, size) for index, path, size, _ in saved],
            failed=[(run.inputs[index].relpath, details) for index, details in failures],
        )
    # Events after the journal: whoever sees one can rely on the journal holding it.
    for index, _, size, counts in saved:
        _report_saved(run, ledger, outcome, index, size, counts)
    for index, note, read_bytes in changed:
        _report_changed(run, ledger, index, note, read_bytes)
    for index, details in failures:
        _report_failure(run, ledger, outcome, index, details)
    if run.progress is not None:
        run.progress.update("collecting", len(ledger.results), len(run.inputs))


async def _read_result(run: RunContext, outcome: monitor.TaskOutcome) -> tuple[UnitResult | None, str | None]:
    """The unit's decoded result blob, or None and why there is none (None too: a failed task left none)."""
    try:
        data = await collect.read_unit_result(run.blobs, run.output_container, outcome.task_id, run.retry)
    except HttpResponseError as error:  # retries spent: this unit's files fail, the run goes on
        return None, f"its results could not be downloaded: {submit.describe_http_error(error)}"
    if data is None:
        return None, "the task finished but its result blob is missing" if outcome.succeeded else None
    try:
        return await anyio.to_thread.run_sync(decode_result_blob, data), None
    except ResultFormatError as error:
        return None, f"the task's result blob is unreadable: {error}"


def _report_saved(
    run: RunContext,
    ledger: RunLedger,
    outcome: monitor.TaskOutcome,
    index: int,
    size: int,
    counts: FileCounts,
) -> None:
    relpath = run.inputs[index].relpath
    _add_success(run, ledger, index, outcome.task_id, counts)
    log.info(
        "task.completed",
        task_id=outcome.task_id,
        file=relpath,
        exit_code=outcome.exit_code,
        duration_s=round(outcome.duration_s, 3) if outcome.duration_s is not None else None,
    )
    log.info(
        "output.downloaded",
        task_id=outcome.task_id,
        file=relpath,
        bytes=size,
        invalid_bytes=counts.invalid_bytes,
    )


def _add_success(run: RunContext, ledger: RunLedger, index: int, task_id: str, counts: FileCounts) -> None:
    relpath = run.inputs[index].relpath
    ledger.counts.add(relpath, counts.counts)  # ties: first occurrence in relpath order
    ledger.results[index] = FileResult.of(
        file_entry(
            relpath,
            task_id=task_id,
            succeeded=True,
            top=top_of(counts.counts, run.settings.run.top),
            words=counts.words,
            invalid_bytes=counts.invalid_bytes,
            output=naming.output_name(relpath),
        )
    )


def _changed_since_listing(run: RunContext, index: int, item: units.RenderedFile) -> str | None:
    """For an input read where it lives: what to say when the node read another version than listed."""
    source = run.inputs[index].blob
    if source is None:
        return None
    return units.changed_blob_note(source.etag, item.etag, run.inputs[index].size_bytes, item.size_bytes)


def _report_changed(
    run: RunContext, ledger: RunLedger, index: int, note: str, read_bytes: int | None
) -> None:
    """A blob input that changed between listing and reading: counted as read, and said (event, summary)."""
    item = run.inputs[index]
    if read_bytes is not None:
        ledger.resized_inputs[index] = read_bytes  # the run's bytes are those counted
    result = ledger.results.get(index)
    if result is not None:
        ledger.results[index] = FileResult.of({**result.entry, "note": note})
    log.warning("input.changed", file=item.relpath, bytes=read_bytes, note=f"{item.shown}: {note}")


def _report_failure(
    run: RunContext, ledger: RunLedger, outcome: monitor.TaskOutcome, index: int, details: dict[str, Any]
) -> None:
    relpath = run.inputs[index].relpath
    ledger.results[index] = FileResult.of(
        file_entry(relpath, task_id=outcome.task_id, succeeded=False, error=details)
    )
    log.warning(
        "task.failed",
        task_id=outcome.task_id,
        file=relpath,
        exit_code=outcome.exit_code,
        failure_code=outcome.failure_code,
        stderr_tail=details["stderr_tail"],
    )
