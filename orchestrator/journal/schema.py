"""The journal's SQLite file: its schema, the migrations that reach it, and how it is opened."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TypeVar

from orchestrator.errors import TopnError, UsageError

T = TypeVar("T")

JOURNAL_FILENAME: Final = "journal.sqlite3"
SCHEMA_VERSION: Final = 13

# How long a write waits for another process (a second topn on the same state folder) to commit.
_BUSY_TIMEOUT_S: Final = 30.0

# Version N of the schema is reached by running MIGRATIONS[N - 1] on version N - 1.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            state TEXT NOT NULL,
            settings_json TEXT NOT NULL
        )""",
        """CREATE TABLE state_changes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            state TEXT NOT NULL,
            at TEXT NOT NULL
        )""",
        "CREATE INDEX state_changes_by_run ON state_changes (run_id, seq)",
        """CREATE TABLE inputs (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            idx INTEGER NOT NULL,
            relpath TEXT NOT NULL,
            path TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            md5_hex TEXT,
            blob_name TEXT NOT NULL,
            task_id TEXT NOT NULL,
            PRIMARY KEY (run_id, idx),
            UNIQUE (run_id, relpath),
            UNIQUE (run_id, blob_name)
        ) WITHOUT ROWID""",
        """CREATE TABLE uploads (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            relpath TEXT NOT NULL,
            md5_hex TEXT NOT NULL,
            blob_name TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (run_id, relpath)
        ) WITHOUT ROWID""",
        """CREATE TABLE sas_expiries (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            purpose TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (run_id, purpose)
        ) WITHOUT ROWID""",
        """CREATE TABLE submitted_tasks (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            task_id TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (run_id, task_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE completed_tasks (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            task_id TEXT NOT NULL,
            outcome_json TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (run_id, task_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE downloads (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            relpath TEXT NOT NULL,
            local_path TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (run_id, relpath)
        ) WITHOUT ROWID""",
    ),
    # Version 2: bulk submissions check their task ids by index, not by scanning the run's inputs.
    ("CREATE INDEX IF NOT EXISTS inputs_by_task ON inputs (run_id, task_id)",),
    # Version 3: the results folder, so `topn resume` writes where the run started writing.
    ("ALTER TABLE runs ADD COLUMN out_dir TEXT",),
    # Version 4: a file can fail on its own (a work unit of many files salvages the others).
    (
        """CREATE TABLE file_failures (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            relpath TEXT NOT NULL,
            error_json TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (run_id, relpath)
        ) WITHOUT ROWID""",
    ),
    # Version 5: a resume re-issues unstarted tasks under new ids (naming.task_generation_id); the
    # work unit's task id stays the key everywhere, this maps it to the generation now in the job.
    (
        """CREATE TABLE task_generations (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            task_id TEXT NOT NULL,
            generation INTEGER NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (run_id, task_id)
        ) WITHOUT ROWID""",
    ),
    # Version 6: the error that ended a run (kept for `topn status RUN_ID`; the latest one wins).
    (
        """CREATE TABLE run_errors (
            run_id TEXT PRIMARY KEY REFERENCES runs (run_id),
            error_json TEXT NOT NULL,
            at TEXT NOT NULL
        ) WITHOUT ROWID""",
    ),
    # Version 7: the daemon's intake (journal/intake.py): claimed files and the batches they form.
    (
        """CREATE TABLE intake_files (
            claim_id TEXT PRIMARY KEY,
            sha256 TEXT NOT NULL,
            relpath TEXT NOT NULL,
            source_path TEXT NOT NULL,
            claimed_path TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            source TEXT NOT NULL,
            complete_at TEXT NOT NULL,
            state TEXT NOT NULL,
            batch_id TEXT,
            final_path TEXT,
            outcome TEXT,
            error_json TEXT,
            at TEXT NOT NULL
        )""",
        "CREATE INDEX intake_files_by_sha ON intake_files (sha256)",
        "CREATE INDEX intake_files_by_state ON intake_files (state)",
        "CREATE INDEX intake_files_by_batch ON intake_files (batch_id)",
        """CREATE TABLE intake_batches (
            batch_id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            files INTEGER NOT NULL,
            bytes INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            outcome TEXT,
            at TEXT NOT NULL
        ) WITHOUT ROWID""",
    ),
    # Version 8: a resume whose job ended under the run (its wall clock, or someone else) goes on in a
    # successor job (naming.job_id(run_id, n)); this maps each work unit moved there to its job's number.
    (
        """CREATE TABLE task_jobs (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            task_id TEXT NOT NULL,
            job_number INTEGER NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (run_id, task_id)
        ) WITHOUT ROWID""",
    ),
    # Version 9: inputs read where they live in Blob Storage (orchestrator/blobinputs.py). Such an
    # input's `path` and `blob_name` are its address `az://CONTAINER/NAME`, `mtime_ns` is 0, and
    # this is the ETag it was listed with; NULL for a local input.
    ("ALTER TABLE inputs ADD COLUMN etag TEXT",),
    # Version 10: a file larger than [run] split_bytes is counted by several work units, each over one
    # byte range of its blob; this names each such unit's input and nominal range (the input's own
    # `task_id` is its first range's).
    (
        """CREATE TABLE unit_ranges (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            task_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            range_start INTEGER NOT NULL,
            range_end INTEGER NOT NULL,
            PRIMARY KEY (run_id, task_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX unit_ranges_by_input ON unit_ranges (run_id, idx)",
    ),
    # Version 11: what `--skip-unreadable` left out at discovery (path as given, why), so a resumed
    # run's summary.json lists it as the uninterrupted run's does. IF NOT EXISTS: renumbering is safe.
    (
        """CREATE TABLE IF NOT EXISTS skipped_inputs (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            path TEXT NOT NULL,
            reason TEXT NOT NULL,
            PRIMARY KEY (run_id, path)
        ) WITHOUT ROWID""",
    ),
    # Version 12: an input packed with its unit's other small inputs into one blob (`blob_name`, the
    # pack) is these bytes of it; both NULL for an input uploaded as a blob of its own.
    (
        "ALTER TABLE uploads ADD COLUMN pack_offset INTEGER",
        "ALTER TABLE uploads ADD COLUMN pack_length INTEGER",
    ),
    # Version 13: blob prefixes listed page by page while the run goes on (run/listing.py): how far
    # each is listed (the continuation marker after the last journalled page, and whether it is
    # complete), so a resumed run lists on from there. Pages' inputs go into `inputs` as they come.
    (
        """CREATE TABLE IF NOT EXISTS input_listings (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            position INTEGER NOT NULL,
            argument TEXT NOT NULL,
            container TEXT NOT NULL,
            prefix TEXT NOT NULL,
            marker TEXT,
            complete INTEGER NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (run_id, position)
        ) WITHOUT ROWID""",
    ),
)


class JournalError(TopnError):
    """The journal cannot be written or was asked for something inconsistent; the message says why."""


class JournalUnusableError(JournalError, UsageError):
    """The journal cannot even be opened (exit 2, before anything is created); the message has the fix."""


def journal_path(state_dir: Path) -> Path:
    """Where the journal of a state folder lives."""
    return state_dir / JOURNAL_FILENAME


def now() -> datetime:
    """The current moment, in UTC."""
    return datetime.now(UTC)


def format_timestamp(moment: datetime) -> str:
    """How the journal writes a moment (UTC, microseconds), and how `topn status` shows it."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_timestamp(text: str) -> datetime:
    """A moment the journal wrote, as an aware UTC datetime."""
    return datetime.fromisoformat(text).astimezone(UTC)


_STATE_DIR_FIX = "set [local] state_dir (or TOPN_LOCAL_STATE_DIR) to a writable folder"


def check_state_folder(state_dir: Path) -> None:
    """Refuse a state folder that cannot hold the journal and local data (exit 2), before anything starts.

    It is made if missing; a file in its place, a folder that cannot be made, a read-only or
    not-writable folder is a JournalUnusableError naming the folder, the error and the fix.
    """
    if state_dir.exists() and not state_dir.is_dir():
        raise JournalUnusableError(f"the state folder {state_dir} is a file, not a folder; {_STATE_DIR_FIX}")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise JournalUnusableError(
            f"cannot create the state folder {state_dir}: {error.strerror or error}; {_STATE_DIR_FIX}"
        ) from None
    try:  # a real write: permission bits do not tell a read-only filesystem (or root) apart
        handle, probe = tempfile.mkstemp(dir=state_dir, prefix=".write-probe-")
        os.close(handle)
        Path(probe).unlink()
    except OSError as error:
        raise JournalUnusableError(
            f"the state folder {state_dir} is not writable: {error.strerror or error}; {_STATE_DIR_FIX}"
        ) from None


def connect_read_only(path: Path) -> sqlite3.Connection:
    """The journal opened for reading only, for `topn status` on a state folder it may not write.

    SQLite's `immutable` mode needs no -wal/-shm files: it reads the main file as it is, so a run
    another process is writing at this moment may show its state as of its last checkpoint.
    """
    if path.is_dir():
        path = journal_path(path)
    uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
    try:
        return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as error:
        raise JournalUnusableError(f"cannot read the journal {path}: {error}") from error


def connect(path: Path) -> tuple[Path, sqlite3.Connection]:
    """Open the database in WAL mode and bring its schema up to date (runs on a worker thread)."""
    if path.is_dir():
        path = journal_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise JournalUnusableError(
            f"cannot create the state folder {path.parent} for the journal: {error}; {_STATE_DIR_FIX}"
        ) from error
    try:
        connection = sqlite3.connect(
            path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as error:
        raise JournalUnusableError(f"cannot open the journal {path}: {error}") from error
    try:
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalUnusableError(
                f"the journal {path} cannot use write-ahead logging (got {mode!r});"
                " put the state folder on a local file system"
            )
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("PRAGMA synchronous = FULL")
        _migrate(connection, path)
    except sqlite3.OperationalError as error:  # locked by another process, disk full, read-only...
        connection.close()
        raise JournalUnusableError(
            f"cannot open the journal {path}: {error}; check that the state folder is writable"
            " and that no other program holds the file"
        ) from error
    except sqlite3.DatabaseError as error:
        connection.close()
        raise JournalUnusableError(
            f"the journal {path} is not a usable topn journal ({error}); move it aside and start a new run"
        ) from error
    except BaseException:
        connection.close()
        raise
    return path, connection


def _migrate(connection: sqlite3.Connection, path: Path) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        current = connection.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
        if current > SCHEMA_VERSION:
            raise JournalUnusableError(
                f"the journal {path} has schema version {current}, newer than this topn understands"
                f" ({SCHEMA_VERSION}); upgrade topn or use another state folder"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version - 1]:
                connection.execute(statement)
            connection.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, format_timestamp(now())),
            )
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def write_transaction(
    connection: sqlite3.Connection, work: Callable[[sqlite3.Connection], None], path: Path
) -> None:
    """Run `work` as one committed transaction (rolled back whole if it fails); JournalError naming `path`."""
    try:
        connection.execute("BEGIN IMMEDIATE")
        try:
            work(connection)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
    except sqlite3.Error as error:
        raise JournalError(f"cannot write the journal {path}: {error}") from error


def read_transaction(
    connection: sqlite3.Connection, work: Callable[[sqlite3.Connection], T], path: Path
) -> T:
    """Run `work` in one read transaction, so it sees a consistent snapshot; JournalError naming `path`."""
    try:
        connection.execute("BEGIN")
        try:
            return work(connection)
        finally:
            connection.execute("COMMIT")
    except sqlite3.Error as error:
        raise JournalError(f"cannot read the journal {path}: {error}") from error
