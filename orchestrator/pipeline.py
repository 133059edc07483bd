"""The run state machine (DESIGN §3): one run from the user's files to results on disk.

    CREATED → PREPARING { staging ‖ provisioning } → SUBMITTING → RUNNING (+ collecting as tasks finish)
            → COLLECTING → CLEANING → SUCCEEDED | FAILED | CANCELLED

Each transition is written to the journal before the next state's side effects start, and is
emitted as `run.state_changed`. Every side effect is idempotent (see the stage modules), so a
resumed state is safe to redo: `run_pipeline(..., resume=record)` continues a journalled run from
its recorded state (docs/journal.md). Clean-up runs shielded at the end, and after a failure that
cannot be resumed; an interrupted run (signal, dead endpoint, deadline) is left for `topn resume`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import anyio
import structlog
from azure.batch.models import (
    AutoUserSpecification,
    BatchJobConstraints,
    BatchJobCreateOptions,
    BatchJobUpdateOptions,
    BatchPoolInfo,
    BatchTaskConstraints,
    BatchTaskCreateOptions,
    EnvironmentSetting,
    ResourceFile,
    UserIdentity,
)
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from orchestrator import collect, monitor, naming, pool, resume, sas, staging, submit
from orchestrator.clients import BATCH, STORAGE, Clients
from orchestrator.errors import InputError, RunFailedError, ServiceUnavailableError, TopnError
from orchestrator.inputs import InputFile
from orchestrator.journal import Journal, JournalInput, RunRecord, outcome_succeeded
from orchestrator.results import (
    FileCounts,
    RunCounts,
    build_summary,
    claim_results_folder,
    failure_details,
    file_entry,
    top_of,
    write_summary,
)
from orchestrator.retry import RetryPolicy, error_code_of, retry_call
from orchestrator.sas import DelegationKeyProvider
from orchestrator.settings import Settings

log = structlog.get_logger()

CLEANUP_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 3.0
# A job that ended (or is ending) on its own once every task was added and finished.
JOB_ENDED_CODES = frozenset({"JobCompleted", "JobBeingTerminated"})


class RunState(StrEnum):
    """The states a run moves through (names as the journal stores them)."""

    CREATED = "CREATED"
    PREPARING = "PREPARING"
    SUBMITTING = "SUBMITTING"
    RUNNING = "RUNNING"
    COLLECTING = "COLLECTING"
    CLEANING = "CLEANING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


_FORWARD = [RunState.CREATED, RunState.PREPARING, RunState.SUBMITTING, RunState.RUNNING, RunState.COLLECTING]
TERMINAL = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})
ALLOWED: dict[RunState, frozenset[RunState]] = {
    **{
        state: frozenset({_FORWARD[index + 1], RunState.CLEANING})
        for index, state in enumerate(_FORWARD[:-1])
    },
    RunState.COLLECTING: frozenset({RunState.CLEANING}),
    RunState.CLEANING: TERMINAL,
    **{state: frozenset() for state in TERMINAL},
}


class RunDeadlineError(RunFailedError):
    """The run reached `[run] run_timeout_s`; it stays resumable."""


class TransitionError(RuntimeError):
    """A transition the state machine does not have (a bug, never a user error)."""


def check_transition(current: RunState, target: RunState) -> None:
    """Raise TransitionError unless `current → target` is an edge of the state machine."""
    if target not in ALLOWED[current]:
        raise TransitionError(f"a run cannot go from {current} to {target}")


class StateRecorder(Protocol):
    """Where transitions are made durable (the journal, or nothing)."""

    async def record_state(self, run_id: str, state: str) -> None: ...


class RunStateMachine:
    """The current state; each move is journalled first, then announced."""

    def __init__(
        self, run_id: str, journal: StateRecorder | None, state: RunState = RunState.CREATED
    ) -> None:
        self.run_id = run_id
        self.state = state  # a resumed run starts where its journal says it stopped
        self._journal = journal

    def reached(self, target: RunState) -> bool:
        """Whether the run is already at or past `target` on the forward path (a resumed run skips those)."""
        order = [*_FORWARD, RunState.CLEANING]
        if self.state in TERMINAL or target not in order:
            return self.state in TERMINAL
        return order.index(self.state) >= order.index(target)

    async def advance(self, target: RunState) -> None:
        """Move to `target` unless a resumed run is already there or past it."""
        if not self.reached(target):
            await self.move(target)

    async def move(self, target: RunState) -> None:
        check_transition(self.state, target)
        if self._journal is not None:
            await self._journal.record_state(self.run_id, target.value)
        log.info("run.state_changed", from_state=self.state.value, to_state=target.value)
        self.state = target


class ProgressSink(Protocol):
    """Receives progress for a display (the CLI renders it with rich on a terminal).

    Stages: "staging" (files uploaded of all files), "running" (tasks completed of all tasks),
    "collecting" (files whose results are saved, of all files).
    """

    def update(self, stage: str, done: int, total: int) -> None: ...


def build_node_script() -> bytes:
    """Pack the node script (node.pack builds the zipapp; no node code runs in this process)."""
    pack = importlib.import_module("node.pack")
    with tempfile.TemporaryDirectory(prefix="topn-node-") as folder:
        path: Path = pack.build_zipapp(Path(folder) / "node.pyz")
        return path.read_bytes()


def settings_snapshot(settings: Settings) -> dict[str, Any]:
    """The settings as JSON data for the journal (which strips the secrets again, to be sure)."""
    data = dataclasses.asdict(settings)
    for section in ("batch", "storage"):
        data[section]["account_key"] = None
    snapshot: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return snapshot


async def run_pipeline(
    settings: Settings,
    inputs: Sequence[InputFile],
    clients: Clients,
    out_dir: Path,
    *,
    run_id: str | None = None,
    journal: Journal | None = None,
    progress: ProgressSink | None = None,
    node_script: bytes | None = None,
    max_files_per_task: int | None = None,
    resume: RunRecord | None = None,
) -> dict[str, Any]:
    """Run the whole workflow for `inputs`; returns summary.json's content (also written to out_dir).

    `node_script` replaces the packed node (tests); `max_files_per_task` (default `[run]
    max_files_per_task`) = 1 gives one task per file. `resume` continues that journalled run (see
    orchestrator/resume.py, which builds the inputs and settings from it).
    """
    if not inputs:
        raise InputError("no input files to process")
    if resume is not None:
        run_id = resume.run_id
    run_id = run_id or naming.new_run_id()
    structlog.contextvars.bind_contextvars(run_id=run_id)
    claim_results_folder(out_dir, run_id)  # before anything is created: exit 2 leaves no trace
    per_task = max_files_per_task if max_files_per_task is not None else settings.run.max_files_per_task
    run = _Run(
        settings, list(inputs), clients, out_dir, run_id, journal, progress, node_script, per_task, resume
    )
    return await run.execute()


@dataclasses.dataclass
class _FileResult:
    entry: dict[str, Any]
    succeeded: bool


class _Run:
    """One run's working state; methods are the states' side effects, in order."""

    def __init__(
        self,
        settings: Settings,
        inputs: list[InputFile],
        clients: Clients,
        out_dir: Path,
        run_id: str,
        journal: Journal | None,
        progress: ProgressSink | None,
        node_script: bytes | None,
        max_files_per_task: int,
        resume: RunRecord | None = None,
    ) -> None:
        self.settings = settings
        self.inputs = inputs
        self.clients = clients
        self.batch = clients.batch
        self.blobs = clients.blob_service
        self.out_dir = out_dir
        self.run_id = run_id
        self.journal = journal
        self.progress = progress
        self.node_script = node_script
        self.retry: RetryPolicy = settings.retry
        self.resume = resume
        self.machine = RunStateMachine(
            run_id, journal, RunState(resume.state) if resume else RunState.CREATED
        )
        prefix = settings.storage.container_prefix
        self.app_container = naming.app_container(prefix)
        self.input_container = naming.input_container(prefix)
        self.output_container = naming.output_container(prefix, run_id)
        self.job_id = naming.job_id(run_id)
        pool_settings = settings.pool
        slots = max(1, pool_settings.dedicated_nodes + pool_settings.low_priority_nodes)
        if resume is not None:  # the work units the run started with, never a new plan
            self.task_ids = list(resume.task_ids)
            index_of = {item.relpath: index for index, item in enumerate(inputs)}
            by_task = resume.inputs_by_task
            self.units = [[index_of[item.relpath] for item in by_task[task_id]] for task_id in self.task_ids]
        else:
            self.units = naming.plan_work_units(
                [item.size_bytes for item in inputs],
                slots * pool_settings.task_slots_per_node,
                command_chars=[naming.command_chars(item.relpath) for item in inputs],
                max_files_per_unit=max_files_per_task,
            )
            self.task_ids = [naming.task_id(unit_index) for unit_index in range(len(self.units))]
        self.unit_by_task = {task_id: unit_index for unit_index, task_id in enumerate(self.task_ids)}
        self.stage_s: dict[str, float] = {}
        self.pool_created = False
        self.job_created = False
        self.job_is_new = True  # False when a resumed run found its job still there
        self.staged: list[staging.StagedInput] = []
        self.results: dict[int, _FileResult] = {}
        self.run_counts = RunCounts()
        self.sas: staging.SasMinter | None = None
        self.task_script_url: str | None = None  # set when tasks must carry the node script
        self.started = time.monotonic()
        # When this run's `run_timeout_s` ends (wall clock): what a resumed run's old SAS must outlive.
        self.deadline_at: datetime | None = None

    # ------------------------------------------------------------------ the flow

    async def execute(self) -> dict[str, Any]:
        if self.journal is not None and self.resume is None:
            await self.journal.create_run(
                self.run_id, settings_snapshot(self.settings), self._journal_inputs(), out_dir=self.out_dir
            )
        log.info(
            "run.started",
            files=len(self.inputs),
            bytes=sum(item.size_bytes for item in self.inputs),
            config_path=str(self.settings.source),
            local_mode=self.settings.local.enabled,
        )
        if self.resume is not None:
            record = self.resume
            log.info(
                "run.resumed",
                from_state=self.machine.state.value,
                uploads_kept=len(record.uploads),
                tasks_submitted=len(record.submitted_task_ids),
                tasks_completed=len(record.completed),
                outputs_saved=len(record.downloads),
            )
        try:
            if self.machine.reached(RunState.CLEANING):
                summary = self._written_summary()  # written before CLEANING began
            else:
                self.deadline_at = sas.utc_now() + timedelta(seconds=self.settings.run.run_timeout_s)
                with anyio.fail_after(self.settings.run.run_timeout_s):
                    await self.machine.advance(RunState.PREPARING)
                    await self._prepare()
                    await self.machine.advance(RunState.SUBMITTING)
                    await self._submit()
                    await self.machine.advance(RunState.RUNNING)
                    await self._run_and_collect()
                failed_files = sum(1 for result in self.results.values() if not result.succeeded)
                summary = self._summary(RunState.FAILED if failed_files else RunState.SUCCEEDED)
                # Before CLEANING: a resume from CLEANING needs nothing that clean-up deletes.
                write_summary(self.out_dir, summary)
                await self.machine.move(RunState.CLEANING)
            final = RunState(summary["state"])
            failed = int(summary.get("totals", {}).get("failed", 0))
            self.job_created = True  # the job exists by now (a resumed CLEANING redoes its deletion)
            await self._cleanup(failed=False)
        except BaseException as error:
            reported = await self._fail(error)
            if reported is error:
                raise
            raise reported from None
        await self.machine.move(final)
        log.info(
            "run.completed",
            state=final.value,
            files_succeeded=int(summary.get("totals", {}).get("succeeded", 0)),
            files_failed=failed,
            duration_s=round(time.monotonic() - self.started, 3),
            staging_s=self.stage_s.get("staging", 0.0),
            provisioning_s=self.stage_s.get("provisioning", 0.0),
            submitting_s=self.stage_s.get("submitting", 0.0),
            running_s=self.stage_s.get("running", 0.0),
            collecting_s=self.stage_s.get("collecting", 0.0),
            batch_requests=self.clients.requests.total(BATCH),
            storage_requests=self.clients.requests.total(STORAGE),
        )
        return summary

    async def _prepare(self) -> None:
        """Containers, SAS; then uploads ‖ (node script → pool → job → usable nodes)."""
        self.sas = await staging.make_sas_minter(
            account_url=self.settings.storage.blob_endpoint,
            account_name=self.settings.storage.account_name,
            account_key=self.clients.storage_account_key,
            delegation_source=(
                cast(DelegationKeyProvider, self.blobs) if self.clients.storage_account_key is None else None
            ),
            run_timeout_s=self.settings.run.run_timeout_s,
            margin_s=self.settings.run.sas_margin_s,
        )
        if self.resume is None:  # a resumed run records them once no task carries older ones
            await self._record_sas_expiries()
        await staging.ensure_containers(
            self.blobs, [self.app_container, self.input_container, self.output_container], self.retry
        )
        async with anyio.create_task_group() as group:
            group.start_soon(self._stage_inputs)
            group.start_soon(self._provision)

    async def _stage_inputs(self) -> None:
        started = time.monotonic()
        done = 0

        async def uploaded(item: staging.StagedInput) -> None:
            nonlocal done
            done += 1
            if self.journal is not None:
                await self.journal.record_upload(self.run_id, item.relpath, item.md5_hex, item.blob_name)
            if self.progress is not None:
                self.progress.update("staging", done, len(self.inputs))

        kept = await self._uploads_to_keep()
        done = len(kept)
        pending = [item for item in self.inputs if item.relpath not in kept]
        fresh = await staging.upload_inputs(
            self.blobs,
            self.input_container,
            self.run_id,
            pending,
            concurrency=self.settings.run.upload_concurrency,
            retry=self.retry,
            on_uploaded=uploaded,
        )
        by_relpath = {**kept, **{item.relpath: item for item in fresh}}
        # upload_inputs numbers what it was given; the run numbers all its inputs.
        self.staged = [
            dataclasses.replace(by_relpath[item.relpath], index=index)
            for index, item in enumerate(self.inputs)
        ]
        self.stage_s["staging"] = round(time.monotonic() - started, 3)

    async def _uploads_to_keep(self) -> dict[str, staging.StagedInput]:
        """A resumed run's recorded uploads whose local file is unchanged (size and mtime, else MD5)."""
        if self.resume is None:
            return {}
        record = self.resume
        unsubmitted = set(record.unsubmitted_task_ids)
        pending = {item.relpath for item in record.pending_uploads}
        kept: dict[str, staging.StagedInput] = {}
        # One worker-thread trip for every stat: thousands of files must not stall the event loop.
        stats = await anyio.to_thread.run_sync(lambda: [_stat_of(Path(item.path)) for item in record.inputs])
        for index, item in enumerate(record.inputs):
            upload = record.uploads.get(item.relpath)
            if upload is None or item.relpath in pending:
                continue
            path = Path(item.path)
            unchanged = stats[index] == (item.size_bytes, item.mtime_ns)
            if not unchanged:
                unchanged = await anyio.to_thread.run_sync(_md5_hex_of, path) == upload.md5_hex
            if not unchanged and item.task_id in unsubmitted:
                # Changed before its task was submitted: upload it again, and count what it is now.
                position = next(at for at, known in enumerate(self.inputs) if known.relpath == item.relpath)
                self.inputs[position] = dataclasses.replace(self.inputs[position], size_bytes=stats[index][0])
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
        return kept

    async def _provision(self) -> None:
        started = time.monotonic()
        script = (
            self.node_script
            if self.node_script is not None
            else await anyio.to_thread.run_sync(build_node_script)
        )
        blob_name = await staging.stage_node_script(self.blobs, self.app_container, script, self.retry)
        assert self.sas is not None
        script_url = self.sas.blob_read_url(self.app_container, blob_name)
        pool_settings = self.settings.pool
        start_command = pool_settings.start_task_command or naming.start_task_command_line()
        self.pool_created = await pool.ensure_pool(
            self.batch, pool_settings, script_url, start_command, self.retry
        )
        if not self.pool_created and not await pool.pool_stages_script(
            self.batch, pool_settings.id, blob_name, self.retry
        ):
            # A reused pool whose nodes hold another node script: each task brings this one along.
            log.warning("pool.node_script_outdated", pool_id=pool_settings.id, node_script_blob=blob_name)
            self.task_script_url = script_url
        await self._create_job()  # tasks may queue while the nodes boot
        await pool.wait_until_usable(
            self.batch,
            pool_settings.id,
            timeout_s=pool_settings.ready_timeout_s,
            retry=self.retry,
            created=self.pool_created,
        )
        self.stage_s["provisioning"] = round(time.monotonic() - started, 3)

    async def _create_job(self) -> None:
        run = self.settings.run
        job = BatchJobCreateOptions(
            id=self.job_id,
            pool_info=BatchPoolInfo(pool_id=self.settings.pool.id),
            # noaction until every task is added: a job with zero tasks counts as complete.
            all_tasks_complete_mode="noaction",
            constraints=BatchJobConstraints(
                max_wall_clock_time=timedelta(seconds=run.run_timeout_s),
                max_task_retry_count=run.task_max_retries,
            ),
        )
        # JobExists means a resumed run: the job is ours (its id holds our run id).
        try:
            await retry_call(self.retry, "create_job", lambda: self.batch.create_job(job))
            self.job_is_new = True
        except ResourceExistsError:
            self.job_is_new = False
        self.job_created = True

    async def _submit(self) -> None:
        """Add the tasks not yet recorded as added (all, unless resumed), then let the job end with them."""
        started = time.monotonic()
        unsubmitted = set(self.task_ids)
        old_sas_left = False
        if self.resume is not None:
            # A job that had to be created again (deleted, or a Batch account that forgot it) holds
            # none of the tasks the journal saw added: every unfinished one goes in again.
            recorded = self.resume.unsubmitted_task_ids if not self.job_is_new else self.task_ids
            unsubmitted = set(recorded) - set(self.resume.completed)
            if not self.job_is_new:
                renewed, old_sas_left = await self._renew_expiring_tasks()
                unsubmitted |= set(renewed)
        tasks = [
            self._task(unit_index, unit)
            for unit_index, unit in enumerate(self.units)
            if self.task_ids[unit_index] in unsubmitted
        ]

        async def added(task_ids: Sequence[str]) -> None:
            if self.journal is not None:
                await self.journal.record_tasks_submitted(self.run_id, task_ids)
            log.debug("tasks.chunk_added", job_id=self.job_id, tasks=len(task_ids))

        report = await submit.submit_tasks(
            self.batch,
            self.job_id,
            tasks,
            concurrency=self.settings.run.submit_concurrency,
            retry=self.retry,
            on_chunk_added=added,
            max_tasks_per_request=self.settings.run.submit_chunk_tasks,
        )
        update = BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob")
        if self.resume is not None and not self.job_is_new:
            update.constraints = self._resumed_job_constraints()
        try:
            await retry_call(self.retry, "update_job", lambda: self.batch.update_job(self.job_id, update))
        except HttpResponseError as error:
            # A resumed run whose tasks all finished while topn was down: the job ended on its own.
            if error_code_of(error) not in JOB_ENDED_CODES or tasks:
                raise
        if self.resume is not None and not old_sas_left and not report.already_existed:
            # Every task this run awaits carries this run's SAS now (TaskExists would mean an older one).
            await self._record_sas_expiries()
        duration = round(time.monotonic() - started, 3)
        self.stage_s["submitting"] = duration
        log.info(
            "tasks.submitted",
            job_id=self.job_id,
            tasks=report.tasks_added,
            requests=report.requests,
            duration_s=duration,
        )

    def _resumed_job_constraints(self) -> BatchJobConstraints:
        """The old job's constraints with a wall clock that lasts to this run's deadline.

        The job's `maxWallClockTime` counts from its creation and was set to the first run's
        `run_timeout_s`; the service would end a job resumed later than that under the run. The run
        was created before its job, so counting from the run's creation is a bound that lasts.
        """
        assert self.resume is not None and self.deadline_at is not None
        lasting = self.deadline_at - self.resume.created_at
        return BatchJobConstraints(
            max_wall_clock_time=timedelta(seconds=math.ceil(lasting.total_seconds())),
            max_task_retry_count=self.settings.run.task_max_retries,
        )

    async def _record_sas_expiries(self) -> None:
        if self.journal is not None and self.sas is not None:
            for purpose in resume.SAS_PURPOSES:
                await self.journal.record_sas_expiry(self.run_id, purpose, self.sas.expires_at)

    async def _renew_expiring_tasks(self) -> tuple[list[str], bool]:
        """A resumed run's tasks whose SAS end before its deadline: delete the unstarted ones, to add again.

        Returns (ids to add with fresh SAS, whether tasks with the old SAS stay in the job). Decided from
        the journal when it can be: SAS that outlive the deadline cost no request; otherwise one listing
        of the job's tasks (id and state only) shows which are active, started, or missing.
        """
        assert self.resume is not None and self.deadline_at is not None
        record = self.resume
        awaited = [task_id for task_id in self.task_ids if task_id not in record.completed]
        submitted_before = set(record.submitted_task_ids)
        if not awaited:
            return [], False
        if not resume.sas_expire_before(record.sas_expiries, self.deadline_at):
            return [], any(task_id in submitted_before for task_id in awaited)

        async def listing() -> dict[str, str]:
            found = self.batch.list_tasks(self.job_id, select=["id", "state"])
            return {str(task.id): monitor.wire_value(task.state) or "" async for task in found}

        states = await retry_call(self.retry, "list_tasks", listing)
        plan = resume.plan_sas_refresh(awaited, states)
        if plan.replace:
            # With `terminatejob` set, deleting the last unfinished tasks would end the job before they
            # are added again; `_submit` sets it back once they are in.
            hold = BatchJobUpdateOptions(all_tasks_complete_mode="noaction")
            await retry_call(self.retry, "update_job", lambda: self.batch.update_job(self.job_id, hold))
        limiter = anyio.CapacityLimiter(self.settings.run.submit_concurrency)
        async with anyio.create_task_group() as group:
            for task_id in plan.replace:
                group.start_soon(self._delete_task, task_id, limiter)
        log.info(
            "tasks.resubmitted",
            job_id=self.job_id,
            tasks=len(plan.replace),
            missing=len([task_id for task_id in plan.add if task_id in submitted_before]),
            running_kept=len(plan.kept_started),
            reason="sas_expiring",
        )
        return [*plan.replace, *plan.add], bool(plan.kept_started)

    async def _delete_task(self, task_id: str, limiter: anyio.CapacityLimiter) -> None:
        async with limiter:
            with contextlib.suppress(ResourceNotFoundError):  # gone already: it is added again all the same
                await retry_call(
                    self.retry, "delete_task", lambda: self.batch.delete_task(self.job_id, task_id)
                )

    def _task(self, unit_index: int, unit: Sequence[int]) -> BatchTaskCreateOptions:
        """The task of one work unit: its inputs as resource files under safe names, one command."""
        assert self.sas is not None
        run = self.settings.run
        staged = [self.staged[index] for index in unit]
        files = [(naming.node_input_path(item.index, item.relpath), item.relpath) for item in staged]
        resource_files = [
            ResourceFile(
                http_url=self.sas.blob_read_url(self.input_container, item.blob_name), file_path=node_input
            )
            for item, (node_input, _) in zip(staged, files, strict=True)
        ]
        script = naming.NODE_SCRIPT_PATH
        if self.task_script_url is not None:
            resource_files.append(
                ResourceFile(http_url=self.task_script_url, file_path=naming.TASK_NODE_SCRIPT_PATH)
            )
            script = naming.TASK_NODE_SCRIPT_PATH
        return BatchTaskCreateOptions(
            id=self.task_ids[unit_index],
            command_line=naming.task_command_line(
                files,
                top=run.top,
                tokenizer=run.tokenizer,
                python=self.settings.pool.node_python,
                script=script,
            ),
            resource_files=resource_files,
            environment_settings=[
                EnvironmentSetting(
                    name=naming.OUTPUT_SAS_VARIABLE, value=self.sas.container_write_url(self.output_container)
                )
            ],
            constraints=BatchTaskConstraints(
                max_wall_clock_time=timedelta(seconds=run.task_max_wall_clock_s),
                max_task_retry_count=run.task_max_retries,
            ),
            user_identity=UserIdentity(
                auto_user=AutoUserSpecification(scope="pool", elevation_level="nonadmin")
            ),
        )

    async def _run_and_collect(self) -> None:
        """Watch the job; download each success the moment it is seen; then wait for the last downloads."""
        started = time.monotonic()
        send, receive = anyio.create_memory_object_stream[monitor.TaskOutcome](
            max_buffer_size=len(self.task_ids)
        )
        limiter = anyio.CapacityLimiter(self.settings.run.download_concurrency)
        total = len(self.task_ids)
        # A resumed run's recorded completions are final: neither awaited nor reported again.
        finished = dict(self.resume.completed) if self.resume is not None else {}
        awaited = [task_id for task_id in self.task_ids if task_id not in finished]

        def counts_moved(counts: monitor.Counts) -> None:
            if self.progress is not None:
                self.progress.update("running", counts.completed, total)

        async with anyio.create_task_group() as group:
            for task_id, recorded in finished.items():
                group.start_soon(self._settle_recorded_task, task_id, recorded, limiter)
            if not self.machine.reached(RunState.COLLECTING):
                group.start_soon(
                    lambda: monitor.watch_job(
                        self.batch,
                        self.job_id,
                        awaited,
                        send,
                        poll_min_s=self.settings.run.poll_min_s,
                        poll_max_s=self.settings.run.poll_max_s,
                        retry=self.retry,
                        on_counts=counts_moved,
                        # Recorded completions still count in the job's totals, unless it is a new job.
                        already_completed=0 if self.job_is_new else len(finished),
                    )
                )
                async with receive:
                    async for outcome in receive:
                        group.start_soon(self._handle_outcome, outcome, limiter)
            self.stage_s["running"] = round(time.monotonic() - started, 3)
            collecting_started = time.monotonic()
            await self.machine.advance(RunState.COLLECTING)
        self.stage_s["collecting"] = round(time.monotonic() - collecting_started, 3)

    async def _settle_recorded_task(
        self, task_id: str, recorded: Mapping[str, Any], limiter: anyio.CapacityLimiter
    ) -> None:
        """A task the journal saw finish: rebuild its files' results, collecting only what was not saved."""
        assert self.resume is not None
        record = self.resume
        outcome = monitor.TaskOutcome(
            task_id=task_id,
            succeeded=outcome_succeeded(recorded),
            exit_code=recorded.get("exit_code"),
            failure_code=recorded.get("failure_code"),
            failure_message=recorded.get("message"),
            node_id=None,
            duration_s=None,
        )
        failed = set(record.failed_relpaths)
        to_collect: list[int] = []
        for index in self.units[self.unit_by_task[task_id]]:
            relpath = self.inputs[index].relpath
            saved = record.downloads.get(relpath)
            if relpath in failed:
                details = record.file_error(relpath)
                self.results[index] = _FileResult(
                    file_entry(relpath, task_id=task_id, succeeded=False, error=details), succeeded=False
                )
            elif saved is not None and _stat_of(Path(saved.local_path))[0] == saved.size_bytes:
                # Saved already: its counts come from the counts blob, the file is not fetched again.
                counts = await collect.read_counts(self.blobs, self.output_container, relpath, self.retry)
                self._add_success(index, task_id, counts)
            else:
                to_collect.append(index)
        if not to_collect:
            return
        tail = message = ""
        if not outcome.succeeded:
            tail = await collect.task_stderr_tail(self.batch, self.job_id, task_id, self.retry)
            message = outcome.failure_message or f"the task exited with code {outcome.exit_code}"
        async with anyio.create_task_group() as group:
            for index in to_collect:
                group.start_soon(self._collect_file, index, outcome, limiter, message, tail)

    async def _handle_outcome(self, outcome: monitor.TaskOutcome, limiter: anyio.CapacityLimiter) -> None:
        """Collect every file of a finished work unit (each download bounded by `limiter`)."""
        unit = self.units[self.unit_by_task[outcome.task_id]]
        if self.journal is not None:
            await self.journal.record_task_completed(
                self.run_id,
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
            tail = await collect.task_stderr_tail(self.batch, self.job_id, outcome.task_id, self.retry)
            message = outcome.failure_message or f"the task exited with code {outcome.exit_code}"
            if len(unit) == 1:  # nothing to salvage: the node's only input failed
                await self._record_failure(unit[0], outcome, message, tail)
                return
        async with anyio.create_task_group() as group:
            for index in unit:
                group.start_soon(self._collect_file, index, outcome, limiter, message, tail)

    async def _collect_file(
        self,
        index: int,
        outcome: monitor.TaskOutcome,
        limiter: anyio.CapacityLimiter,
        message: str,
        tail: str,
    ) -> None:
        """One file of a finished unit: its outputs if the node wrote them, else a failure."""
        relpath = self.inputs[index].relpath
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
                    self.blobs, self.output_container, relpath, self.out_dir, self.retry
                )
            except collect.OutputUnusableError as error:
                await self._record_failure(index, outcome, message or str(error), tail)
                return
            except HttpResponseError as error:  # retries spent: this file fails, the run goes on
                reason = f"its outputs could not be downloaded: {submit.describe_http_error(error)}"
                await self._record_failure(index, outcome, message or reason, tail)
                return
        self._add_success(index, outcome.task_id, saved.counts)
        if self.journal is not None:
            await self.journal.record_output_downloaded(
                self.run_id, relpath, str(saved.local_path), saved.size_bytes
            )
        log.info("output.downloaded", task_id=outcome.task_id, file=relpath, bytes=saved.size_bytes)
        if self.progress is not None:
            self.progress.update("collecting", len(self.results), len(self.inputs))

    def _add_success(self, index: int, task_id: str, counts: FileCounts) -> None:
        relpath = self.inputs[index].relpath
        self.run_counts.add(index, counts.counts)
        self.results[index] = _FileResult(
            file_entry(
                relpath,
                task_id=task_id,
                succeeded=True,
                top=top_of(counts.counts, self.settings.run.top),
                words=counts.words,
                output=naming.output_name(relpath),
            ),
            succeeded=True,
        )

    async def _record_failure(
        self, index: int, outcome: monitor.TaskOutcome, message: str, tail: str
    ) -> None:
        relpath = self.inputs[index].relpath
        details = failure_details(
            exit_code=outcome.exit_code, failure_code=outcome.failure_code, message=message, stderr_tail=tail
        )
        self.results[index] = _FileResult(
            file_entry(relpath, task_id=outcome.task_id, succeeded=False, error=details), succeeded=False
        )
        if self.journal is not None:  # what a resumed run's summary entry is rebuilt from
            await self.journal.record_file_failed(self.run_id, relpath, details)
        log.warning(
            "task.failed",
            task_id=outcome.task_id,
            file=relpath,
            exit_code=outcome.exit_code,
            failure_code=outcome.failure_code,
            stderr_tail=tail,
        )

    # ------------------------------------------------------------------ endings

    async def _fail(self, error: BaseException) -> BaseException:
        """Shielded: say why the run stopped; clean up and record FAILED only if it cannot be resumed.

        An interrupted run (SIGINT/SIGTERM), one whose service stopped answering and one past its
        deadline are left as they are - job, pool and blobs in place, the journal at the state
        reached - so `topn resume` continues them. Returns the error to raise: ours as is, anything
        else explained (which service, which endpoint).
        """
        leaf = submit.first_leaf(error) if isinstance(error, BaseExceptionGroup) else error
        cancelled = isinstance(leaf, (anyio.get_cancelled_exc_class(), KeyboardInterrupt))
        if cancelled:
            log.warning(
                "run.interrupted",
                state=self.machine.state.value,
                resume_command=f"topn resume {self.run_id}",
                duration_s=round(time.monotonic() - self.started, 3),
            )
            return error
        with anyio.CancelScope(shield=True):
            reported = await self._explain(leaf)
            # A service that stopped answering, or the run's deadline, costs time, not the run: it is
            # left in place (not cleaned up, not marked finished) for `topn resume`.
            resumable = isinstance(reported, ServiceUnavailableError | RunDeadlineError)
            if resumable:
                reported = type(reported)(
                    f"{reported}. Once that is fixed, `topn resume {self.run_id}` continues this run"
                )
            else:
                await self._clean_up_failed_run()
            log.error(
                "run.failed",
                error_type=type(reported).__name__,
                error=str(reported),
                resumable=resumable,
                duration_s=round(time.monotonic() - self.started, 3),
            )
        return reported

    async def _clean_up_failed_run(self) -> None:
        """A run that cannot go on: delete what config says to, then record FAILED."""
        try:
            if self.machine.state not in TERMINAL and self.machine.state != RunState.CLEANING:
                await self.machine.move(RunState.CLEANING)
            await self._cleanup(failed=True)
        except Exception as cleanup_error:  # clean-up must never hide the run's own error
            log.warning(
                "cleanup.failed", error_type=type(cleanup_error).__name__, error=str(cleanup_error)[:300]
            )
        if self.machine.state == RunState.CLEANING:
            await self.machine.move(RunState.FAILED)

    async def _explain(self, error: BaseException) -> BaseException:
        """The error the user sees: ours as is; a deadline, a dead endpoint or a service error explained."""
        if isinstance(error, TopnError):
            return error
        run_timeout_s = self.settings.run.run_timeout_s
        if isinstance(error, TimeoutError) and time.monotonic() - self.started >= run_timeout_s:
            return RunDeadlineError(
                f"the run did not finish within [run] run_timeout_s = {run_timeout_s:.0f} s; "
                "raise it, or add nodes to the pool"
            )
        if isinstance(error, TimeoutError | ServiceRequestError | ServiceResponseError):
            named = self._service_named_in(str(error)) or await self._unreachable_service()
            if named is not None:
                service, endpoint = named
                return ServiceUnavailableError(
                    f"the {service} endpoint {endpoint} stopped answering ({type(error).__name__}) within "
                    f"the retry deadline ([retry] deadline_s = {self.retry.deadline_s:.0f} s); check that it "
                    "is running and reachable, then run again"
                )
            return ServiceUnavailableError(
                f"a request got no answer within the retry deadline ({type(error).__name__}); check the "
                f"Batch endpoint {self.settings.batch.endpoint} and the Storage endpoint "
                f"{self.settings.storage.blob_endpoint}, then run again"
            )
        if isinstance(error, HttpResponseError):
            request = getattr(error.response, "request", None)
            named = self._service_named_in(str(getattr(request, "url", "")))
            service = named[0] if named is not None else "Batch or Storage"
            return RunFailedError(f"a {service} request failed: {submit.describe_http_error(error)}")
        return error

    def _written_summary(self) -> dict[str, Any]:
        """The summary.json a run wrote before CLEANING (a resume from CLEANING only finishes clean-up)."""
        path = self.out_dir / "summary.json"
        try:
            summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise RunFailedError(
                f"run {self.run_id} was cleaning up but its summary {path} cannot be read ({error}); "
                "its results are in that folder"
            ) from None
        return summary

    def _services(self) -> list[tuple[str, str]]:
        return [("Batch", self.settings.batch.endpoint), ("Storage", self.settings.storage.blob_endpoint)]

    def _service_named_in(self, text: str) -> tuple[str, str] | None:
        """The service whose host:port appears in `text` (connection errors quote the address)."""
        for service, endpoint in self._services():
            if urlsplit(endpoint).netloc and urlsplit(endpoint).netloc in text:
                return service, endpoint
        return None

    async def _unreachable_service(self) -> tuple[str, str] | None:
        """The first service that refuses a TCP connection now (a quick probe, after the fact)."""
        for service, endpoint in self._services():
            parts = urlsplit(endpoint)
            if parts.hostname is None:
                continue
            try:
                with anyio.fail_after(PROBE_TIMEOUT_S):
                    stream = await anyio.connect_tcp(parts.hostname, parts.port or 443)
                await stream.aclose()
            except (OSError, TimeoutError):
                return service, endpoint
        return None

    async def _cleanup(self, *, failed: bool) -> None:
        """Delete what config says to (job, run blobs, pool); a pool this run created and broke goes too."""
        run = self.settings.run
        with anyio.move_on_after(CLEANUP_TIMEOUT_S, shield=True):
            async with anyio.create_task_group() as group:
                if self.job_created and run.delete_job:
                    group.start_soon(self._delete_job)
                if run.delete_run_blobs:
                    group.start_soon(self._delete_run_blobs)
                if self.settings.pool.delete_after_run or (
                    failed and self.pool_created and self._pool_broken
                ):
                    group.start_soon(self._delete_pool)

    @property
    def _pool_broken(self) -> bool:
        return "provisioning" not in self.stage_s

    async def _delete_job(self) -> None:
        # Start the deletion and move on: the service finishes it, nobody needs to wait.
        with contextlib.suppress(HttpResponseError):
            await retry_call(self.retry, "delete_job", lambda: self.batch.begin_delete_job(self.job_id))

    async def _delete_pool(self) -> None:
        with contextlib.suppress(HttpResponseError):
            await retry_call(
                self.retry, "delete_pool", lambda: self.batch.begin_delete_pool(self.settings.pool.id)
            )

    async def _delete_run_blobs(self) -> None:
        await staging.delete_blobs_with_prefix(
            self.blobs, self.input_container, naming.run_input_prefix(self.run_id), self.retry
        )
        await staging.delete_container(self.blobs, self.output_container, self.retry)

    # ------------------------------------------------------------------ data

    def _journal_inputs(self) -> list[JournalInput]:
        task_of_input = {
            index: self.task_ids[unit_index] for unit_index, unit in enumerate(self.units) for index in unit
        }
        return [
            JournalInput(
                index=index,
                relpath=item.relpath,
                path=str(item.path),
                size_bytes=item.size_bytes,
                mtime_ns=_mtime_ns(item.path),
                md5_hex=None,
                blob_name=naming.input_blob_name(self.run_id, item.relpath),
                task_id=task_of_input[index],
            )
            for index, item in enumerate(self.inputs)
        ]

    def _summary(self, final: RunState) -> dict[str, Any]:
        files = [result.entry for _, result in sorted(self.results.items())]
        succeeded = [result for result in self.results.values() if result.succeeded]
        totals: dict[str, Any] = {
            "files": len(self.inputs),
            "succeeded": len(succeeded),
            "failed": len(self.results) - len(succeeded),
            "words": sum(int(result.entry["words"] or 0) for result in succeeded),
            "distinct_words": len(self.run_counts.totals),
            "bytes": sum(item.size_bytes for item in self.inputs),
            "duration_s": round(time.monotonic() - self.started, 3),
            "stages_s": dict(self.stage_s),
            "requests": self.clients.requests.snapshot(),
            "job_id": self.job_id,
            "pool_id": self.settings.pool.id,
        }
        return build_summary(
            self.run_id, final.value, self.run_counts.top(self.settings.run.top), files, totals
        )


def _stat_of(path: Path) -> tuple[int, int]:
    """(size, mtime ns) of a file, or (-1, -1) when it cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def _md5_hex_of(path: Path) -> str | None:
    """The MD5 of a file's bytes, or None when it cannot be read."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with path.open("rb") as stream:
            for chunk in iter(lambda: stream.read(4 * 1024 * 1024), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def summary_exit_status(summary: Mapping[str, Any]) -> int:
    """0 when every file succeeded, 1 otherwise (DESIGN §4)."""
    return 0 if summary.get("state") == RunState.SUCCEEDED.value else 1
