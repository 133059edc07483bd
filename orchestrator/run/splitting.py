"""A split input at run time: its ranges' manifests pinned to one blob version, and the exact merge.

Each range unit's manifest names its nominal range and the ETag of the input's blob as uploaded,
so every range reads the same version (the node's ranged reads are conditional on it). Once every
range of an input has finished, its result blobs are read (again, after a resume: they stay in the
output container), merged with `node.result.merge_ranges` into the one-process count, and the
input's `_OUTPUT` is rendered, saved and uploaded to the output container as a node uploads an unsplit
input's. A range that failed fails the input with that range's reason.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob import ContentSettings

from node.result import (
    STATUS_OK,
    MergeError,
    ResultFormatError,
    UnitResult,
    decode_result_blob,
    merge_ranges,
    render_output,
)
from orchestrator import naming
from orchestrator.azure import collect, monitor, submit
from orchestrator.azure.retry import retry_call
from orchestrator.azure.staging import StagedInput
from orchestrator.results import FileCounts, failure_details
from orchestrator.run.context import RunContext, RunLedger
from orchestrator.run.split_plan import ranges_of_input
from orchestrator.run.units import UnitEntry

OUTPUT_CONTENT_TYPE = "text/plain; charset=utf-8"


async def pinned_etag(run: RunContext, blob_name: str) -> str | None:
    """The ETag of the input blob every range reads (looked up once per input); None when it is missing."""
    if blob_name not in run.pinned_etags:
        blob = run.blobs.get_blob_client(run.input_container, blob_name)
        try:
            properties = await retry_call(run.retry, "get_blob_properties", blob.get_blob_properties)
            etag: str | None = properties.etag
        except ResourceNotFoundError:  # not uploaded (unreadable): every range reports it not_found
            etag = None
        run.pinned_etags[blob_name] = etag
    return run.pinned_etags[blob_name]


async def pin_etags(run: RunContext, units_to_stage: Sequence[tuple[int, Sequence[StagedInput]]]) -> None:
    """Look up, once per split input, the ETag its range units read (before their manifests are made)."""
    names = {
        items[0].blob_name
        for unit_index, items in units_to_stage
        if unit_index in run.ranges and items[0].container is None  # blob inputs: ETag as listed
    }
    async with anyio.create_task_group() as group:
        for name in names - set(run.pinned_etags):
            group.start_soon(pinned_etag, run, name)


async def unit_entries(run: RunContext, unit_index: int, items: Sequence[StagedInput]) -> list[UnitEntry]:
    """The manifest entries of a unit: its inputs whole, or the one range of a split input it counts."""
    part = run.ranges.get(unit_index)
    if part is None:
        return [
            UnitEntry(
                item.relpath,
                item.blob_name,
                item.size_bytes,
                etag=item.etag,
                container=item.container,
                extent=item.extent,
            )
            for item in items
        ]
    (item,) = items
    end = part.end
    if part.is_last:
        # The file grew between discovery and upload: the last range reads to the blob's end.
        end = max(end, item.size_bytes)
    # A blob read where it lives is pinned to the version listed; an upload to the version uploaded.
    etag = item.etag if item.container is not None else await pinned_etag(run, item.blob_name)
    return [UnitEntry(item.relpath, item.blob_name, item.size_bytes, (part.start, end), etag, item.container)]


def first_range_task(run: RunContext, index: int) -> str:
    """The task id a split input is journalled and summarised under: its first range's."""
    return run.task_ids[ranges_of_input(run.ranges, index)[0]]


@dataclass(frozen=True)
class MergedInput:
    """A split input whose ranges merged: its counts, and where its `_OUTPUT` was saved (None: already)."""

    index: int
    outcome: monitor.TaskOutcome  # the range whose completion finished the input
    counts: FileCounts
    saved: Path | None
    size: int


@dataclass(frozen=True)
class FailedInput:
    """A split input that has no result: the failed range's outcome and the error entry."""

    index: int
    outcome: monitor.TaskOutcome
    details: dict[str, Any]


async def settle_range(
    run: RunContext,
    ledger: RunLedger,
    outcome: monitor.TaskOutcome,
    limiter: anyio.CapacityLimiter,
    *,
    saved_already: bool,
) -> MergedInput | FailedInput | None:
    """Note a range unit's outcome; once all its input's ranges have finished, merge them (else None)."""
    index = run.ranges[run.unit_by_task[outcome.task_id]].index
    relpath = run.inputs[index].relpath
    ledger.range_outcomes[outcome.task_id] = outcome
    task_ids = [run.task_ids[unit] for unit in ranges_of_input(run.ranges, index)]
    if index in ledger.results or index in ledger.merging:
        return None
    if any(task_id not in ledger.range_outcomes for task_id in task_ids):
        return None
    ledger.merging.add(index)  # the last range to finish merges, once
    outcomes: list[monitor.TaskOutcome] = [ledger.range_outcomes[task_id] for task_id in task_ids]
    results: list[tuple[UnitResult | None, str | None]] = [(None, None)] * len(task_ids)

    async def read(position: int) -> None:
        async with limiter:
            results[position] = await _read_result(run, outcomes[position])

    async with anyio.create_task_group() as group:
        for position in range(len(task_ids)):
            group.start_soon(read, position)
    for position, range_outcome in enumerate(outcomes):
        result, problem = results[position]
        # A result of another unit, or a damaged one, is not taken for this range's.
        entry = result.files[0] if result is not None and len(result.files) == 1 else None
        if entry is not None and entry.relpath != relpath:
            entry, problem = None, problem or "a range's result blob names another file"
        if range_outcome.succeeded and entry is not None and entry.status == STATUS_OK:
            continue
        reason = problem
        if entry is not None and entry.status != STATUS_OK:
            reason = entry.error_message or f"the node could not read it ({entry.error_kind})"
        return await _failed(run, ledger, index, range_outcome, reason)
    parts = [result.files[0] for result, _ in results if result is not None]
    try:
        merged = await anyio.to_thread.run_sync(merge_ranges, parts)
    except MergeError as error:
        return await _failed(run, ledger, index, outcome, f"its ranges do not merge: {error}")
    first = results[0][0]
    assert first is not None  # every range's result was read above
    # As a node renders it: the identity of the task that counted the file's first bytes.
    text = render_output(merged.counts, first.top, first.identity).encode("utf-8")
    counts = FileCounts(merged.words, merged.distinct, merged.invalid_bytes, merged.counts)
    if saved_already:
        return MergedInput(index, outcome, counts, None, len(text))
    try:
        await _upload_output(run, naming.output_name(relpath), text)
    except HttpResponseError as error:
        reason = f"its merged _OUTPUT could not be uploaded: {submit.describe_http_error(error)}"
        return await _failed(run, ledger, index, outcome, reason)
    (place,) = await anyio.to_thread.run_sync(
        collect.save_outputs, run.out_dir, [(naming.output_name(relpath), text)]
    )
    if isinstance(place, str):
        return await _failed(run, ledger, index, outcome, place)
    return MergedInput(index, outcome, counts, place, len(text))


async def _failed(
    run: RunContext, ledger: RunLedger, index: int, outcome: monitor.TaskOutcome, reason: str | None
) -> FailedInput:
    tail = ""
    message = ""
    if not outcome.succeeded:
        tail = await collect.task_stderr_tail(
            run.batch, run.jobs.holding(outcome.task_id), run.batch_task_id(outcome.task_id), run.retry
        )
        message = outcome.failure_message or f"the task exited with code {outcome.exit_code}"
    # The reason, not its consequence on the node: an input that could not be uploaded is `not_found`.
    reason = ledger.unreadable_inputs.get(index) or reason or message
    details = failure_details(
        exit_code=outcome.exit_code,
        failure_code=outcome.failure_code,
        message=reason or "the task's result does not mention this range",
        stderr_tail=tail,
    )
    return FailedInput(index, outcome, details)


async def _read_result(run: RunContext, outcome: monitor.TaskOutcome) -> tuple[UnitResult | None, str | None]:
    """A range unit's decoded result blob, or None and why there is none."""
    try:
        data = await collect.read_unit_result(run.blobs, run.output_container, outcome.task_id, run.retry)
    except HttpResponseError as error:
        return None, f"a range's results could not be downloaded: {submit.describe_http_error(error)}"
    if data is None:
        return None, "a range's task finished but its result blob is missing" if outcome.succeeded else None
    try:
        return await anyio.to_thread.run_sync(decode_result_blob, data), None
    except ResultFormatError as error:
        return None, f"a range's result blob is unreadable: {error}"


async def _upload_output(run: RunContext, name: str, text: bytes) -> None:
    """The merged `_OUTPUT` in the output container, where a node puts an unsplit input's (one request)."""
    blob = run.blobs.get_blob_client(run.output_container, name)
    upload = functools.partial(
        blob.upload_blob,
        text,
        overwrite=True,
        content_settings=ContentSettings(content_type=OUTPUT_CONTENT_TYPE),
    )
    await retry_call(run.retry, "upload_blob", upload)
