"""PREPARING: containers and SAS, then the inputs' uploads ‖ provisioning (run/provisioning.py)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import anyio
import structlog

from orchestrator import naming
from orchestrator.azure import packing, staging
from orchestrator.azure.sas import DelegationKeyProvider
from orchestrator.errors import first_leaf
from orchestrator.files import file_md5_hex, file_stat
from orchestrator.inputs import InputFile
from orchestrator.journal.records import UploadRecord
from orchestrator.run import listing, renewal
from orchestrator.run.context import RunContext, RunLedger
from orchestrator.run.feeding import UnitFeeder
from orchestrator.run.pack_plan import plan_packs
from orchestrator.run.provisioning import provision
from orchestrator.run.resume import pending_uploads, unsubmitted_task_ids
from orchestrator.run.split_plan import later_range_units

log = structlog.get_logger()


# The longest the later blob pages wait for the first task to be added (a slow pool or job).
FIRST_TASK_HOLD_S = 30.0


@dataclass(frozen=True)
class Prepared:
    """What submitting needs from PREPARING."""

    minter: staging.SasMinter
    staged: list[staging.StagedInput]  # by input index
    task_script_url: str | None  # set when each task must bring the node script along
    added_early: frozenset[str] = frozenset()  # unit task ids added while the inputs were staged


async def prepare(run: RunContext, ledger: RunLedger) -> Prepared:
    """Containers, SAS; then uploads ‖ (the kept pool → job → usable nodes)."""
    minter = await staging.make_sas_minter(
        account_url=run.settings.storage.blob_endpoint,
        account_name=run.settings.storage.account_name,
        account_key=run.clients.storage_account_key,
        delegation_source=(
            cast(DelegationKeyProvider, run.blobs) if run.clients.storage_account_key is None else None
        ),
        run_timeout_s=run.settings.run.run_timeout_s,
        margin_s=run.settings.run.sas_margin_s,
    )
    if run.resume is None:  # a resumed run records them once no task carries older ones
        await renewal.record_sas_expiries(run, minter)
    await staging.ensure_containers(run.blobs, [run.input_container, run.output_container], run.retry)
    staged: list[staging.StagedInput] = []
    task_script_url: str | None = None
    # A new run adds each unit's task as soon as its inputs are staged; a resumed one in SUBMITTING.
    feeder = UnitFeeder(run, minter) if run.resume is None else None
    # Staging sees the inputs known now; the blob pages listed meanwhile are staged in place.
    known = dataclasses.replace(run, inputs=list(run.inputs), units=list(run.units), ranges=dict(run.ranges))
    producers = 2  # staging and listing: the feeder ends once both are done

    def producer_done() -> None:
        nonlocal producers
        producers -= 1
        if feeder is not None and producers == 0:
            feeder.staging_done()

    async def stage() -> None:
        try:
            staged.extend(await _stage_inputs(known, ledger, feeder.unit_staged if feeder else None))
            if feeder is not None:
                feeder.known_inputs_staged()
        finally:
            producer_done()

    async def list_inputs() -> None:
        try:
            if feeder is not None:
                # Parsing a page of 5,000 blobs keeps the event loop busy for a second or so: the
                # later pages wait for the first task, which the first page's units already make,
                # so that provisioning and the first add are not slowed down by them.
                with anyio.move_on_after(FIRST_TASK_HOLD_S):
                    await feeder.first_request_over.wait()
            await listing.list_the_rest(run, feeder.unit_staged if feeder else None)
        finally:
            producer_done()

    async def provision_pool() -> None:
        nonlocal task_script_url
        # Until the run's SAS end (its deadline plus [run] sas_margin_s) nodes must get the script.
        task_script_url = await provision(
            run, ledger, minter.expires_at, on_job_ready=feeder.job_ready if feeder else None
        )

    async with anyio.create_task_group() as group:
        group.start_soon(stage)
        group.start_soon(list_inputs)
        group.start_soon(provision_pool)
        if feeder is not None:
            group.start_soon(feeder.run)
    listed = [
        listing.staged_in_place(item, index) for index, item in enumerate(run.inputs) if index >= len(staged)
    ]
    staged.extend(listed)
    if feeder is not None and feeder.first_added_s is not None:
        ledger.first_task_s = feeder.first_added_s
    return Prepared(minter, staged, task_script_url, frozenset(feeder.added) if feeder else frozenset())


async def _stage_inputs(
    run: RunContext, ledger: RunLedger, on_unit_staged: UnitStaged | None = None
) -> list[staging.StagedInput]:
    """Upload the inputs a resumed run cannot keep (all, for a new run); the staged inputs by index.

    The journal records a unit's uploads in one transaction once all its inputs are staged, and
    `on_unit_staged` then hears of that unit (its task may be added at once).
    """
    started = time.monotonic()
    kept = await _uploads_to_keep(run, ledger)
    # Inputs that already live in Blob Storage are staged as they are: nothing to upload or journal.
    in_place = blobs_in_place(run.inputs)
    current = ledger.current_inputs(run.inputs)
    pending = [item for item in current if item.relpath not in kept and item.blob is None]
    # A unit's small inputs go up as one blob (its pack); the others, and every input of a unit
    # with fewer than two small ones, as blobs of their own.
    to_upload = {item.relpath for item in pending}
    packs = plan_packs(
        run.units,
        run.task_ids,
        lambda index: current[index].relpath in to_upload,
        run.settings.run.pack_max_bytes,
        [item.size_bytes for item in current],
        run.ranges,
    )
    packed = {current[index].relpath for pack in packs for index in pack.inputs}
    tracker = UnitTracker(
        [item.relpath for item in run.inputs], run.units, {**kept, **in_place}, later_range_units(run.ranges)
    )
    done = len(kept) + len(in_place)

    async def staged_one(item: staging.StagedInput) -> None:
        nonlocal done
        done += 1
        finished = tracker.settle(item)
        if finished is not None:
            unit_index, items = finished
            if run.journal is not None:
                # A kept upload is journalled already; an unreadable input has nothing in Storage.
                fresh_items = [
                    staged for staged in items if staged.relpath not in kept and staged.unreadable is None
                ]
                await run.journal.record_uploads(
                    run.run_id,
                    [(staged.relpath, staged.md5_hex, staged.blob_name) for staged in fresh_items],
                    {staged.relpath: staged.extent for staged in fresh_items if staged.extent is not None},
                )
            if on_unit_staged is not None:
                await on_unit_staged(unit_index, items)
        if run.progress is not None:
            run.progress.update("staging", done, len(run.inputs))

    if on_unit_staged is not None:
        for unit_index, items in tracker.already_staged():  # every input kept: ready at once
            await on_unit_staged(unit_index, items)
    fresh: list[staging.StagedInput] = []

    async def upload_alone() -> None:
        fresh.extend(
            await staging.upload_inputs(
                run.blobs,
                run.input_container,
                run.run_id,
                [item for item in pending if item.relpath not in packed],
                concurrency=run.settings.run.upload_concurrency,
                retry=run.retry,
                on_staged=staged_one,
            )
        )

    async def upload_packed() -> None:
        fresh.extend(
            await packing.upload_packs(
                run.blobs,
                run.input_container,
                run.run_id,
                [(pack.blob_name, [current[index] for index in pack.inputs]) for pack in packs],
                pack_max_bytes=run.settings.run.pack_max_bytes,
                concurrency=run.settings.run.upload_concurrency,
                retry=run.retry,
                on_staged=staged_one,
            )
        )

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(upload_packed)
            group.start_soon(upload_alone)
    except BaseExceptionGroup as errors:
        raise first_leaf(errors) from None
    by_relpath = {**kept, **in_place, **{item.relpath: item for item in fresh}}
    for index, item in enumerate(run.inputs):
        fresh_item = by_relpath[item.relpath]
        if fresh_item.unreadable is not None:
            ledger.unreadable_inputs[index] = fresh_item.unreadable
            ledger.resized_inputs[index] = 0  # nothing of it was uploaded or counted
        elif fresh_item.size_bytes != ledger.resized_inputs.get(index, item.size_bytes):
            # Written to between discovery and upload: counted as uploaded, and said so.
            ledger.resized_inputs[index] = fresh_item.size_bytes
            log.warning(
                "input.changed",
                file=item.relpath,
                bytes=fresh_item.size_bytes,
                note=f"its size changed from {item.size_bytes} to {fresh_item.size_bytes} bytes since "
                "discovery; it is counted as uploaded",
            )
    # upload_inputs numbers what it was given; the run numbers all its inputs.
    staged = [
        dataclasses.replace(by_relpath[item.relpath], index=index) for index, item in enumerate(run.inputs)
    ]
    ledger.stage_s["staging"] = round(time.monotonic() - started, 3)
    return staged


def blobs_in_place(inputs: Sequence[InputFile]) -> dict[str, staging.StagedInput]:
    """The inputs read where they live in Blob Storage, staged as they are (by relpath)."""
    return {
        item.relpath: listing.staged_in_place(item, index)
        for index, item in enumerate(inputs)
        if item.blob is not None
    }


# A unit whose inputs are all staged: its index and its inputs (run indexes), in unit order.
UnitStaged = Callable[[int, list[staging.StagedInput]], Awaitable[None]]


class UnitTracker:
    """Which units have all their inputs staged, as uploads settle one by one (in any order).

    The units in `later_ranges` (a split input's second and later ranges) are never reported here:
    they are ready along with the input's first range (the feeder adds them together).
    """

    def __init__(
        self,
        relpaths: Sequence[str],
        work_units: Sequence[Sequence[int]],
        kept: Mapping[str, staging.StagedInput],
        later_ranges: Collection[int] = (),
    ) -> None:
        self._position = {relpath: index for index, relpath in enumerate(relpaths)}
        self._unit_of: list[int] = [0] * len(relpaths)
        self._units = work_units
        self._staged: dict[int, dict[int, staging.StagedInput]] = {}
        self._left: list[int] = []
        for unit_index, unit in enumerate(work_units):
            if unit_index in later_ranges:
                self._left.append(-1)
                continue
            for index in unit:
                self._unit_of[index] = unit_index
                item = kept.get(relpaths[index])
                if item is not None:
                    self._staged.setdefault(unit_index, {})[index] = dataclasses.replace(item, index=index)
            self._left.append(len(unit) - len(self._staged.get(unit_index, {})))

    def already_staged(self) -> list[tuple[int, list[staging.StagedInput]]]:
        """Units with nothing left to upload, and their inputs."""
        ready = [unit_index for unit_index, left in enumerate(self._left) if left == 0]
        return [(unit_index, self._take(unit_index)) for unit_index in ready]

    def settle(self, item: staging.StagedInput) -> tuple[int, list[staging.StagedInput]] | None:
        """Note one staged input; its unit and the unit's inputs once it is the unit's last."""
        index = self._position[item.relpath]
        unit_index = self._unit_of[index]
        self._staged.setdefault(unit_index, {})[index] = dataclasses.replace(item, index=index)
        self._left[unit_index] -= 1
        if self._left[unit_index]:
            return None
        return unit_index, self._take(unit_index)

    def _take(self, unit_index: int) -> list[staging.StagedInput]:
        items = self._staged.pop(unit_index, {})
        return [items[index] for index in self._units[unit_index]]


async def _uploads_to_keep(run: RunContext, ledger: RunLedger) -> dict[str, staging.StagedInput]:
    """A resumed run's recorded uploads whose local file is unchanged (size and mtime, else MD5)."""
    if run.resume is None:
        return {}
    record = run.resume
    unsubmitted = set(unsubmitted_task_ids(record))
    pending = {item.relpath for item in pending_uploads(record)}
    kept: dict[str, staging.StagedInput] = {}
    # One worker-thread trip for every stat: thousands of files must not stall the event loop.
    stats = await anyio.to_thread.run_sync(lambda: [file_stat(Path(item.path)) for item in record.inputs])
    for index, item in enumerate(record.inputs):
        upload = record.uploads.get(item.relpath)
        if upload is None or item.relpath in pending:
            continue
        path = Path(item.path)
        unchanged = stats[index] == (item.size_bytes, item.mtime_ns)
        if not unchanged:
            unchanged = await anyio.to_thread.run_sync(file_md5_hex, path) == upload.md5_hex
        if not unchanged and item.task_id in unsubmitted:
            # Changed before its task was submitted: upload it again, and count what it is now.
            position = next(at for at, known in enumerate(run.inputs) if known.relpath == item.relpath)
            ledger.resized_inputs[position] = stats[index][0]
            continue
        if not unchanged:
            log.warning(
                "input.changed",
                file=item.relpath,
                bytes=item.size_bytes,
                note="changed after its task was submitted; its result is for the uploaded version",
            )
        kept[item.relpath] = staging.StagedInput(
            index, item.relpath, upload.blob_name, upload.md5_hex, item.size_bytes, True, extent=upload.extent
        )
    if kept:
        # The journal says uploaded; Storage must still hold those bytes (a local Azurite killed
        # before it saved them, a prefix someone deleted). One listing per 5,000 blobs checks them.
        stored = await staging.stored_md5s(
            run.blobs, run.input_container, naming.run_input_prefix(run.run_id), run.retry
        )
        if any(staged.extent is not None for staged in kept.values()):
            stored.update(await staging.stored_md5s(run.blobs, run.input_container, PACKS_PREFIX, run.retry))

        def still_stored(staged: staging.StagedInput) -> bool:
            if staged.extent is not None:  # a pack's stored MD5 is the whole pack's
                return staged.blob_name in stored
            return stored.get(staged.blob_name, "missing") in (staged.md5_hex, None)

        kept = {relpath: staged for relpath, staged in kept.items() if still_stored(staged)}
        kept = keep_whole_packs(kept, record.uploads)
    return kept


# Where the packs are (naming.unit_pack_blob), beside the manifests: what a resume lists to check them.
PACKS_PREFIX = "units/"


def keep_whole_packs(
    kept: Mapping[str, staging.StagedInput], uploads: Mapping[str, UploadRecord]
) -> dict[str, staging.StagedInput]:
    """`kept` without the packed inputs of any pack one of whose inputs is not kept: that unit is
    packed again whole (its pack blob is overwritten, so no kept extent may point into it)."""
    broken = {
        upload.blob_name
        for relpath, upload in uploads.items()
        if upload.extent is not None and relpath not in kept
    }
    return {
        relpath: staged
        for relpath, staged in kept.items()
        if staged.extent is None or staged.blob_name not in broken
    }
