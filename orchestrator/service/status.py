"""What `topn status` shows: the view of one run from its whole record, and of many from their summaries.

One run (`topn status RUN_ID`) is described from its whole `RunRecord` by the salvage rules of
orchestrator/run/resume.py; the list of recent runs comes from `Journal.list_run_summaries`, which
counts the same things in a fixed number of SQL queries however many runs the journal holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio

from orchestrator.errors import UsageError
from orchestrator.journal import Journal, RunRecord, RunSummary, format_timestamp
from orchestrator.results import read_summary, summary_path
from orchestrator.run.resume import (
    failed_relpaths,
    failed_task_ids,
    file_error,
    incomplete_task_ids,
    pending_uploads,
    retried_task_ids,
    succeeded_task_ids,
    undownloaded_relpaths,
    unsubmitted_task_ids,
)
from orchestrator.run.retrying import reopen_for_retry
from orchestrator.service.runlock import run_lock


async def recent_runs_in(journal_file: Path, limit: int, whole: bool) -> list[dict[str, Any]]:
    """`recent_runs` of the journal file; a missing journal is no runs (and nothing is created)."""
    if not await anyio.Path(journal_file).is_file():
        return []
    async with await Journal.open_for_reading(journal_file) as journal:
        return await recent_runs(journal, limit, whole)


async def recent_runs(journal: Journal, limit: int, whole: bool) -> list[dict[str, Any]]:
    """The latest `limit` runs, oldest first: summaries, or (`whole`) each run described in full.

    Summaries cost the same few queries for ten runs or a million; `whole` adds the queries of
    `limit` records, never of the others.
    """
    summaries = await journal.list_run_summaries(limit)
    if not whole:
        return [describe_summary(summary) for summary in summaries]
    records = await journal.load_runs([summary.run_id for summary in summaries])
    return [describe_run(record) for record in records]


def describe_summary(summary: RunSummary) -> dict[str, Any]:
    """A run's line in `topn status`: the keys of `describe_run` that a summary has, equal to them."""
    return {
        "run_id": summary.run_id,
        "state": summary.state,
        "finished": summary.is_finished,
        "created_at": format_timestamp(summary.created_at),
        "updated_at": format_timestamp(summary.updated_at),
        "out_dir": summary.out_dir,
        "files": summary.files,
        "bytes": summary.bytes,
        "tasks": summary.tasks,
        "files_succeeded": summary.files_succeeded,
        "files_failed": summary.files_failed,
        "tasks_succeeded": summary.tasks_succeeded,
        "tasks_failed": summary.tasks_failed,
        "tasks_in_flight": summary.tasks_in_flight,
    }


def describe_run(record: RunRecord) -> dict[str, Any]:
    """What `topn status` shows for a run: its state, progress per stage and its failed files."""
    task_ids = record.task_ids
    succeeded = succeeded_task_ids(record)
    failed = failed_task_ids(record)
    finished_inputs = [item for item in record.inputs if item.task_id in record.completed]
    task_of = record.task_of_relpath
    failed_files = failed_relpaths(record)
    failures = [
        {"file": relpath, "task_id": task_of[relpath], **file_error(record, relpath)}
        for relpath in failed_files
    ]
    updated_at = record.state_history[-1].at if record.state_history else record.created_at
    return {
        "run_id": record.run_id,
        "state": record.state,
        "finished": record.is_finished,
        "created_at": format_timestamp(record.created_at),
        "updated_at": format_timestamp(updated_at),
        "out_dir": record.out_dir,
        "files": len(record.inputs),
        "bytes": sum(item.size_bytes for item in record.inputs),
        "tasks": len(task_ids),
        "stages": {
            "staging": {
                "done": len(record.inputs) - len(pending_uploads(record)),
                "total": len(record.inputs),
            },
            "submitting": {"done": len(task_ids) - len(unsubmitted_task_ids(record)), "total": len(task_ids)},
            "running": {"done": len(succeeded) + len(failed), "total": len(task_ids)},
            "collecting": {
                "done": len(finished_inputs) - len(undownloaded_relpaths(record)),
                "total": len(finished_inputs),
            },
        },
        "files_succeeded": sum(1 for item in record.inputs if item.relpath in record.downloads),
        "files_failed": len(failed_files),
        "tasks_succeeded": len(succeeded),
        "tasks_failed": len(failed),
        "tasks_in_flight": len(incomplete_task_ids(record)),
        "failures": failures,
        "last_error": _last_error(record),
        "sas_expiries": {
            purpose: format_timestamp(moment) for purpose, moment in record.sas_expiries.items()
        },
        "history": [
            {"state": change.state, "at": format_timestamp(change.at)} for change in record.state_history
        ],
    }


# Warnings about a pool that outlive the process that found them (an image near its end of life),
# by pool id: `topn status` repeats them.
POOL_WARNINGS_FILE = "pool-warnings.json"


async def remember_pool_warning(state_dir: Path, pool_id: str, message: str | None) -> None:
    """Keep (or, with None, drop) the warning about a pool for `topn status`."""
    path = anyio.Path(state_dir) / POOL_WARNINGS_FILE
    warnings = _parse_warnings(await path.read_text(encoding="utf-8")) if await path.is_file() else {}
    if message is None and pool_id not in warnings:
        return
    if message is None:
        warnings.pop(pool_id)
    else:
        warnings[pool_id] = message
    await anyio.Path(state_dir).mkdir(parents=True, exist_ok=True)
    await path.write_text(json.dumps(warnings, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def pool_warnings(state_dir: Path) -> dict[str, str]:
    """The pool warnings `topn status` shows (read before its event loop starts)."""
    path = state_dir / POOL_WARNINGS_FILE
    return _parse_warnings(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _parse_warnings(text: str) -> dict[str, str]:
    try:
        loaded = json.loads(text)
    except ValueError:
        return {}  # a damaged file only loses warnings; the next check writes it again
    if not isinstance(loaded, dict):
        return {}
    return {str(key): str(value) for key, value in loaded.items() if isinstance(value, str)}


def _last_error(record: RunRecord) -> dict[str, Any] | None:
    """Why the run's last attempt stopped, with the next step; None once it succeeded or never stopped."""
    if record.last_error is None or record.state == "SUCCEEDED":
        return None
    error = dict(record.last_error)
    if record.is_finished:
        error["next_step"] = "fix the cause, then start the files again with `topn run`"
    elif error.get("resumable"):
        error["next_step"] = f"once the cause is fixed: topn resume {record.run_id}"
    else:
        error["next_step"] = (
            f"topn resume {record.run_id} (it may stop the same way until the cause is fixed)"
        )
    return error


async def load_record(journal_file: Path, run_id: str) -> Any:
    """The run's RunRecord, or None (also when there is no journal yet: nothing is created)."""
    if not await anyio.Path(journal_file).is_file():
        return None
    async with await Journal.open_for_reading(journal_file) as journal:
        return await journal.load_run(run_id)


async def load_for_resume(journal_file: Path, run_id: str, retry_failed: bool = False) -> Any:
    """The RunRecord `topn resume` continues (or None): failed units to run again are reopened first.

    Failed by the infrastructure, or any with `retry_failed` (run/retrying.py); the journal is written
    under the run's lock, so a run another process drives is refused (exit 2) before anything changes.
    """
    record = await load_record(journal_file, run_id)
    if record is None or not retried_task_ids(record, retry_failed=retry_failed):
        return record
    with run_lock(journal_file.parent, run_id):
        async with await Journal.open(journal_file) as journal:
            latest = await journal.load_run(run_id)
            assert latest is not None, "runs are never removed from the journal"
            return await reopen_for_retry(journal, latest, retry_failed=retry_failed)


def finished_summary(out_dir: Path, run_id: str) -> dict[str, Any]:
    """The summary.json a finished run wrote; a UsageError naming the problem when it cannot be read."""
    try:
        return read_summary(out_dir)
    except (OSError, ValueError) as error:
        if not out_dir.exists():
            raise UsageError(
                f"run {run_id} has finished but its results folder {out_dir} is not there any more; "
                "it was moved or deleted"
            ) from None
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise UsageError(
            f"run {run_id} has finished but its summary {summary_path(out_dir)} cannot be read: {reason} "
            "(check that the file is readable and was not edited)"
        ) from None
