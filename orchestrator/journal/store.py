"""Writes and reads of the journal: every record is one committed transaction on the journal's thread."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio

from orchestrator.journal.queries import load_runs, run_summaries
from orchestrator.journal.records import JournalInput, JournalListing, JournalRange, RunRecord, RunSummary
from orchestrator.journal.rows import input_rows, is_md5_hex, jsonable, state_name, upsert
from orchestrator.journal.schema import (
    JournalError,
    JournalUnusableError,
    connect,
    connect_read_only,
    format_timestamp,
    now,
    read_transaction,
    write_transaction,
)
from orchestrator.secrets import redact_value, strip_secrets

T = TypeVar("T")


class Journal:
    """The durable record of runs in one SQLite file; every method is safe to call concurrently."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        """Use `await Journal.open(path)`; this only wires an already-prepared connection."""
        self.path = path
        self._connection: sqlite3.Connection | None = connection
        self._limiter = anyio.CapacityLimiter(1)
        self._synchronous: str | None = None

    # ----------------------------------------------------------------- opening and closing

    @classmethod
    async def open(cls, path: Path) -> Journal:
        """Open (creating if needed) the journal at `path`, a file or a state folder that holds one."""
        path, connection = await anyio.to_thread.run_sync(connect, Path(path))
        return cls(path, connection)

    @classmethod
    async def open_for_reading(cls, path: Path) -> Journal:
        """Open to read (`topn status`): as `open`, or read-only when the state folder cannot be written."""
        try:
            return await cls.open(path)
        except JournalUnusableError:
            connection = await anyio.to_thread.run_sync(connect_read_only, Path(path))
            return cls(Path(path), connection)

    async def close(self) -> None:
        """Wait for the write in progress, then close; safe to call twice."""
        with anyio.CancelScope(shield=True):
            async with self._limiter:
                connection, self._connection = self._connection, None
                if connection is not None:
                    await anyio.to_thread.run_sync(connection.close)

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # ----------------------------------------------------------------- writes
    # The keyed records below share one form on purpose (validate, check the run and its key, one
    # `_upsert`, one transaction): what differs is the table, the key and what else the record
    # implies (a completion marks the task submitted; a download and a failure replace each other).

    async def create_run(
        self,
        run_id: str,
        settings_snapshot: Mapping[str, Any],
        inputs: Sequence[JournalInput],
        *,
        out_dir: Path | str | None = None,
        ranges: Sequence[JournalRange] = (),
        skipped: Sequence[tuple[str, str]] = (),
        listings: Sequence[JournalListing] = (),
    ) -> None:
        """Record a new run in state CREATED with its settings (secrets stripped), inputs and results folder.

        `ranges` are the work units of split inputs (one byte range each), `skipped` what
        `--skip-unreadable` left out at discovery (path as given, why) and `listings` how far each
        blob prefix is listed (run/listing.py lists the rest), recorded in the same transaction.
        Creating the same run again with the same inputs is a no-op (the first results folder and
        skipped list stay); different inputs are an error.
        """
        if not run_id:
            raise ValueError("run_id must not be empty")
        at = format_timestamp(now())

        def write(connection: sqlite3.Connection) -> None:
            # Validating and encoding thousands of inputs happens here, on the journal's thread.
            rows = input_rows(run_id, inputs)
            snapshot_json = json.dumps(
                strip_secrets(jsonable(settings_snapshot)), sort_keys=True, ensure_ascii=False
            )
            results_folder = None if out_dir is None else str(Path(out_dir).absolute())
            existing = connection.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if existing is not None:
                stored = connection.execute(
                    "SELECT run_id, idx, relpath, path, size_bytes, mtime_ns, md5_hex, blob_name, task_id,"
                    " etag FROM inputs WHERE run_id = ? ORDER BY idx",
                    (run_id,),
                ).fetchall()
                if stored != sorted(rows, key=lambda row: row[1]):
                    raise JournalError(
                        f"run {run_id} is already in the journal {self.path} with other inputs;"
                        " use a new run id, or `topn resume` to continue that run"
                    )
                return
            connection.execute(
                "INSERT INTO runs (run_id, created_at, state, settings_json, out_dir)"
                " VALUES (?, ?, 'CREATED', ?, ?)",
                (run_id, at, snapshot_json, results_folder),
            )
            connection.execute(
                "INSERT INTO state_changes (run_id, state, at) VALUES (?, 'CREATED', ?)", (run_id, at)
            )
            connection.executemany(
                "INSERT INTO inputs (run_id, idx, relpath, path, size_bytes, mtime_ns, md5_hex, blob_name,"
                " task_id, etag) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            connection.executemany(
                "INSERT INTO unit_ranges (run_id, task_id, idx, range_start, range_end)"
                " VALUES (?, ?, ?, ?, ?)",
                [(run_id, part.task_id, part.index, part.start, part.end) for part in ranges],
            )
            connection.executemany(
                "INSERT OR REPLACE INTO skipped_inputs (run_id, path, reason) VALUES (?, ?, ?)",
                [(run_id, str(path), redact_value(str(reason))) for path, reason in skipped],
            )
            _write_listings(connection, run_id, listings, at)

        await self._write(write, durable=True)

    async def record_listed_page(
        self,
        run_id: str,
        inputs: Sequence[JournalInput],
        ranges: Sequence[JournalRange],
        listing: JournalListing,
    ) -> None:
        """One listed page of a blob prefix: its inputs and range units, and the listing's new marker.

        One transaction: a crash leaves the page and its marker both recorded or neither, so a
        resumed run lists on from the marker without a page twice or a blob lost. An input whose
        index or relpath the run has already is an error (a page is never recorded twice).
        """
        at = format_timestamp(now())

        def write(connection: sqlite3.Connection) -> None:
            rows = input_rows(run_id, inputs)
            self._run_state(connection, run_id)
            connection.executemany(
                "INSERT INTO inputs (run_id, idx, relpath, path, size_bytes, mtime_ns, md5_hex,"
                " blob_name, task_id, etag) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            connection.executemany(
                "INSERT INTO unit_ranges (run_id, task_id, idx, range_start, range_end)"
                " VALUES (?, ?, ?, ?, ?)",
                [(run_id, part.task_id, part.index, part.start, part.end) for part in ranges],
            )
            _write_listings(connection, run_id, [listing], at)

        await self._write(write, durable=True)

    async def record_state(self, run_id: str, state: str) -> None:
        """Record a transition, fsynced before returning; re-recording the current state is a no-op."""
        name = state_name(state)
        at = format_timestamp(now())

        def write(connection: sqlite3.Connection) -> None:
            current = self._run_state(connection, run_id)
            if current == name:
                return
            connection.execute("UPDATE runs SET state = ? WHERE run_id = ?", (name, run_id))
            connection.execute(
                "INSERT INTO state_changes (run_id, state, at) VALUES (?, ?, ?)", (run_id, name, at)
            )

        await self._write(write, durable=True)

    async def record_upload(self, run_id: str, relpath: str, md5_hex: str, blob_name: str) -> None:
        """Record that an input is in Blob Storage with this MD5 (the latest upload wins)."""
        await self.record_uploads(run_id, [(relpath, md5_hex, blob_name)])

    async def record_uploads(
        self,
        run_id: str,
        uploads: Sequence[tuple[str, str, str]],
        extents: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        """Record `(relpath, md5_hex, blob_name)` uploads in one transaction (the latest upload wins).

        `extents` gives, by relpath, where a packed input lies in its pack blob (`blob_name`).
        """
        extents = extents or {}
        if not uploads:
            return
        for relpath, md5_hex, _ in uploads:
            if not is_md5_hex(md5_hex):
                raise ValueError(
                    f"run {run_id}: upload of {relpath!r}: md5_hex {md5_hex!r} is not 32 hex digits"
                )
        at = format_timestamp(now())

        def write(connection: sqlite3.Connection) -> None:
            self._run_state(connection, run_id)
            self._require_relpaths(connection, run_id, [relpath for relpath, _, _ in uploads])
            for relpath, md5_hex, blob_name in uploads:
                upsert(
                    connection,
                    "uploads",
                    {"run_id": run_id, "relpath": relpath},
                    md5_hex=md5_hex.lower(),
                    blob_name=blob_name,
                    pack_offset=extents[relpath][0] if relpath in extents else None,
                    pack_length=extents[relpath][1] if relpath in extents else None,
                    at=at,
                )

        await self._write(write, durable=False)

    async def record_sas_expiry(self, run_id: str, purpose: str, expires_at: datetime) -> None:
        """Record when the SAS minted for `purpose` expires (the SAS itself is never stored)."""
        if not purpose:
            raise ValueError(f"run {run_id}: SAS purpose must not be empty")
        if expires_at.tzinfo is None or expires_at.utcoffset() is None:
            raise ValueError(
                f"run {run_id}: SAS expiry for {purpose!r} must be timezone-aware (use datetime.now(UTC))"
            )
        expires = format_timestamp(expires_at)
        at = format_timestamp(now())

        def write(connection: sqlite3.Connection) -> None:
            self._run_state(connection, run_id)
            upsert(
                connection, "sas_expiries", {"run_id": run_id, "purpose": purpose}, expires_at=expires, at=at
            )

        await self._write(write, durable=False)

    async def record_tasks_submitted(self, run_id: str, task_ids: Sequence[str]) -> None:
        """Record task ids as added to the job, all in one transaction; ids already recorded are kept."""
        unique_ids = list(dict.fromkeys(task_ids))
        if not unique_ids:
            return
        at = format_timestamp(now())

        def write(connection: sqlite3.Connection) -> None:
            self._run_state(connection, run_id)
            self._require_task_ids(connection, run_id, unique_ids)
            connection.executemany(
                "INSERT OR IGNORE INTO submitted_tasks (run_id, task_id, at) VALUES (?, ?, ?)",
                [(run_id, task_id, at) for task_id in unique_ids],
            )

        await self._write(write, durable=False)

    async def record_task_generations(self, run_id: str, generations: Mapping[str, int]) -> None:
        """Record which generation of each work unit's task is in the job (written before it is added)."""
        if not generations:
            return
        if any(generation < 1 for generation in generations.values()):
            raise ValueError(f"run {run_id}: a re-issued task's generation is 1 or more")
        at = format_timestamp(now())

        def write(connection: sqlite3.Connection) -> None:
            self._run_state(connection, run_id)
            self._require_task_ids(connection, run_id, list(generations))
            for task_id, generation in generations.items():
                upsert(
                    connection,
                    "task_generations",
                    {"run_id": run_id, "task_id": task_id},
                    generation=generation,
                    at=at,
                )

        await self._write(write, durable=True)

    async def record_successor_job(self, run_id: str, job_number: int, task_ids: Sequence[str]) -> None:
        """Record that these work units now belong to the run's job `job_number` (a successor, 2 or more).

        Written before that job is created. In the same transaction the units stop counting as submitted:
        none of them is in the new job yet, so a resume adds every one (`TaskExists` counts as added).
        """
        if job_number < 2:
            raise ValueError(f"run {run_id}: a successor job's number is 2 or more")
        unique_ids = list(dict.fromkeys(task_ids))
        at = format_timestamp(now())

        def write(connection: sqlite3.Connection) -> None:
            self._run_state(connection, run_id)
            self._require_task_ids(connection, run_id, unique_ids)
            finished = {
                row[0]
                for row in connection.execute(
                    "SELECT task_id FROM completed_tasks WHERE run_id = ?", (run_id,)
                )
            }
            if finished.intersection(unique_ids):
                raise JournalError(
                    f"run {run_id}: tasks with a recorded outcome stay in their job: "
                    f"{sorted(finished.intersection(unique_ids))[:5]}"
                )
            for task_id in unique_ids:
                key = {"run_id": run_id, "task_id": task_id}
                upsert(connection, "task_jobs", key, job_number=job_number, at=at)
            connection.executemany(
                "DELETE FROM submitted_tasks WHERE run_id = ? AND task_id = ?",
                [(run_id, task_id) for task_id in unique_ids],
            )

        await self._write(write, durable=True)

    async def record_tasks_reopened(
        self, run_id: str, generations: Mapping[str, int], *, job_number: int, state: str | None
    ) -> None:
        """Forget the outcomes of work units a resume runs again, in one fsynced transaction.

        Each unit gets its next task generation (`generations`, 1 or more) in the run's current job
        (`job_number`), is no longer submitted, completed, nor failed file by file (its saved outputs
        stay recorded). `state` (e.g. RUNNING), when given, is the state the run goes back to.
        """
        if not generations:
            return
        if any(generation < 1 for generation in generations.values()):
            raise ValueError(f"run {run_id}: a re-issued task's generation is 1 or more")
        name = state_name(state) if state is not None else None
        at = format_timestamp(now())

        def write(connection: sqlite3.Connection) -> None:
            current = self._run_state(connection, run_id)
            task_ids = list(generations)
            self._require_task_ids(connection, run_id, task_ids)
            for task_id, generation in generations.items():
                key = {"run_id": run_id, "task_id": task_id}
                upsert(connection, "task_generations", key, generation=generation, at=at)
                if job_number > 1:
                    upsert(connection, "task_jobs", key, job_number=job_number, at=at)
            keys = [(run_id, task_id) for task_id in task_ids]
            connection.executemany("DELETE FROM completed_tasks WHERE run_id = ? AND task_id = ?", keys)
            connection.executemany("DELETE FROM submitted_tasks WHERE run_id = ? AND task_id = ?", keys)
            connection.executemany(
                "DELETE FROM file_failures WHERE run_id = ? AND relpath IN "
                "(SELECT relpath FROM inputs WHERE run_id = ? AND (task_id = ? OR idx IN "
                "(SELECT idx FROM unit_ranges WHERE run_id = ? AND task_id = ?)))",
                [(run_id, run_id, task_id, run_id, task_id) for task_id in task_ids],
            )
            if name is not None and name != current:
                connection.execute("UPDATE runs SET state = ? WHERE run_id = ?", (name, run_id))
                connection.execute(
                    "INSERT INTO state_changes (run_id, state, at) VALUES (?, ?, ?)", (run_id, name, at)
                )

        await self._write(write, durable=True)

    async def record_task_completed(self, run_id: str, task_id: str, outcome: Mapping[str, Any]) -> None:
        """Record a task's final outcome (JSON data, e.g. status, exit_code, failure_code, stderr_tail).

        Recording a completion also marks the task submitted (it cannot have run otherwise).
        Secrets inside the outcome's text are redacted (orchestrator/secrets.py).
        """
        await self.record_unit_collected(run_id, task_id, outcome=outcome)

    async def record_output_downloaded(
        self, run_id: str, relpath: str, local_path: str | Path, size_bytes: int
    ) -> None:
        """Record that an input's output is saved (complete, renamed into place) at `local_path`."""
        await self.record_unit_collected(run_id, None, saved=[(relpath, local_path, size_bytes)])

    async def record_file_failed(self, run_id: str, relpath: str, error: Mapping[str, Any]) -> None:
        """Record that one input has no result (e.g. exit_code, failure_code, message, stderr_tail).

        A later download of the same input replaces this record, and this replaces an earlier
        download record. Secrets inside the error's text are redacted (orchestrator/secrets.py).
        """
        await self.record_unit_collected(run_id, None, failed=[(relpath, error)])

    async def record_unit_collected(
        self,
        run_id: str,
        task_id: str | None,
        *,
        outcome: Mapping[str, Any] | None = None,
        saved: Sequence[tuple[str, str | Path, int]] = (),
        failed: Sequence[tuple[str, Mapping[str, Any]]] = (),
    ) -> None:
        """One transaction for a finished work unit: its task's outcome, its saved outputs, its failed files.

        `outcome` (with `task_id`) is the task's final outcome, which also marks it submitted.
        `saved` holds `(relpath, local_path, size_bytes)` of outputs renamed into place; `failed`
        holds `(relpath, error)` of inputs without a result. A file's latest record wins (a saved
        output replaces its failure and the other way round). Secrets in any text are redacted.
        """
        if any(size_bytes < 0 for _, _, size_bytes in saved):
            raise ValueError(f"run {run_id}: a saved output cannot have a negative size_bytes")
        outcome_json = None
        if outcome is not None:
            if task_id is None:
                raise ValueError(f"run {run_id}: an outcome needs its task id")
            outcome_json = json.dumps(redact_value(jsonable(outcome)), sort_keys=True, ensure_ascii=False)
        errors = [
            (relpath, json.dumps(redact_value(jsonable(error)), sort_keys=True, ensure_ascii=False))
            for relpath, error in failed
        ]
        at = format_timestamp(now())

        def write(connection: sqlite3.Connection) -> None:
            # Absolute, so resume and status find the files whatever folder they are started from.
            downloads = [(relpath, str(Path(path).absolute()), size) for relpath, path, size in saved]
            self._run_state(connection, run_id)
            if task_id is not None and outcome_json is not None:
                self._require_task_ids(connection, run_id, [task_id])
                connection.execute(
                    "INSERT OR IGNORE INTO submitted_tasks (run_id, task_id, at) VALUES (?, ?, ?)",
                    (run_id, task_id, at),
                )
                upsert(
                    connection,
                    "completed_tasks",
                    {"run_id": run_id, "task_id": task_id},
                    outcome_json=outcome_json,
                    at=at,
                )
            named = [relpath for relpath, _, _ in downloads] + [relpath for relpath, _ in errors]
            self._require_relpaths(connection, run_id, named)
            for relpath, local_path, size_bytes in downloads:
                connection.execute(
                    "DELETE FROM file_failures WHERE run_id = ? AND relpath = ?", (run_id, relpath)
                )
                upsert(
                    connection,
                    "downloads",
                    {"run_id": run_id, "relpath": relpath},
                    local_path=local_path,
                    size_bytes=size_bytes,
                    at=at,
                )
            for relpath, error_json in errors:
                connection.execute(
                    "DELETE FROM downloads WHERE run_id = ? AND relpath = ?", (run_id, relpath)
                )
                upsert(
                    connection,
                    "file_failures",
                    {"run_id": run_id, "relpath": relpath},
                    error_json=error_json,
                    at=at,
                )

        await self._write(write, durable=False)

    async def record_run_error(
        self, run_id: str, *, error_type: str, message: str, resumable: bool, state: str
    ) -> None:
        """Keep the error that ended the run's attempt (in `state`), for `topn status`; secrets redacted."""
        error = {"error_type": error_type, "message": message, "resumable": resumable, "state": state}
        error_json = json.dumps(redact_value(jsonable(error)), sort_keys=True, ensure_ascii=False)
        at = format_timestamp(now())

        def write(connection: sqlite3.Connection) -> None:
            self._run_state(connection, run_id)
            upsert(connection, "run_errors", {"run_id": run_id}, error_json=error_json, at=at)

        await self._write(write, durable=True)

    # ----------------------------------------------------------------- reads

    async def load_run(self, run_id: str) -> RunRecord | None:
        """Everything recorded about one run, or None when the journal has no such run."""
        records = await self._read(lambda connection: load_runs(connection, [run_id]))
        return records[0] if records else None

    async def list_runs(self) -> list[RunRecord]:
        """Every run in the journal, oldest id first (run ids sort by creation time)."""

        def read(connection: sqlite3.Connection) -> list[RunRecord]:
            run_ids = [row[0] for row in connection.execute("SELECT run_id FROM runs ORDER BY run_id")]
            return load_runs(connection, run_ids)

        return await self._read(read)

    async def load_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        """Everything recorded about these runs, in the order given (unknown ids are left out)."""
        return await self._read(lambda connection: load_runs(connection, run_ids))

    async def list_run_summaries(self, limit: int | None = None) -> list[RunSummary]:
        """The latest `limit` runs (all when None) in a few numbers each, oldest id first.

        A fixed number of aggregate queries whatever the number of runs: no input is loaded.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        return await self._read(lambda connection: run_summaries(connection, limit))

    # ----------------------------------------------------------------- plumbing

    def _run_state(self, connection: sqlite3.Connection, run_id: str) -> str:
        row = connection.execute("SELECT state FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise JournalError(f"run {run_id} is not in the journal {self.path}; create_run must come first")
        return str(row[0])

    def _require_relpaths(self, connection: sqlite3.Connection, run_id: str, relpaths: Sequence[str]) -> None:
        for relpath in relpaths:
            known = connection.execute(
                "SELECT 1 FROM inputs WHERE run_id = ? AND relpath = ?", (run_id, relpath)
            ).fetchone()
            if known is None:
                raise JournalError(f"run {run_id} has no input {relpath!r} in the journal {self.path}")

    def _require_task_ids(self, connection: sqlite3.Connection, run_id: str, task_ids: Sequence[str]) -> None:
        unknown = [
            task_id
            for task_id in task_ids
            if connection.execute(
                "SELECT 1 FROM inputs WHERE run_id = ? AND task_id = ?"
                " UNION ALL SELECT 1 FROM unit_ranges WHERE run_id = ? AND task_id = ? LIMIT 1",
                (run_id, task_id, run_id, task_id),
            ).fetchone()
            is None
        ]
        if unknown:
            shown = ", ".join(repr(task_id) for task_id in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise JournalError(f"run {run_id} has no task {shown}{more} among its inputs in {self.path}")

    def _use(self) -> sqlite3.Connection:
        if self._connection is None:
            raise JournalError(f"the journal {self.path} is closed")
        return self._connection

    async def _write(self, work: Callable[[sqlite3.Connection], None], *, durable: bool) -> None:
        """Run `work` as one committed transaction on the journal's thread."""

        def transaction() -> None:
            connection = self._use()
            wanted = "FULL" if durable else "NORMAL"
            if self._synchronous != wanted:
                connection.execute(f"PRAGMA synchronous = {wanted}")
                self._synchronous = wanted
            write_transaction(connection, work, self.path)

        # Not abandoned on cancellation: a write that started always finishes (committed or rolled back).
        await anyio.to_thread.run_sync(transaction, limiter=self._limiter)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in one read transaction, so it sees a consistent snapshot."""

        def transaction() -> T:
            return read_transaction(self._use(), work, self.path)

        return await anyio.to_thread.run_sync(transaction, limiter=self._limiter)


def _write_listings(
    connection: sqlite3.Connection, run_id: str, listings: Sequence[JournalListing], at: str
) -> None:
    """How far each blob prefix is listed (the latest marker wins)."""
    for listing in listings:
        upsert(
            connection,
            "input_listings",
            {"run_id": run_id, "position": str(listing.position)},
            argument=listing.argument,
            container=listing.container,
            prefix=listing.prefix,
            marker=listing.marker,
            complete=int(listing.complete),
            at=at,
        )
