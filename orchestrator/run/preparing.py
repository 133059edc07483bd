"""PREPARING: containers and SAS, then the inputs' uploads ‖ provisioning (run/provisioning.py)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import anyio
import structlog

from orchestrator import naming
from orchestrator.azure import staging
from orchestrator.azure.sas import DelegationKeyProvider
from orchestrator.files import file_md5_hex, file_stat
from orchestrator.run import renewal
from orchestrator.run.context import RunContext, RunLedger
from orchestrator.run.provisioning import provision
from orchestrator.run.resume import pending_uploads, unsubmitted_task_ids

log = structlog.get_logger()


@dataclass(frozen=True)
class Prepared:
    """What submitting needs from PREPARING."""

    minter: staging.SasMinter
    staged: list[staging.StagedInput]  # by input index
    task_script_url: str | None  # set when each task must bring the node script along


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

    async def stage() -> None:
        staged.extend(await _stage_inputs(run, ledger))

    async def provision_pool() -> None:
        nonlocal task_script_url
        # Until the run's SAS end (its deadline plus [run] sas_margin_s) nodes must get the script.
        task_script_url = await provision(run, ledger, minter.expires_at)

    async with anyio.create_task_group() as group:
        group.start_soon(stage)
        group.start_soon(provision_pool)
    return Prepared(minter, staged, task_script_url)


async def _stage_inputs(run: RunContext, ledger: RunLedger) -> list[staging.StagedInput]:
    """Upload the inputs a resumed run cannot keep (all, for a new run); the staged inputs by index."""
    started = time.monotonic()
    done = 0

    async def uploaded(item: staging.StagedInput) -> None:
        nonlocal done
        done += 1
        if run.journal is not None:
            await run.journal.record_upload(run.run_id, item.relpath, item.md5_hex, item.blob_name)
        if run.progress is not None:
            run.progress.update("staging", done, len(run.inputs))

    kept = await _uploads_to_keep(run, ledger)
    done = len(kept)
    pending = [item for item in ledger.current_inputs(run.inputs) if item.relpath not in kept]
    fresh = await staging.upload_inputs(
        run.blobs,
        run.input_container,
        run.run_id,
        pending,
        concurrency=run.settings.run.upload_concurrency,
        retry=run.retry,
        on_uploaded=uploaded,
    )
    by_relpath = {**kept, **{item.relpath: item for item in fresh}}
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
                note=f"its size changed from {item.size_bytes} to {fresh_item.size_bytes} bytes since "
                "discovery; it is counted as uploaded",
            )
    # upload_inputs numbers what it was given; the run numbers all its inputs.
    staged = [
        dataclasses.replace(by_relpath[item.relpath], index=index) for index, item in enumerate(run.inputs)
    ]
    ledger.stage_s["staging"] = round(time.monotonic() - started, 3)
    return staged


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
                note="changed after its task was submitted; its result is for the uploaded version",
            )
        kept[item.relpath] = staging.StagedInput(
            index, item.relpath, upload.blob_name, upload.md5_hex, item.size_bytes, True
        )
    if kept:
        # The journal says uploaded; Storage must still hold those bytes (a local Azurite killed
        # before it saved them, a prefix someone deleted). One listing per 5,000 blobs checks them.
        stored = await staging.stored_md5s(
            run.blobs, run.input_container, naming.run_input_prefix(run.run_id), run.retry
        )
        kept = {
            relpath: staged
            for relpath, staged in kept.items()
            if stored.get(staged.blob_name, "missing") in (staged.md5_hex, None)
        }
    return kept
