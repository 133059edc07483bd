"""The run state machine (DESIGN §3): one run from the user's files to results on disk.

    CREATED → PREPARING { staging ‖ provisioning } → SUBMITTING → RUNNING (+ collecting as tasks finish)
            → COLLECTING → CLEANING → SUCCEEDED | FAILED | CANCELLED

Each transition is written to the journal before the next state's side effects start, and is
emitted as `run.state_changed`. Every side effect is idempotent (see the stage modules), so a
resumed state is safe to redo: `run_pipeline(..., resume=record)` continues a journalled run from
its recorded state (docs/journal.md). Clean-up runs shielded at the end, and after a failure that
cannot be resumed; an interrupted run (signal, dead endpoint, deadline) is left for `topn resume`.

This module is the flow; each state's work is a stage function in its own module, taking the run's
fixed facts (`runcontext.RunContext`) and what it has done so far (`runcontext.RunLedger`):
preparing.py (+ provisioning.py), submitting.py (+ renewal.py on resume), collecting.py,
cleaning.py; failures.py explains why a run stopped and summary.py builds summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import structlog

from orchestrator import naming
from orchestrator.azure import sas
from orchestrator.azure.clients import BATCH, STORAGE, Clients, run_requests
from orchestrator.blobinputs import ListingStart
from orchestrator.errors import (
    InputError,
    JobEndedError,
    LocalWriteError,
    ServiceUnavailableError,
    TopnError,
    first_leaf,
)
from orchestrator.inputs import InputFile, SkippedInput
from orchestrator.journal import Journal, RunRecord
from orchestrator.results import claim_results_folder, write_summary
from orchestrator.run.cleaning import clean_up
from orchestrator.run.collecting import run_and_collect
from orchestrator.run.context import (
    PoolSupply,
    ProgressSink,
    RunContext,
    RunLedger,
    journal_inputs,
    journal_ranges,
    new_run_context,
)
from orchestrator.run.failures import RunDeadlineError, explain
from orchestrator.run.machine import (
    ALLOWED,
    TERMINAL,
    RunState,
    RunStateMachine,
    StateRecorder,
    TransitionError,
    check_transition,
)
from orchestrator.run.preparing import prepare
from orchestrator.run.submitting import submit_run_tasks
from orchestrator.run.summary import run_summary, written_summary
from orchestrator.settings import Settings

# The names the CLI, the tests and the benchmarks import from here, wherever they are defined.
__all__ = [
    "ALLOWED",
    "TERMINAL",
    "ProgressSink",
    "RunDeadlineError",
    "RunState",
    "RunStateMachine",
    "StateRecorder",
    "TransitionError",
    "check_transition",
    "leaves_run_resumable",
    "run_pipeline",
    "settings_snapshot",
    "summary_exit_status",
]

log = structlog.get_logger()


def settings_snapshot(settings: Settings) -> dict[str, Any]:
    """The settings as JSON data for the journal (which strips the secrets again, to be sure)."""
    data = dataclasses.asdict(settings)
    for section in ("batch", "storage"):
        data[section]["account_key"] = None
    snapshot: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return snapshot


def summary_exit_status(summary: Mapping[str, Any]) -> int:
    """0 when every file succeeded, 1 otherwise (DESIGN §4)."""
    return 0 if summary.get("state") == RunState.SUCCEEDED.value else 1


async def run_pipeline(
    settings: Settings,
    inputs: Sequence[InputFile],
    clients: Clients,
    out_dir: Path,
    *,
    pool: PoolSupply,
    run_id: str | None = None,
    journal: Journal | None = None,
    progress: ProgressSink | None = None,
    max_files_per_task: int | None = None,
    resume: RunRecord | None = None,
    skipped: Sequence[SkippedInput] = (),
    on_quota_wait: Callable[[int, float], None] | None = None,
    listing: ListingStart | None = None,
) -> dict[str, Any]:
    """Run the whole workflow for `inputs`; returns summary.json's content (also written to out_dir).

    `pool` is the process's pool keeper (service/poolkeeper.py): the run uses the pool and never
    changes it. `max_files_per_task` (default `[run] max_files_per_task`) = 1 gives one task per
    file. `resume` continues that journalled run (see run/resume.py, which builds its inputs and
    settings). `skipped` is what `--skip-unreadable` left out (journalled, listed in summary.json; a
    resumed run has its own from the journal). `on_quota_wait` hears each wait on the active-jobs
    quota; given it, a new run waits the quota out too (a resumed one always does). `listing`: the
    blob prefixes' first pages (in `inputs`) and where each goes on; the run lists the rest while
    its first tasks run (run/listing.py).
    """
    if not inputs:
        raise InputError("no input files to process")
    if resume is not None:
        run_id = resume.run_id
    run_id = run_id or naming.new_run_id()
    # Bound for this run's scope only: the process (a daemon) goes on after it.
    with structlog.contextvars.bound_contextvars(run_id=run_id):
        # Before anything is created: exit 2 leaves no trace.
        await anyio.to_thread.run_sync(claim_results_folder, out_dir, run_id)
        per_task = max_files_per_task if max_files_per_task is not None else settings.run.max_files_per_task
        run = new_run_context(
            settings,
            inputs,
            clients,
            out_dir,
            pool=pool,
            run_id=run_id,
            journal=journal,
            progress=progress,
            max_files_per_task=per_task,
            resume=resume,
            started=time.monotonic(),
            skipped=skipped,
            on_quota_wait=on_quota_wait,
            listings=listing.listings if listing is not None else (),
            listing_start=(listing.storage_requests, listing.started) if listing is not None else None,
        )
        machine = RunStateMachine(run_id, journal, RunState(resume.state) if resume else RunState.CREATED)
        with run_requests(run.requests):
            return await _run(run, RunLedger(), machine)


async def _run(run: RunContext, ledger: RunLedger, machine: RunStateMachine) -> dict[str, Any]:
    """The flow: each state's stage, in order; then clean-up and the final state."""
    if run.journal is not None and run.resume is None:
        await run.journal.create_run(
            run.run_id,
            settings_snapshot(run.settings),
            await anyio.to_thread.run_sync(journal_inputs, run),  # one stat per input
            out_dir=run.out_dir,
            ranges=journal_ranges(run),
            skipped=[(str(item.path), item.reason) for item in run.skipped],
            listings=run.listings,
        )
    _announce_start(run, machine)
    try:
        if machine.reached(RunState.CLEANING):
            summary = await anyio.to_thread.run_sync(written_summary, run)  # written before CLEANING
        else:
            # When this run's `run_timeout_s` ends (wall clock): what a resumed run's old SAS must outlive.
            deadline_at = sas.utc_now() + timedelta(seconds=run.settings.run.run_timeout_s)
            with anyio.fail_after(run.settings.run.run_timeout_s):
                await machine.advance(RunState.PREPARING)
                prepared = await prepare(run, ledger)
                await machine.advance(RunState.SUBMITTING)
                await submit_run_tasks(run, ledger, prepared, deadline_at)
                del prepared  # every input's staged record: not needed once the tasks are in
                await machine.advance(RunState.RUNNING)
                # COLLECTING is recorded once no task is left to watch; the last downloads may still run.
                await run_and_collect(
                    run,
                    ledger,
                    watch=not machine.reached(RunState.COLLECTING),
                    on_watched=lambda: machine.advance(RunState.COLLECTING),
                )
            final_state = RunState.FAILED if ledger.failed_files() else RunState.SUCCEEDED
            summary = run_summary(run, ledger, final_state.value)
            # Before CLEANING: a resume from CLEANING needs nothing that clean-up deletes.
            await anyio.to_thread.run_sync(write_summary, run.out_dir, summary)
            await machine.move(RunState.CLEANING)
        final = RunState(summary["state"])
        failed = int(summary.get("totals", {}).get("failed", 0))
        ledger.job_created = True  # the job exists by now (a resumed CLEANING redoes its deletion)
        await clean_up(run, ledger)
    except BaseException as error:
        reported = await _stop(run, ledger, machine, error)
        if isinstance(reported, TopnError):
            reported.reported_by_run = True  # `run.failed` said it
        if reported is error:
            raise
        raise reported from None
    await machine.move(final)
    log.info(
        "run.completed",
        state=final.value,
        files_succeeded=int(summary.get("totals", {}).get("succeeded", 0)),
        files_failed=failed,
        duration_s=round(time.monotonic() - run.started, 3),
        staging_s=ledger.stage_s.get("staging", 0.0),
        provisioning_s=ledger.stage_s.get("provisioning", 0.0),
        submitting_s=ledger.stage_s.get("submitting", 0.0),
        running_s=ledger.stage_s.get("running", 0.0),
        collecting_s=ledger.stage_s.get("collecting", 0.0),
        batch_requests=run.requests.total(BATCH),
        storage_requests=run.requests.total(STORAGE),
    )
    return summary


def _announce_start(run: RunContext, machine: RunStateMachine) -> None:
    log.info(
        "run.started",
        files=len(run.inputs),  # known so far: blob prefixes still listing add theirs later
        bytes=sum(item.size_bytes for item in run.inputs),
        still_listing=run.still_listing,
        config_path=str(run.settings.source),
        local_mode=run.settings.local.enabled,
    )
    if run.resume is not None:
        record = run.resume
        log.info(
            "run.resumed",
            from_state=machine.state.value,
            uploads_kept=len(record.uploads),
            tasks_submitted=len(record.submitted_task_ids),
            tasks_completed=len(record.completed),
            outputs_saved=len(record.downloads),
        )


def leaves_run_resumable(error: BaseException) -> bool:
    """Whether a run that stopped on `error` is left in place for `topn resume` (not finished).

    A signal, a service that stopped answering and the run's deadline cost time, not the run: job,
    pool and blobs stay, and the journal keeps the state reached. So does a results folder that
    could not be written (disk full, read-only, vanished): the results wait in Blob Storage. So does
    a job that ended under the run (its wall clock, a user): a resume goes on in a successor job.
    """
    leaf = first_leaf(error)
    if isinstance(leaf, (anyio.get_cancelled_exc_class(), KeyboardInterrupt)):
        return True
    return isinstance(leaf, ServiceUnavailableError | RunDeadlineError | LocalWriteError | JobEndedError)


async def _stop(
    run: RunContext, ledger: RunLedger, machine: RunStateMachine, error: BaseException
) -> BaseException:
    """Shielded: say why the run stopped; clean up and record FAILED only if it cannot be resumed.

    An interrupted run (SIGINT/SIGTERM), one whose service stopped answering and one past its
    deadline are left as they are - job, pool and blobs in place, the journal at the state
    reached - so `topn resume` continues them. Returns the error to raise: ours as is, anything
    else explained (which service, which endpoint).
    """
    leaf = first_leaf(error)
    cancelled = isinstance(leaf, (anyio.get_cancelled_exc_class(), KeyboardInterrupt))
    if cancelled:
        log.warning(
            "run.interrupted",
            state=machine.state.value,
            resume_command=f"topn resume {run.run_id}",
            duration_s=round(time.monotonic() - run.started, 3),
        )
        with anyio.CancelScope(shield=True):
            await _keep_error(run, machine, "Interrupted", "stopped by a signal (Ctrl-C or SIGTERM)", True)
        return error
    with anyio.CancelScope(shield=True):
        reported = await explain(leaf, run.settings, run.started)
        resumable = leaves_run_resumable(reported)
        if resumable:
            reported = type(reported)(
                f"{reported}. Once that is fixed, `topn resume {run.run_id}` continues this run"
            )
        else:
            await _clean_up_failed_run(run, ledger, machine)
        log.error(
            "run.failed",
            error_type=type(reported).__name__,
            error=str(reported),
            resumable=resumable,
            duration_s=round(time.monotonic() - run.started, 3),
        )
        await _keep_error(run, machine, type(reported).__name__, str(reported), resumable)
    return reported


async def _keep_error(
    run: RunContext, machine: RunStateMachine, error_type: str, message: str, resumable: bool
) -> None:
    """The journal keeps why the run stopped, for `topn status RUN_ID`; never hides the error itself."""
    if run.journal is None:
        return
    try:
        await run.journal.record_run_error(
            run.run_id, error_type=error_type, message=message, resumable=resumable, state=machine.state.value
        )
    except Exception as journal_error:  # e.g. the disk that stopped the run is the journal's too
        log.warning(
            "journal.error_not_kept", error_type=type(journal_error).__name__, error=str(journal_error)[:300]
        )


async def _clean_up_failed_run(run: RunContext, ledger: RunLedger, machine: RunStateMachine) -> None:
    """A run that cannot go on: delete what config says to, then record FAILED."""
    try:
        if machine.state not in TERMINAL and machine.state != RunState.CLEANING:
            await machine.move(RunState.CLEANING)
        await clean_up(run, ledger)
    except Exception as cleanup_error:  # clean-up must never hide the run's own error
        log.warning("cleanup.failed", error_type=type(cleanup_error).__name__, error=str(cleanup_error)[:300])
    if machine.state == RunState.CLEANING:
        await machine.move(RunState.FAILED)
