"""PREPARING's listing: the rest of each blob prefix, a page at a time, while the first tasks run.

`topn run az://CONTAINER/PREFIX` lists each prefix's first page before the run is created (an empty
prefix, a missing container or a refused listing is exit 2 with nothing created:
blobinputs.start_listing). The run lists the rest here (a new run once its first task is in:
preparing.py), from each prefix's journalled marker: every
page becomes inputs (named by `blobinputs.InputNamer`, from the names taken so far) and work units
(planned by the run's rules, a unit never spanning two pages), journalled with the listing's new
marker in one transaction, then handed to the feeder at once (blobs are read where they live:
nothing to stage). The next page is listed meanwhile, and no further: one page ahead at most, so
the listing's memory is bounded whatever the number of blobs.

A resumed run lists on from the journalled markers (a page is journalled whole with its marker, so
none is listed twice into the run and no blob is lost); a listing that completed is never redone.
A page that cannot be listed stops the run as interrupted (ServiceUnavailableError): `topn resume`
goes on from the last journalled page. A listed name that cannot be a result file (the checks the
first pages passed before the run was created) fails the run: a resume would meet it again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence

import anyio
import structlog

from orchestrator import naming
from orchestrator.azure.clients import STORAGE, RequestCounter, run_requests
from orchestrator.azure.staging import StagedInput
from orchestrator.blobinputs import (
    InputNamer,
    ListedPage,
    list_pages_after,
    listed_inputs,
    prefix_of_listing,
)
from orchestrator.errors import InputError, ServiceUnavailableError
from orchestrator.inputs import InputFile
from orchestrator.results import check_result_paths_fit
from orchestrator.run.context import RunContext, journal_inputs, journal_ranges
from orchestrator.run.split_plan import SplitPlan, UnitRange, plan_units

log = structlog.get_logger()

# A listed unit, ready for its task: its index and its inputs (staged in place).
UnitListed = Callable[[int, list[StagedInput]], Awaitable[None]]


def staged_in_place(item: InputFile, index: int) -> StagedInput:
    """An input read where it lives in Blob Storage, as staging would report it (nothing uploaded)."""
    assert item.blob is not None, "only blob inputs are listed"
    return StagedInput(
        index,
        item.relpath,
        item.blob.name,
        "",
        item.size_bytes,
        True,
        container=item.blob.container,
        etag=item.blob.etag,
    )


def plan_page(
    sizes: Sequence[int],
    slots: int,
    *,
    first_input: int,
    first_unit: int,
    split_bytes: int,
    max_files_per_unit: int,
    max_unit_bytes: int,
) -> SplitPlan:
    """A listed page's work units, numbered after the run's (`first_unit`), its inputs after `first_input`.

    The run's rules (bytes, count, split ranges) without the first units' ramp: the run's first
    tasks were planned with the first pages.
    """
    plan = plan_units(
        sizes,
        slots,
        split_bytes=split_bytes,
        max_files_per_unit=max_files_per_unit,
        max_unit_bytes=max_unit_bytes,
        ramp_units=0,
    )
    return SplitPlan(
        [[first_input + index for index in unit] for unit in plan.units],
        {
            first_unit + unit: dataclasses.replace(part, index=first_input + part.index)
            for unit, part in plan.ranges.items()
        },
    )


async def list_the_rest(run: RunContext, on_unit_listed: UnitListed | None) -> None:
    """List every prefix not complete yet, from its marker; each page journalled, then fed at once.

    Ends with `inputs.listed` (the whole listing's totals, the first pages' requests included).
    """
    if not run.listings or (run.resume is not None and not run.still_listing):
        return  # no blob prefix, or a resumed run whose listing completed before: never listed again
    requests_before, started = run.listing_start or (0, time.monotonic())
    counter = RequestCounter()
    if run.still_listing:
        namer = InputNamer(
            (item.relpath for item in run.inputs),
            ((item.blob.container, item.blob.name) for item in run.inputs if item.blob is not None),
        )
        # No buffer: the next page is listed while this one is journalled and fed, and waits there.
        send, receive = anyio.create_memory_object_stream[tuple[int, ListedPage]](max_buffer_size=0)

        async def produce() -> None:
            # The listing's own requests: `inputs.listed` counts them, the run's summary does not.
            with run_requests(counter):
                async with send:
                    for position, listing in enumerate(run.listings):
                        if not listing.complete:
                            await _list_prefix(run, position, send.send)

        async with anyio.create_task_group() as group:
            group.start_soon(produce)
            async with receive:
                async for position, page in receive:
                    await _take_page(run, namer, position, page, on_unit_listed)
    blobs = [item for item in run.inputs if item.blob is not None]
    log.info(
        "inputs.listed",
        prefixes=len(run.listings),
        blobs=len(blobs),
        bytes=sum(item.size_bytes for item in blobs),
        storage_requests=requests_before + counter.total(STORAGE),
        duration_s=round(time.monotonic() - started, 3),
    )


async def _list_prefix(
    run: RunContext, position: int, send: Callable[[tuple[int, ListedPage]], Awaitable[None]]
) -> None:
    listing = run.listings[position]
    prefix = prefix_of_listing(listing)
    pages = list_pages_after(
        run.blobs,
        prefix,
        run.retry,
        account_name=run.settings.storage.account_name,
        after=listing.marker,
        page_size=run.settings.run.list_page_blobs,
    )
    try:
        async for page in pages:
            await send((position, page))
    except InputError as error:
        # The prefix listed before (the run exists): a later page's refusal is an interruption.
        raise ServiceUnavailableError(
            f"{error}; the pages listed before are kept, and the listing goes on from there"
        ) from None
    finally:
        await pages.aclose()


async def _take_page(
    run: RunContext, namer: InputNamer, position: int, page: ListedPage, on_unit_listed: UnitListed | None
) -> None:
    """One page into the run: inputs, units, one journal transaction, then its units to the feeder."""
    listing = run.listings[position]
    first_input, first_unit = len(run.inputs), len(run.units)
    # A name that cannot be a result (InputError) fails the run: a resume would meet it again.
    new = namer.name(listed_inputs(prefix_of_listing(listing), page.blobs))
    check_result_paths_fit(run.out_dir, [item.relpath for item in new])
    plan = plan_page(
        [item.size_bytes for item in new],
        run.pool.planned_slots(),
        first_input=first_input,
        first_unit=first_unit,
        split_bytes=run.settings.run.split_bytes,
        max_files_per_unit=run.max_files_per_task,
        max_unit_bytes=run.settings.run.unit_target_bytes,
    )
    run.inputs.extend(new)
    for unit in plan.units:
        unit_index = len(run.units)
        task_id = naming.task_id(unit_index)
        run.units.append(unit)
        run.task_ids.append(task_id)
        run.unit_by_task[task_id] = unit_index
    run.ranges.update(plan.ranges)
    done = dataclasses.replace(listing, marker=page.next_marker, complete=page.next_marker is None)
    if run.journal is not None:
        await run.journal.record_listed_page(
            run.run_id,
            journal_inputs(run, first_input, first_unit),
            journal_ranges(run, first_unit),
            done,
        )
    run.listings[position] = done
    log.debug(
        "inputs.page_listed",
        prefix=listing.argument,
        blobs=len(new),
        units=len(run.units) - first_unit,
        complete=done.complete,
    )
    if on_unit_listed is None:
        return
    for unit_index in range(first_unit, len(run.units)):
        part: UnitRange | None = run.ranges.get(unit_index)
        if part is not None and part.part > 0:
            continue  # a split input's later ranges come along with its first (the feeder adds them)
        items = [staged_in_place(run.inputs[index], index) for index in run.units[unit_index]]
        await on_unit_listed(unit_index, items)
