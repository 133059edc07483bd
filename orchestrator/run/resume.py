"""What `topn resume` continues from: the journalled run's inputs, results folder and result-shaping settings.

Endpoints and credentials always come from the current configuration (secrets were never journalled);
everything that shapes the results comes from the run's settings snapshot, so a resumed run gives
the summary an uninterrupted one would have given (docs/journal.md, "How resume uses the journal").

The salvage rules live here too, as functions of a `RunRecord`: which uploads are still pending,
which tasks are unsubmitted or in flight, which files are still to collect and which have failed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.azure.states import JobState, TaskState
from orchestrator.errors import UsageError
from orchestrator.inputs import BlobSource, InputFile
from orchestrator.journal import JournalInput, RunRecord
from orchestrator.settings import Settings, check_settings

# Settings that shape what a run computes or where its data lives, by section: taken from the
# snapshot on resume. Everything else (endpoints, credentials, concurrency, polling) is current.
RESULT_SHAPING: dict[str, tuple[str, ...]] = {
    "run": ("top", "tokenizer", "task_max_retries", "task_max_wall_clock_s", "max_files_per_task"),
    "storage": ("container_prefix",),
    "pool": ("id", "node_python"),
}


# The SAS a task carries: its inputs' read SAS (resource files) and its output container's write SAS.
SAS_PURPOSES = ("input_read", "output_write")
# A run with inputs read where they live in Blob Storage also hands out a read SAS on their containers.
BLOB_READ_PURPOSE = "blob_read"
# Task states in which the node has fetched (or is fetching) the resource files: the read SAS is spent.


class UnknownRunError(UsageError):
    """`topn resume` or `topn status` named a run the journal does not have."""


def unknown_run(run_id: str, journal_file: Path) -> UnknownRunError:
    """The exit-2 error for a run id the journal does not know."""
    return UnknownRunError(
        f"no run {run_id} in {journal_file}; `topn status` lists the runs "
        "(is --config pointing at the same [local] state_dir?)"
    )


def resumed_settings(current: Settings, snapshot: Mapping[str, Any]) -> Settings:
    """`current` with the result-shaping values of the run's snapshot (wrongly typed values ignored)."""
    settings = current
    for section, keys in RESULT_SHAPING.items():
        recorded = snapshot.get(section)
        if not isinstance(recorded, Mapping):
            continue
        present = getattr(settings, section)
        types = {field.name: type(getattr(present, field.name)) for field in fields(present)}
        changes = {
            key: recorded[key]
            for key in keys
            if key in recorded and key in types and _same_kind(recorded[key], types[key])
        }
        if changes:
            settings = replace(settings, **{section: replace(present, **changes)})
    check_settings(settings)  # a damaged snapshot is refused with the rule it breaks
    return settings


def _same_kind(value: object, expected: type) -> bool:
    """Whether a JSON value can stand in for a setting of type `expected` (ints count as floats)."""
    if isinstance(value, bool) or expected is bool:
        return isinstance(value, bool) and expected is bool
    if expected is float:
        return isinstance(value, int | float)
    return isinstance(value, expected)


def resumed_inputs(record: RunRecord) -> list[InputFile]:
    """The run's own inputs in their journalled order (never a new discovery)."""
    ordered = sorted(record.inputs, key=lambda item: item.index)
    return [
        InputFile(
            path=Path(item.path), relpath=item.relpath, size_bytes=item.size_bytes, blob=blob_source(item)
        )
        for item in ordered
    ]


def blob_source(item: JournalInput) -> BlobSource | None:
    """Where a journalled input read in Blob Storage lives (its address and ETag), None for a local one."""
    if item.etag is None:
        return None
    container, _, name = item.path.removeprefix("az://").partition("/")
    return BlobSource(container, name, item.etag)


def resumed_out_dir(record: RunRecord) -> Path:
    """The results folder the run started writing to."""
    if not record.out_dir:
        raise UsageError(
            f"run {record.run_id} has no results folder in the journal (written by an older topn); "
            "it cannot be resumed - start it again with `topn run`"
        )
    return Path(record.out_dir)


def sas_expire_before(
    expiries: Mapping[str, datetime], deadline: datetime, purposes: Sequence[str] = SAS_PURPOSES
) -> bool:
    """Whether a SAS the run's submitted tasks may carry ends before `deadline` (an unrecorded one counts)."""
    return any(purpose not in expiries or expiries[purpose] < deadline for purpose in purposes)


def sas_purposes(inputs: Sequence[InputFile]) -> tuple[str, ...]:
    """The SAS a run's tasks carry: with any input read where it lives, its containers' read SAS too."""
    if any(item.blob is not None for item in inputs):
        return (*SAS_PURPOSES, BLOB_READ_PURPOSE)
    return SAS_PURPOSES


# A job that ended this way holds what the run awaits: every task it was given finished.
ENDED_WITH_ITS_TASKS = "AllTasksComplete"
# States in which a job will never run a task again (a deleting one also loses its tasks).
_ENDED_JOB_STATES = frozenset({JobState.TERMINATING, JobState.COMPLETED, JobState.DELETING})


def job_end_reason(
    state: JobState, terminate_reason: str | None, *, tasks_to_add: bool = False
) -> str | None:
    """Why a resumed run cannot go on in its job (it ended under the run), or None when it can.

    A job that completed because its tasks all did (`AllTasksComplete`) still holds their results,
    but takes no new task: with tasks to add (to run again) the run goes on in a successor job, as it
    does when the job was terminated by its wall clock (`MaxWallClockTimeExpiry`), by a user, or is
    being deleted. A disabled job is left as it is (whoever disabled it can enable it again).
    """
    if state not in _ENDED_JOB_STATES:
        return None
    if state != JobState.DELETING and terminate_reason == ENDED_WITH_ITS_TASKS and not tasks_to_add:
        return None
    if state == JobState.DELETING:
        return "JobBeingDeleted"
    return terminate_reason or state.value


# Resource files that could not be downloaded (the Batch error-code reference's codes for them), and
# the node's exit status for an output it could not upload after its retries (docs/contracts.md):
# Storage failed these tasks, not their files, so a resume runs them again with fresh SAS.
DOWNLOAD_FAILURE_CODES = frozenset(
    {"BlobNotFound", "BlobAccessDenied", "BlobDownloadTimedOut", "BlobDownloadMiscError"}
)
NODE_UPLOAD_FAILED_EXIT = 3


def failed_by_infrastructure(outcome: Mapping[str, Any]) -> bool:
    """Whether a failed task's outcome says Storage failed it (a download or an upload), not its input."""
    if outcome_succeeded(outcome):
        return False
    return (
        outcome.get("failure_code") in DOWNLOAD_FAILURE_CODES
        or outcome.get("exit_code") == NODE_UPLOAD_FAILED_EXIT
    )


def retried_task_ids(record: RunRecord, *, retry_failed: bool = False) -> tuple[str, ...]:
    """The work units a resume runs again: failed by the infrastructure; with `retry_failed`, any failed one.

    With `retry_failed`, a unit whose task succeeded but one of whose files still failed (its outputs
    could not be collected) runs again too. A cancelled run is left alone.
    """
    if record.state.upper() == "CANCELLED":
        return ()
    failed_files = {
        record.task_of_relpath[relpath]
        for relpath in record.file_failures
        if relpath in record.task_of_relpath
    }
    retried = []
    for task_id in record.task_ids:
        outcome = record.completed.get(task_id)
        if outcome is None:
            continue
        failed = not outcome_succeeded(outcome) or task_id in failed_files
        if failed_by_infrastructure(outcome) or (retry_failed and failed):
            retried.append(task_id)
    return tuple(retried)


def units_to_run(record: RunRecord) -> tuple[str, ...]:
    """The work units a resume still runs in Batch: every one without a recorded outcome, in order.

    None left (all finished while the run was down, or before it stopped collecting): the resume
    needs no pool, no job and no node; it collects what is unsaved and cleans up.
    """
    return tuple(task_id for task_id in record.task_ids if task_id not in record.completed)


def units_for_successor(record: RunRecord, task_ids: Sequence[str]) -> tuple[str, ...]:
    """The work units a successor job takes over: every one without a recorded outcome, in order."""
    return tuple(task_id for task_id in task_ids if task_id not in record.completed)


@dataclass(frozen=True)
class SasRefreshPlan:
    """What a resume does about tasks whose SAS would expire before its deadline."""

    replace: tuple[str, ...]  # active (not started): re-issue under the next generation, fresh SAS
    add: tuple[str, ...]  # not in the job at all (e.g. deleted just before a crash): add with fresh SAS
    kept_started: tuple[str, ...]  # preparing/running: inputs already fetched, left as they are


def plan_sas_refresh(awaited: Sequence[str], job_task_states: Mapping[str, TaskState]) -> SasRefreshPlan:
    """Sort the tasks the run still awaits by their state in the job (absent = not in the job).

    A completed task is left alone: the monitor collects it whatever SAS it carried.
    """
    replace_ids: list[str] = []
    add_ids: list[str] = []
    kept: list[str] = []
    for task_id in dict.fromkeys(awaited):
        state = job_task_states.get(task_id)
        if state is None:
            add_ids.append(task_id)
        elif TaskState(state) == TaskState.ACTIVE:
            replace_ids.append(task_id)
        elif TaskState(state).started:
            kept.append(task_id)
    return SasRefreshPlan(tuple(replace_ids), tuple(add_ids), tuple(kept))


# ----------------------------------------------------------------------------- salvage rules
# Each is linear in the run's inputs; callers that need one twice keep the result.


def outcome_succeeded(outcome: Mapping[str, Any]) -> bool:
    """Whether a recorded task outcome is a success: `status == "succeeded"`, else `exit_code == 0`."""
    status = outcome.get("status")
    if status is not None:
        return str(status).lower() == "succeeded"
    return outcome.get("exit_code") == 0


def pending_uploads(record: RunRecord) -> tuple[JournalInput, ...]:
    """Inputs with no recorded upload, or whose recorded MD5 differs from the input's known MD5.

    An input read where it lives in Blob Storage is never uploaded, so never pending.
    """
    pending = []
    for item in record.inputs:
        if item.etag is not None:
            continue
        upload = record.uploads.get(item.relpath)
        if upload is None or (item.md5_hex is not None and upload.md5_hex != item.md5_hex.lower()):
            pending.append(item)
    return tuple(pending)


def unsubmitted_task_ids(record: RunRecord) -> tuple[str, ...]:
    """Tasks not yet recorded as submitted, in input order."""
    return tuple(task_id for task_id in record.task_ids if task_id not in record.submitted_task_ids)


def incomplete_task_ids(record: RunRecord) -> tuple[str, ...]:
    """Tasks submitted but with no recorded outcome (in flight: reattach and await), in input order."""
    return tuple(
        task_id
        for task_id in record.task_ids
        if task_id in record.submitted_task_ids and task_id not in record.completed
    )


def succeeded_task_ids(record: RunRecord) -> tuple[str, ...]:
    """Tasks whose recorded outcome is a success, in input order."""
    return tuple(
        task_id
        for task_id in record.task_ids
        if task_id in record.completed and outcome_succeeded(record.completed[task_id])
    )


def failed_task_ids(record: RunRecord) -> tuple[str, ...]:
    """Tasks whose recorded outcome is a failure, in input order."""
    return tuple(
        task_id
        for task_id in record.task_ids
        if task_id in record.completed and not outcome_succeeded(record.completed[task_id])
    )


def undownloaded_relpaths(record: RunRecord) -> tuple[str, ...]:
    """Inputs of finished tasks with no recorded result yet (neither saved nor failed), in input order.

    These are what a resumed run still has to collect: a succeeded task's outputs, or what a
    failed unit of several files may have written for its other files. A failed single-file
    task has nothing to collect (its file is in `failed_relpaths`).
    """
    settled = set(_failed_without_salvage(record))
    return tuple(
        item.relpath
        for item in record.inputs
        if item.task_id in record.completed
        and item.relpath not in record.downloads
        and item.relpath not in record.file_failures
        and item.relpath not in settled
    )


def failed_relpaths(record: RunRecord) -> tuple[str, ...]:
    """Inputs without a result: recorded as failed, or in a failed task that can save nothing more."""
    settled = set(_failed_without_salvage(record))
    return tuple(
        item.relpath
        for item in record.inputs
        if item.relpath in record.file_failures or item.relpath in settled
    )


def _failed_without_salvage(record: RunRecord) -> list[str]:
    """Unsaved inputs of failed tasks that can yield nothing more (single-file, or the run is over)."""
    by_task = record.inputs_by_task
    failed = set(failed_task_ids(record))
    return [
        item.relpath
        for item in record.inputs
        if item.task_id in failed
        and item.relpath not in record.downloads
        and (record.is_finished or len(by_task[item.task_id]) == 1)
    ]


def file_error(record: RunRecord, relpath: str) -> dict[str, Any]:
    """Why a file failed: its own recorded error, else its task's outcome."""
    recorded = record.file_failures.get(relpath) or record.completed.get(record.task_of_relpath[relpath], {})
    return {
        "exit_code": recorded.get("exit_code"),
        "failure_code": recorded.get("failure_code"),
        "message": recorded.get("message"),
        "stderr_tail": recorded.get("stderr_tail"),
    }
