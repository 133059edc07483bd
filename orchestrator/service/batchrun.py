"""One batch from the journal to its files' final places: admission, one run_pipeline, the outcome.

A batch's run id is its batch id; its results go to `<outbox>/<run_id>/` exactly as `topn run`
writes them. A batch the journal already has a run for continues it through the existing resume
path; a finished one is only moved into place. An interrupted run (signal, a service that stopped
answering, the run's deadline) leaves the batch where it is for the next try or the next start;
any other failure fails the batch's files, each with the reason in `<name>.error.json`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import structlog

from orchestrator.inputs import InputFile, make_relpaths_unique
from orchestrator.journal import RunRecord
from orchestrator.journal.intake import IntakeFile, IntakeStore, age_s
from orchestrator.results import read_summary
from orchestrator.run.context import PoolSupply
from orchestrator.run.pipeline import leaves_run_resumable, run_pipeline
from orchestrator.run.resume import resumed_inputs, resumed_out_dir, resumed_settings
from orchestrator.run.retrying import reopen_for_retry
from orchestrator.secrets import redact_text
from orchestrator.service.admission import Admission, admit, quota_backoff_s
from orchestrator.service.claims import Claimer, DaemonFolders
from orchestrator.service.metrics import DaemonMetrics
from orchestrator.service.shell import Services
from orchestrator.settings import Settings

log = structlog.get_logger()

# After an interrupted run (a service down, the run's deadline): wait before the batch's next try.
RETRY_AFTER_INTERRUPTION_S = 5.0
# Run states in which some of a run's tasks may not be in Batch yet.
BEFORE_TASKS_IN_BATCH = frozenset({"CREATED", "PREPARING", "SUBMITTING"})


@dataclass(eq=False)  # compared and hashed by identity: it borrows a limiter token
class BatchProgress:
    """What the status page and the drain policy see of a batch in flight."""

    batch_id: str
    files: int
    started_at: float = field(default_factory=time.monotonic)
    stage: str = "admitting"  # admitting | waiting_quota | staging | running | collecting | finishing
    done: int = 0
    total: int = 0

    @property
    def past_submission(self) -> bool:
        """Its tasks are in Batch: stopping now loses nothing (the tasks run on; a restart re-attaches)."""
        return self.stage in ("admitting", "waiting_quota", "running", "collecting")

    def update(self, stage: str, done: int, total: int) -> None:
        self.stage, self.done, self.total = stage, done, total


class _ProgressSink:
    def __init__(self, progress: BatchProgress, metrics: DaemonMetrics) -> None:
        self._progress = progress
        self._metrics = metrics

    def update(self, stage: str, done: int, total: int) -> None:
        self._progress.update(stage, done, total)


def daemon_run_settings(settings: Settings) -> Settings:
    """A batch's settings: its job stays after the run (the janitor deletes it after `job_retention_s`),
    and its tasks' folders on the nodes are kept as long (retentionTime), not `[run] task_retention_s`."""
    retention_s = settings.daemon.job_retention_s
    return replace(settings, run=replace(settings.run, delete_job=False, task_retention_s=retention_s))


def file_outcomes(
    files: Sequence[IntakeFile], run_relpaths: Sequence[str], summary: Mapping[str, Any]
) -> dict[str, Mapping[str, Any] | None]:
    """Each claim's outcome from summary.json: None when its file succeeded, else its error."""
    entries = {str(entry.get("path")): entry for entry in summary.get("files", [])}
    outcomes: dict[str, Mapping[str, Any] | None] = {}
    for item, relpath in zip(files, run_relpaths, strict=True):
        entry = entries.get(relpath)
        if entry is None:
            outcomes[item.claim_id] = {
                "reason": "missing from the run's summary",
                "run_id": summary.get("run_id"),
            }
        elif entry.get("status") == "succeeded":
            outcomes[item.claim_id] = None
        else:
            outcomes[item.claim_id] = {"reason": "the file's task failed", "error": entry.get("error")}
    return outcomes


class BatchRunner:
    """Runs batches on the daemon's shared services."""

    def __init__(
        self,
        services: Services,
        store: IntakeStore,
        claimer: Claimer,
        folders: DaemonFolders,
        metrics: DaemonMetrics,
        on_failure: Callable[[str, str], None],
        pool: PoolSupply,
    ) -> None:
        self._pool = pool
        self._services = services
        self._store = store
        self._claimer = claimer
        self._folders = folders
        self._metrics = metrics
        self._on_failure = on_failure

    async def run(self, batch_id: str, progress: BatchProgress) -> str:
        """The batch to its end; returns its outcome (`succeeded`/`failed`). Cancellation leaves it queued."""
        services = self._services
        settings = daemon_run_settings(services.settings)
        files = [item for item in await self._store.batch_files(batch_id) if item.state != "duplicate"]
        record = await services.journal.load_run(batch_id)
        if record is None:
            # A batch with a run was admitted before its run began. Its job now comes from the resume
            # (the one it has, or a successor, each waiting out the quota): admitting it again could
            # make an empty first job that nothing would ever end.
            await self._admit(settings, batch_id, progress)
        started = time.monotonic()
        run_relpaths = make_relpaths_unique([item.relpath for item in files])
        summary: Mapping[str, Any]
        while True:
            if record is None or record.state in BEFORE_TASKS_IN_BATCH:
                # Uploads and submission are ahead: the drain gives them its grace. Left at
                # "admitting" until the first upload landed, a batch stuck on its first request
                # (Storage down) was dropped at once, as if its tasks were already in Batch.
                progress.stage = "staging"
            try:
                summary = await self._run_once(settings, batch_id, files, run_relpaths, record, progress)
                break
            except Exception as error:
                if not leaves_run_resumable(error):
                    summary = {"run_id": batch_id, "files": [], "error": redact_text(str(error))[:500]}
                    break
                log.warning(
                    "daemon.batch_interrupted", batch_id=batch_id, error=redact_text(str(error))[:300]
                )
                await anyio.sleep(RETRY_AFTER_INTERRUPTION_S)
                record = await services.journal.load_run(batch_id)
        progress.stage = "finishing"
        outcomes = file_outcomes(files, run_relpaths, summary)
        if "error" in summary:  # the whole run failed: every file says why
            outcomes = {
                item.claim_id: {"reason": "the batch's run failed", "error": summary["error"]}
                for item in files
            }
        await self._claimer.finish(files, outcomes)
        failed = [claim for claim, error in outcomes.items() if error is not None]
        outcome = "failed" if failed else "succeeded"
        await self._store.set_batch_state(batch_id, "finished", outcome)
        self._record_metrics(files, outcomes, summary, outcome, time.monotonic() - started)
        for item in files:
            reason = outcomes.get(item.claim_id)
            if reason is not None:
                self._on_failure(item.relpath, str(reason.get("reason")))
        log.info(
            "daemon.batch_finished",
            batch_id=batch_id,
            outcome=outcome,
            files=len(files),
            files_failed=len(failed),
        )
        return outcome

    async def _admit(self, settings: Settings, batch_id: str, progress: BatchProgress) -> None:
        refusals = 0
        while True:
            admission = await admit(settings, self._services.clients, batch_id)
            if admission is not Admission.QUOTA:
                break
            refusals += 1
            self._metrics.quota_refusals.inc()
            wait_s = quota_backoff_s(refusals, settings.daemon.quota_backoff_max_s)
            progress.stage = "waiting_quota"
            log.info("daemon.batch_quota_wait", batch_id=batch_id, refusals=refusals, wait_s=wait_s)
            await anyio.sleep(wait_s)
        progress.stage = "admitting"
        await self._store.set_batch_state(batch_id, "admitted")

    async def _run_once(
        self,
        settings: Settings,
        batch_id: str,
        files: Sequence[IntakeFile],
        run_relpaths: Sequence[str],
        record: RunRecord | None,
        progress: BatchProgress,
    ) -> Mapping[str, Any]:
        services = self._services
        sink = _ProgressSink(progress, self._metrics)
        quota_refused = self._quota_refused
        if record is not None and record.is_finished:
            return await anyio.to_thread.run_sync(read_summary, resumed_out_dir(record))
        if record is not None:
            # Failed by Storage (a download, an upload): run again, as `topn resume` does.
            record = await reopen_for_retry(services.journal, record, retry_failed=False)
            return await run_pipeline(
                resumed_settings(settings, record.settings_snapshot),
                resumed_inputs(record),
                services.clients,
                resumed_out_dir(record),
                pool=self._pool,
                journal=services.journal,
                progress=sink,
                resume=record,
                on_quota_wait=quota_refused,
            )
        inputs = [
            InputFile(path=item.claimed_path, relpath=relpath, size_bytes=item.size_bytes)
            for item, relpath in zip(files, run_relpaths, strict=True)
        ]
        return await run_pipeline(
            settings,
            inputs,
            services.clients,
            self._folders.outbox / batch_id,
            pool=self._pool,
            run_id=batch_id,
            journal=services.journal,
            progress=sink,
            on_quota_wait=quota_refused,
        )

    def _quota_refused(self, refusals: int, wait_s: float) -> None:
        """A run's job met the active-jobs quota (a resumed batch's successor, say): it waits, counted."""
        self._metrics.quota_refusals.inc()

    def _record_metrics(
        self,
        files: Sequence[IntakeFile],
        outcomes: Mapping[str, Mapping[str, Any] | None],
        summary: Mapping[str, Any],
        outcome: str,
        duration_s: float,
    ) -> None:
        metrics = self._metrics
        task_failed: dict[str, bool] = {}
        for entry in summary.get("files", []):
            task_id = str(entry.get("task_id"))
            task_failed[task_id] = task_failed.get(task_id, False) or entry.get("status") != "succeeded"
        for failed in task_failed.values():
            metrics.tasks_completed.labels(outcome="failed" if failed else "succeeded").inc()
        metrics.batches.labels(outcome=outcome).inc()
        metrics.batch_duration.observe(duration_s)
        for item in files:
            if outcomes.get(item.claim_id) is not None:
                metrics.inputs_failed.inc()
            metrics.input_latency.observe(max(0.0, age_s(item.complete_at)))


def run_out_dir(folders: DaemonFolders, batch_id: str) -> Path:
    return folders.outbox / batch_id
