"""Journals full of varied runs, written through the real `Journal` API, for status tests and the bench.

`write_varied_run` records one run in a randomly chosen condition: units of one or several files,
uploads with matching or stale MD5, tasks unsubmitted, in flight, succeeded or failed (outcomes with
a `status`, or only an `exit_code`), outputs saved, files failed on their own, any state at the end.
`clone_runs` multiplies those runs with plain SQL copies under new ids, so a journal of a thousand
runs takes a second instead of thousands of fsynced transactions.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from orchestrator.journal import Journal, JournalInput

# Outcomes as the journal may hold them: monitor's (with a status) and older or hand-written ones
# (an exit code only, even a float one once through JSON), so both branches of the success rule run.
OUTCOMES: tuple[dict[str, Any], ...] = (
    {"status": "succeeded", "exit_code": 0},
    {"status": "failed", "exit_code": 3, "failure_code": "FailureExitCode", "message": "exit 3"},
    {"status": "SUCCEEDED"},
    {"status": "failed", "exit_code": 0, "message": "output missing"},
    {"exit_code": 0},
    {"exit_code": 0.0},
    {"exit_code": 2, "stderr_tail": "Traceback: boom"},
    {"status": None, "exit_code": 0},
    {"message": "no exit code at all"},
)
END_STATES = ("CREATED", "PREPARING", "RUNNING", "COLLECTING", "SUCCEEDED", "FAILED", "CANCELLED")


async def write_varied_run(journal: Journal, run_id: str, rng: random.Random) -> None:
    """Record one run in a condition drawn from `rng` (see the module docstring)."""
    files = rng.choice((0, 1, 2, 3, 5, 8))
    files_per_task = rng.choice((1, 1, 2, 3))
    inputs = [
        JournalInput(
            index=index,
            relpath=f"part{index % 2}/file {index}.txt",
            path=f"/data/{run_id}/file {index}.txt",
            size_bytes=rng.randint(0, 50_000),
            mtime_ns=1_700_000_000_000_000_000 + index,
            md5_hex=rng.choice((None, f"{index:032x}")),
            blob_name=f"runs/{run_id}/part{index % 2}/file {index}.txt",
            task_id=f"t{index // files_per_task:06d}",
        )
        for index in range(files)
    ]
    out_dir = rng.choice((None, f"/results/{run_id}"))
    await journal.create_run(run_id, {"run": {"top": 10}}, inputs, out_dir=out_dir)
    for state in END_STATES[1 : rng.randint(1, 4)]:
        await journal.record_state(run_id, state)
    for item in inputs:
        if rng.random() < 0.7:
            md5 = item.md5_hex if item.md5_hex is not None and rng.random() < 0.8 else f"{99:032x}"
            await journal.record_upload(run_id, item.relpath, md5, item.blob_name)
    task_ids = list(dict.fromkeys(item.task_id for item in inputs))
    submitted = rng.sample(task_ids, rng.randint(0, len(task_ids)))
    await journal.record_tasks_submitted(run_id, submitted)
    for task_id in submitted:
        if rng.random() < 0.25:
            continue  # in flight
        await journal.record_task_completed(run_id, task_id, rng.choice(OUTCOMES))
        for item in inputs:
            if item.task_id != task_id:
                continue
            fate = rng.random()
            if fate < 0.5:
                await journal.record_output_downloaded(run_id, item.relpath, f"/results/{item.relpath}", 9)
            elif fate < 0.7:
                await journal.record_file_failed(
                    run_id, item.relpath, {"exit_code": 5, "message": "unreadable"}
                )
    if rng.random() < 0.6:
        await journal.record_state(run_id, rng.choice(END_STATES))
    if rng.random() < 0.5:
        expiry = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(hours=rng.randint(0, 9))
        await journal.record_sas_expiry(run_id, "input_read", expiry)


def run_id_of(number: int) -> str:
    """A run id in topn's shape (they sort by creation time), distinct for each number."""
    return f"20261122t{number // 3600 % 24:02d}{number // 60 % 60:02d}{number % 60:02d}z-{number:06x}"


_TABLES = (
    ("runs", "run_id, created_at, state, settings_json, out_dir"),
    ("state_changes", "run_id, state, at"),
    ("inputs", "run_id, idx, relpath, path, size_bytes, mtime_ns, md5_hex, blob_name, task_id"),
    ("uploads", "run_id, relpath, md5_hex, blob_name, at"),
    ("sas_expiries", "run_id, purpose, expires_at, at"),
    ("submitted_tasks", "run_id, task_id, at"),
    ("completed_tasks", "run_id, task_id, outcome_json, at"),
    ("downloads", "run_id, relpath, local_path, size_bytes, at"),
    ("file_failures", "run_id, relpath, error_json, at"),
)


def clone_runs(path: Path, sources: Sequence[str], new_ids: Sequence[str]) -> None:
    """Copy run `sources[i % len(sources)]` to each new id, every table alike, in one transaction."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        for number, new_id in enumerate(new_ids):
            source = sources[number % len(sources)]
            for table, columns in _TABLES:
                rest = columns.removeprefix("run_id, ")
                connection.execute(
                    f"INSERT INTO {table} ({columns}) SELECT ?, {rest} FROM {table} WHERE run_id = ?"  # noqa: S608 - table and column names are this module's constants
                    + (" ORDER BY seq" if table == "state_changes" else ""),
                    (new_id, source),
                )
        connection.execute("COMMIT")
    finally:
        connection.close()


async def varied_journal(path: Path, runs: int, *, distinct: int = 40, seed: int = 7) -> list[str]:
    """A journal at `path` with `runs` runs: `distinct` written through the API, the rest their clones.

    Returns the run ids, oldest first.
    """
    rng = random.Random(seed)
    run_ids = [run_id_of(number) for number in range(runs)]
    written = run_ids[: min(distinct, runs)]
    async with await Journal.open(path) as journal:
        for run_id in written:
            await write_varied_run(journal, run_id, rng)
    clone_runs(path, written, run_ids[len(written) :])
    return run_ids
