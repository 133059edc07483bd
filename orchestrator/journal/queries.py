"""The journal's reads: whole run records, and run summaries counted in SQL for many runs at once."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Final

from orchestrator.journal.records import (
    TERMINAL_STATES,
    DownloadRecord,
    JournalInput,
    JournalListing,
    JournalRange,
    RunRecord,
    RunSummary,
    StateChange,
    UploadRecord,
)
from orchestrator.journal.schema import parse_timestamp

# The queries below are composed of this module's constants only (never of input: the one value,
# the limit, is a bound parameter), hence their `noqa: S608`. Each starts from the few `recent` runs
# with CROSS JOIN, which SQLite takes as "this order": the tables are then searched by run id
# instead of scanned, so the time depends on the runs listed, not on the runs in the journal.

# The latest runs (by id, which sorts by creation time), and whether each has ended. SQLite reads
# LIMIT -1 as "no limit".
_RECENT_RUNS: Final = f"""recent AS (
    SELECT run_id, created_at, state, out_dir,
        upper(state) IN ({", ".join(f"'{state}'" for state in sorted(TERMINAL_STATES))}) AS finished
    FROM runs ORDER BY run_id DESC LIMIT :limit
)"""  # noqa: S608

# Whether a completed task succeeded, as orchestrator/run/resume.py's `outcome_succeeded` decides:
# its `status` when it has one, else `exit_code == 0`.
_OUTCOME_SUCCEEDED: Final = """CASE
    WHEN json_extract(outcome_json, '$.status') IS NOT NULL
        THEN lower(json_extract(outcome_json, '$.status')) = 'succeeded'
    ELSE coalesce(json_extract(outcome_json, '$.exit_code') = 0, 0)
END"""

_RUNS: Final = f"""WITH {_RECENT_RUNS}
SELECT run_id, state, created_at, out_dir,
    (SELECT at FROM state_changes AS change WHERE change.run_id = recent.run_id ORDER BY seq DESC LIMIT 1)
FROM recent"""  # noqa: S608

# Per run: files, bytes, tasks (a split input's range units included), files saved, and files failed -
# recorded as failed, or unsaved in a failed task that can yield nothing more (it has one file, or the
# run is over), as orchestrator/run/resume.py's `failed_relpaths` decides.
_FILE_COUNTS: Final = f"""WITH {_RECENT_RUNS},
units AS (
    SELECT run_id, task_id, count(*) AS files
    FROM recent CROSS JOIN inputs USING (run_id)
    GROUP BY run_id, task_id
),
outcomes AS (
    SELECT run_id, task_id, {_OUTCOME_SUCCEEDED} AS succeeded
    FROM recent CROSS JOIN completed_tasks USING (run_id)
)
SELECT input.run_id, count(*), coalesce(sum(input.size_bytes), 0),
    count(DISTINCT input.task_id) + (
        -- a split input's range units beyond its own (first range's) task
        SELECT count(*) FROM unit_ranges AS part
        WHERE part.run_id = input.run_id AND NOT EXISTS (
            SELECT 1 FROM inputs AS own WHERE own.run_id = part.run_id AND own.task_id = part.task_id
        )
    ),
    count(download.relpath),
    sum(CASE
        WHEN failure.relpath IS NOT NULL THEN 1
        WHEN download.relpath IS NULL AND outcome.succeeded = 0 AND (recent.finished OR unit.files = 1) THEN 1
        ELSE 0
    END)
FROM recent
CROSS JOIN inputs AS input USING (run_id)
JOIN units AS unit ON unit.run_id = input.run_id AND unit.task_id = input.task_id
LEFT JOIN downloads AS download ON download.run_id = input.run_id AND download.relpath = input.relpath
LEFT JOIN file_failures AS failure ON failure.run_id = input.run_id AND failure.relpath = input.relpath
LEFT JOIN outcomes AS outcome ON outcome.run_id = input.run_id AND outcome.task_id = input.task_id
GROUP BY input.run_id"""  # noqa: S608

# Per run: tasks succeeded, tasks failed (every recorded task id is one of the run's inputs' tasks).
_TASK_COUNTS: Final = f"""WITH {_RECENT_RUNS}
SELECT run_id, sum({_OUTCOME_SUCCEEDED}), sum(NOT {_OUTCOME_SUCCEEDED})
FROM recent CROSS JOIN completed_tasks USING (run_id)
GROUP BY run_id"""  # noqa: S608

# Per run: tasks submitted with no outcome yet.
_IN_FLIGHT: Final = f"""WITH {_RECENT_RUNS}
SELECT submitted.run_id, count(*)
FROM recent
CROSS JOIN submitted_tasks AS submitted USING (run_id)
LEFT JOIN completed_tasks AS completed
    ON completed.run_id = submitted.run_id AND completed.task_id = submitted.task_id
WHERE completed.task_id IS NULL
GROUP BY submitted.run_id"""  # noqa: S608


def run_summaries(connection: sqlite3.Connection, limit: int | None) -> list[RunSummary]:
    """The latest `limit` runs (all when None), oldest id first, in four queries whatever their number."""
    parameters = {"limit": -1 if limit is None else limit}
    runs = connection.execute(_RUNS, parameters).fetchall()
    files = {row[0]: row[1:] for row in connection.execute(_FILE_COUNTS, parameters)}
    tasks = {row[0]: row[1:] for row in connection.execute(_TASK_COUNTS, parameters)}
    in_flight = {row[0]: row[1] for row in connection.execute(_IN_FLIGHT, parameters)}
    summaries = []
    for run_id, state, created_at, out_dir, last_change in sorted(runs, key=lambda row: str(row[0])):
        count, size, task_count, saved, failed = files.get(run_id, (0, 0, 0, 0, 0))
        succeeded, unsuccessful = tasks.get(run_id, (0, 0))
        summaries.append(
            RunSummary(
                run_id=run_id,
                state=state,
                created_at=parse_timestamp(created_at),
                updated_at=parse_timestamp(last_change or created_at),
                out_dir=out_dir,
                files=count,
                bytes=size,
                tasks=task_count,
                files_succeeded=saved,
                files_failed=failed,
                tasks_succeeded=succeeded,
                tasks_failed=unsuccessful,
                tasks_in_flight=in_flight.get(run_id, 0),
            )
        )
    return summaries


def load_runs(connection: sqlite3.Connection, run_ids: Sequence[str]) -> list[RunRecord]:
    """The whole record of each run, in the order given (a few queries per run; unknown ids left out)."""
    records = []
    for run_id in run_ids:
        run = connection.execute(
            "SELECT created_at, state, settings_json, out_dir FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if run is None:
            continue
        created_at, state, settings_json, out_dir = run
        history = tuple(
            StateChange(state=row[0], at=parse_timestamp(row[1]))
            for row in connection.execute(
                "SELECT state, at FROM state_changes WHERE run_id = ? ORDER BY seq", (run_id,)
            )
        )
        inputs = tuple(
            JournalInput(
                index=row[0],
                relpath=row[1],
                path=row[2],
                size_bytes=row[3],
                mtime_ns=row[4],
                md5_hex=row[5],
                blob_name=row[6],
                task_id=row[7],
                etag=row[8],
            )
            for row in connection.execute(
                "SELECT idx, relpath, path, size_bytes, mtime_ns, md5_hex, blob_name, task_id, etag"
                " FROM inputs WHERE run_id = ? ORDER BY idx",
                (run_id,),
            )
        )
        uploads = {
            row[0]: UploadRecord(
                md5_hex=row[1], blob_name=row[2], extent=None if row[3] is None else (row[3], row[4])
            )
            for row in connection.execute(
                "SELECT relpath, md5_hex, blob_name, pack_offset, pack_length FROM uploads"
                " WHERE run_id = ? ORDER BY relpath",
                (run_id,),
            )
        }
        expiries = {
            row[0]: parse_timestamp(row[1])
            for row in connection.execute(
                "SELECT purpose, expires_at FROM sas_expiries WHERE run_id = ? ORDER BY purpose", (run_id,)
            )
        }
        submitted = frozenset(
            row[0]
            for row in connection.execute("SELECT task_id FROM submitted_tasks WHERE run_id = ?", (run_id,))
        )
        completed = {
            row[0]: json.loads(row[1])
            for row in connection.execute(
                "SELECT task_id, outcome_json FROM completed_tasks WHERE run_id = ? ORDER BY task_id",
                (run_id,),
            )
        }
        generations = {
            row[0]: int(row[1])
            for row in connection.execute(
                "SELECT task_id, generation FROM task_generations WHERE run_id = ?", (run_id,)
            )
        }
        task_jobs = {
            row[0]: int(row[1])
            for row in connection.execute(
                "SELECT task_id, job_number FROM task_jobs WHERE run_id = ?", (run_id,)
            )
        }
        downloads = {
            row[0]: DownloadRecord(local_path=row[1], size_bytes=row[2])
            for row in connection.execute(
                "SELECT relpath, local_path, size_bytes FROM downloads WHERE run_id = ? ORDER BY relpath",
                (run_id,),
            )
        }
        file_failures = {
            row[0]: json.loads(row[1])
            for row in connection.execute(
                "SELECT relpath, error_json FROM file_failures WHERE run_id = ? ORDER BY relpath", (run_id,)
            )
        }
        ranges = {
            row[0]: JournalRange(task_id=row[0], index=row[1], start=row[2], end=row[3])
            for row in connection.execute(
                "SELECT task_id, idx, range_start, range_end FROM unit_ranges WHERE run_id = ?", (run_id,)
            )
        }
        error_row = connection.execute(
            "SELECT error_json, at FROM run_errors WHERE run_id = ?", (run_id,)
        ).fetchone()
        last_error = {**json.loads(error_row[0]), "at": error_row[1]} if error_row is not None else None
        skipped = {
            row[0]: row[1]
            for row in connection.execute(
                "SELECT path, reason FROM skipped_inputs WHERE run_id = ? ORDER BY path", (run_id,)
            )
        }
        listings = tuple(
            JournalListing(
                position=row[0],
                argument=row[1],
                container=row[2],
                prefix=row[3],
                marker=row[4],
                complete=bool(row[5]),
            )
            for row in connection.execute(
                "SELECT position, argument, container, prefix, marker, complete FROM input_listings"
                " WHERE run_id = ? ORDER BY position",
                (run_id,),
            )
        )
        records.append(
            RunRecord(
                run_id=run_id,
                created_at=parse_timestamp(created_at),
                state=state,
                state_history=history,
                settings_snapshot=json.loads(settings_json),
                inputs=inputs,
                uploads=uploads,
                sas_expiries=expiries,
                submitted_task_ids=submitted,
                completed=completed,
                downloads=downloads,
                out_dir=out_dir,
                file_failures=file_failures,
                task_generations=generations,
                task_jobs=task_jobs,
                last_error=last_error,
                ranges=ranges,
                skipped=skipped,
                listings=listings,
            )
        )
    return records
