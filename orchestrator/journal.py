"""Durable run state in SQLite, so a restarted topn resumes a run instead of redoing or losing it.

One database file per state folder (`.topn/journal.sqlite3` by default) holds every run: its
settings snapshot (secrets stripped), its inputs, every state transition, SAS expiries (never the SAS
itself), the task ids submitted, the task outcomes, the outputs downloaded and the files that failed.
docs/journal.md describes the guarantees and how `topn resume` and `topn status` use them.

Rules the rest of topn relies on:

* Every `record_*` call is one committed transaction before it returns, so a crash (even `kill -9`)
  between two calls leaves everything before it on disk and nothing half-written.
* State transitions are synced to disk (`synchronous=FULL`); per-item records use WAL's `NORMAL`,
  which survives a process crash and, at worst after a power loss, costs a redundant but idempotent
  side effect (an MD5-matched upload skipped, a `TaskExists`, a re-download).
* Every record is idempotent: recording the same upload, task or download twice changes nothing.
* Journal I/O runs on a worker thread behind a `CapacityLimiter(1)`, so the event loop never waits
  on the disk and the one connection is never used by two threads at once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path, PurePath
from types import TracebackType
from typing import Any, Final, TypeVar

import anyio

from orchestrator.errors import TopnError, UsageError

T = TypeVar("T")

JOURNAL_FILENAME: Final = "journal.sqlite3"
SCHEMA_VERSION: Final = 4

# The journal records any well-formed state name (the pipeline owns the state machine of DESIGN §3);
# it only needs to know which states end a run.
TERMINAL_STATES: Final = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})

_STATE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")

# How long a write waits for another process (a second topn on the same state folder) to commit.
_BUSY_TIMEOUT_S: Final = 30.0

# Name parts that mark a setting as secret. Matching whole parts (and part endings such as
# "accountkey") keeps `tokenizer` while still catching `account_key`, `sasToken` or `password`.
_SECRET_WORDS: Final = ("key", "keys", "secret", "token", "sas", "password", "passwd", "credential", "sig")
_SECRET_ENDINGS: Final = ("key", "secret", "token", "password", "credential", "signature", "sas")
# A SAS signature or a connection string's key inside any stored text.
_SIGNATURE_IN_TEXT = re.compile(r"(?i)(\bsig=)[^&\s\"']+")
_ACCOUNT_KEY_IN_TEXT = re.compile(r"(?i)(AccountKey=)[^;\s\"']+")

# Version N of the schema is reached by running _MIGRATIONS[N - 1] on version N - 1.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
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
)


class JournalError(TopnError):
    """The journal cannot be written or was asked for something inconsistent; the message says why."""


class JournalUnusableError(JournalError, UsageError):
    """The journal cannot even be opened (exit 2, before anything is created); the message has the fix."""


@dataclasses.dataclass(frozen=True)
class JournalInput:
    """One input file of a run as the journal keeps it; `task_id` is its work unit's task."""

    index: int
    relpath: str
    path: str
    size_bytes: int
    mtime_ns: int
    md5_hex: str | None
    blob_name: str
    task_id: str


@dataclasses.dataclass(frozen=True)
class StateChange:
    """One recorded transition: the state entered and when (UTC)."""

    state: str
    at: datetime


@dataclasses.dataclass(frozen=True)
class UploadRecord:
    """An input that is in Blob Storage with this content MD5."""

    md5_hex: str
    blob_name: str


@dataclasses.dataclass(frozen=True)
class DownloadRecord:
    """An input's output saved locally."""

    local_path: str
    size_bytes: int


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """Everything the journal knows about one run, read in one consistent snapshot."""

    run_id: str
    created_at: datetime
    state: str
    state_history: tuple[StateChange, ...]
    settings_snapshot: Mapping[str, Any]
    inputs: tuple[JournalInput, ...]
    uploads: Mapping[str, UploadRecord]  # by relpath
    sas_expiries: Mapping[str, datetime]  # by purpose, the latest minted
    submitted_task_ids: frozenset[str]
    completed: Mapping[str, Mapping[str, Any]]  # task outcome by task id
    downloads: Mapping[str, DownloadRecord]  # by relpath
    out_dir: str | None = None  # the results folder (absolute), when create_run was told it
    file_failures: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)  # by relpath

    @property
    def is_finished(self) -> bool:
        """True once the run reached SUCCEEDED, FAILED or CANCELLED (nothing left to resume)."""
        return self.state.upper() in TERMINAL_STATES

    @property
    def uploaded_md5(self) -> dict[str, str]:
        """The MD5 recorded for each uploaded input, by relpath."""
        return {relpath: upload.md5_hex for relpath, upload in self.uploads.items()}

    # The derived views below are computed once per record (records are immutable snapshots), so
    # status and resume stay linear in the number of inputs.

    @functools.cached_property
    def task_ids(self) -> tuple[str, ...]:
        """Every task id of the run once, in input order."""
        return tuple(dict.fromkeys(item.task_id for item in self.inputs))

    @functools.cached_property
    def inputs_by_task(self) -> dict[str, tuple[JournalInput, ...]]:
        """The inputs of each task (a work unit may hold several), in input order."""
        grouped: dict[str, list[JournalInput]] = {}
        for item in self.inputs:
            grouped.setdefault(item.task_id, []).append(item)
        return {task_id: tuple(items) for task_id, items in grouped.items()}

    @property
    def pending_uploads(self) -> tuple[JournalInput, ...]:
        """Inputs with no recorded upload, or whose recorded MD5 differs from the input's known MD5."""
        pending = []
        for item in self.inputs:
            upload = self.uploads.get(item.relpath)
            if upload is None or (item.md5_hex is not None and upload.md5_hex != item.md5_hex.lower()):
                pending.append(item)
        return tuple(pending)

    @property
    def unsubmitted_task_ids(self) -> tuple[str, ...]:
        """Tasks not yet recorded as submitted, in input order."""
        return tuple(task_id for task_id in self.task_ids if task_id not in self.submitted_task_ids)

    @property
    def incomplete_task_ids(self) -> tuple[str, ...]:
        """Tasks submitted but with no recorded outcome (in flight: reattach and await), in input order."""
        return tuple(
            task_id
            for task_id in self.task_ids
            if task_id in self.submitted_task_ids and task_id not in self.completed
        )

    @property
    def succeeded_task_ids(self) -> tuple[str, ...]:
        """Tasks whose recorded outcome is a success, in input order."""
        return tuple(
            task_id
            for task_id in self.task_ids
            if task_id in self.completed and outcome_succeeded(self.completed[task_id])
        )

    @property
    def failed_task_ids(self) -> tuple[str, ...]:
        """Tasks whose recorded outcome is a failure, in input order."""
        return tuple(
            task_id
            for task_id in self.task_ids
            if task_id in self.completed and not outcome_succeeded(self.completed[task_id])
        )

    @property
    def undownloaded_relpaths(self) -> tuple[str, ...]:
        """Inputs of finished tasks with no recorded result yet (neither saved nor failed), in input order.

        These are what a resumed run still has to collect: a succeeded task's outputs, or what a
        failed unit of several files may have written for its other files. A failed single-file
        task has nothing to collect (its file is in `failed_relpaths`).
        """
        settled = set(self._failed_without_salvage())
        return tuple(
            item.relpath
            for item in self.inputs
            if item.task_id in self.completed
            and item.relpath not in self.downloads
            and item.relpath not in self.file_failures
            and item.relpath not in settled
        )

    @property
    def failed_relpaths(self) -> tuple[str, ...]:
        """Inputs without a result: recorded as failed, or in a failed task that can save nothing more."""
        settled = set(self._failed_without_salvage())
        return tuple(
            item.relpath
            for item in self.inputs
            if item.relpath in self.file_failures or item.relpath in settled
        )

    def _failed_without_salvage(self) -> list[str]:
        """Unsaved inputs of failed tasks that can yield nothing more (single-file, or the run is over)."""
        by_task = self.inputs_by_task
        failed = set(self.failed_task_ids)
        return [
            item.relpath
            for item in self.inputs
            if item.task_id in failed
            and item.relpath not in self.downloads
            and (self.is_finished or len(by_task[item.task_id]) == 1)
        ]

    @functools.cached_property
    def task_of_relpath(self) -> dict[str, str]:
        """The task id of each input, by relpath."""
        return {item.relpath: item.task_id for item in self.inputs}

    def file_error(self, relpath: str) -> dict[str, Any]:
        """Why a file failed: its own recorded error, else its task's outcome."""
        recorded = self.file_failures.get(relpath) or self.completed.get(self.task_of_relpath[relpath], {})
        return {
            "exit_code": recorded.get("exit_code"),
            "failure_code": recorded.get("failure_code"),
            "message": recorded.get("message"),
            "stderr_tail": recorded.get("stderr_tail"),
        }


def outcome_succeeded(outcome: Mapping[str, Any]) -> bool:
    """Whether a recorded task outcome is a success: `status == "succeeded"`, else `exit_code == 0`."""
    status = outcome.get("status")
    if status is not None:
        return str(status).lower() == "succeeded"
    return outcome.get("exit_code") == 0


def journal_path(state_dir: Path) -> Path:
    """Where the journal of a state folder lives."""
    return state_dir / JOURNAL_FILENAME


def _is_secret_name(name: str) -> bool:
    """True for setting names that may hold a credential (`account_key`, `sasToken`, `password`)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    parts = [part for part in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if part]
    return any(part in _SECRET_WORDS or part.endswith(_SECRET_ENDINGS) for part in parts)


def redact_text(text: str) -> str:
    """Replace SAS signatures and connection-string keys inside free text."""
    text = _SIGNATURE_IN_TEXT.sub(r"\1REDACTED", text)
    return _ACCOUNT_KEY_IN_TEXT.sub(r"\1REDACTED", text)


def _jsonable(value: Any) -> Any:
    """Plain JSON data for a snapshot or an outcome: mappings, sequences, scalars; paths as text."""
    if isinstance(value, Enum):
        return _jsonable(value.value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable({field.name: getattr(value, field.name) for field in dataclasses.fields(value)})
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(item) for item in value]
    # Anything else (an SDK object, a credential) is recorded by type only: its text may hold secrets.
    return f"<{type(value).__name__}>"


def strip_secrets(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of `snapshot` without any value that could be a secret, at any depth.

    A key whose name looks secret keeps its value only when that value is a number or a boolean
    (`sas_margin_s = 3600` is a duration, not a credential); text under such a key is dropped, and
    SAS signatures inside any other text are redacted.
    """
    return _strip(_jsonable(snapshot))  # type: ignore[no-any-return]


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        kept: dict[str, Any] = {}
        for key, item in value.items():
            # Numbers and booleans cannot carry a credential; anything else under a secret name goes.
            if _is_secret_name(key) and not isinstance(item, bool | int | float):
                continue
            kept[key] = _strip(item)
        return kept
    if isinstance(value, list):
        return [_strip(item) for item in value]
    return value


def _now() -> datetime:
    return datetime.now(UTC)


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _parse_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _state_name(state: str) -> str:
    name = state.value if isinstance(state, Enum) else state
    if not isinstance(name, str) or not _STATE_NAME.fullmatch(name):
        raise ValueError(f"invalid run state {state!r}: expected a name such as 'RUNNING'")
    return name


def _check_input(item: JournalInput, run_id: str) -> None:
    problems = []
    if not item.relpath:
        problems.append("empty relpath")
    if not item.blob_name:
        problems.append("empty blob_name")
    if not item.task_id:
        problems.append("empty task_id")
    if item.size_bytes < 0:
        problems.append(f"negative size_bytes {item.size_bytes}")
    if item.md5_hex is not None and not _MD5_HEX.fullmatch(item.md5_hex):
        problems.append(f"md5_hex {item.md5_hex!r} is not 32 hex digits")
    if problems:
        raise ValueError(f"run {run_id}: input {item.index} ({item.relpath!r}): {', '.join(problems)}")


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
        path, connection = await anyio.to_thread.run_sync(_connect, Path(path))
        return cls(path, connection)

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

    async def create_run(
        self,
        run_id: str,
        settings_snapshot: Mapping[str, Any],
        inputs: Sequence[JournalInput],
        *,
        out_dir: Path | str | None = None,
    ) -> None:
        """Record a new run in state CREATED with its settings (secrets stripped), inputs and results folder.

        Creating the same run again with the same inputs is a no-op (the first results folder stays);
        different inputs are an error.
        """
        if not run_id:
            raise ValueError("run_id must not be empty")
        at = _timestamp(_now())

        def write(connection: sqlite3.Connection) -> None:
            # Validating and encoding thousands of inputs happens here, on the journal's thread.
            rows = _input_rows(run_id, inputs)
            snapshot_json = json.dumps(strip_secrets(settings_snapshot), sort_keys=True, ensure_ascii=False)
            results_folder = None if out_dir is None else str(Path(out_dir).absolute())
            existing = connection.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if existing is not None:
                stored = connection.execute(
                    "SELECT run_id, idx, relpath, path, size_bytes, mtime_ns, md5_hex, blob_name, task_id"
                    " FROM inputs WHERE run_id = ? ORDER BY idx",
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
            connection.executemany("INSERT INTO inputs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

        await self._write(write, durable=True)

    async def record_state(self, run_id: str, state: str) -> None:
        """Record a transition, fsynced before returning; re-recording the current state is a no-op."""
        name = _state_name(state)
        at = _timestamp(_now())

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
        if not _MD5_HEX.fullmatch(md5_hex):
            raise ValueError(f"run {run_id}: upload of {relpath!r}: md5_hex {md5_hex!r} is not 32 hex digits")
        md5 = md5_hex.lower()
        at = _timestamp(_now())

        def write(connection: sqlite3.Connection) -> None:
            self._run_state(connection, run_id)
            self._require_relpaths(connection, run_id, [relpath])
            connection.execute(
                "INSERT INTO uploads (run_id, relpath, md5_hex, blob_name, at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (run_id, relpath) DO UPDATE SET md5_hex = excluded.md5_hex,"
                " blob_name = excluded.blob_name, at = excluded.at"
                " WHERE md5_hex IS NOT excluded.md5_hex OR blob_name IS NOT excluded.blob_name",
                (run_id, relpath, md5, blob_name, at),
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
        expires = _timestamp(expires_at)
        at = _timestamp(_now())

        def write(connection: sqlite3.Connection) -> None:
            self._run_state(connection, run_id)
            connection.execute(
                "INSERT INTO sas_expiries (run_id, purpose, expires_at, at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (run_id, purpose) DO UPDATE SET expires_at = excluded.expires_at,"
                " at = excluded.at WHERE expires_at IS NOT excluded.expires_at",
                (run_id, purpose, expires, at),
            )

        await self._write(write, durable=False)

    async def record_tasks_submitted(self, run_id: str, task_ids: Sequence[str]) -> None:
        """Record task ids as added to the job, all in one transaction; ids already recorded are kept."""
        unique_ids = list(dict.fromkeys(task_ids))
        if not unique_ids:
            return
        at = _timestamp(_now())

        def write(connection: sqlite3.Connection) -> None:
            self._run_state(connection, run_id)
            self._require_task_ids(connection, run_id, unique_ids)
            connection.executemany(
                "INSERT OR IGNORE INTO submitted_tasks (run_id, task_id, at) VALUES (?, ?, ?)",
                [(run_id, task_id, at) for task_id in unique_ids],
            )

        await self._write(write, durable=False)

    async def record_task_completed(self, run_id: str, task_id: str, outcome: Mapping[str, Any]) -> None:
        """Record a task's final outcome (JSON data, e.g. status, exit_code, failure_code, stderr_tail).

        Recording a completion also marks the task submitted (it cannot have run otherwise). SAS
        signatures inside the outcome's text are redacted.
        """
        outcome_json = json.dumps(_jsonable(outcome), sort_keys=True, ensure_ascii=False)
        at = _timestamp(_now())

        def write(connection: sqlite3.Connection) -> None:
            self._run_state(connection, run_id)
            self._require_task_ids(connection, run_id, [task_id])
            connection.execute(
                "INSERT OR IGNORE INTO submitted_tasks (run_id, task_id, at) VALUES (?, ?, ?)",
                (run_id, task_id, at),
            )
            connection.execute(
                "INSERT INTO completed_tasks (run_id, task_id, outcome_json, at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (run_id, task_id) DO UPDATE SET outcome_json = excluded.outcome_json,"
                " at = excluded.at WHERE outcome_json IS NOT excluded.outcome_json",
                (run_id, task_id, outcome_json, at),
            )

        await self._write(write, durable=False)

    async def record_output_downloaded(
        self, run_id: str, relpath: str, local_path: str | Path, size_bytes: int
    ) -> None:
        """Record that an input's output is saved (complete, renamed into place) at `local_path`."""
        if size_bytes < 0:
            raise ValueError(f"run {run_id}: download of {relpath!r}: negative size_bytes {size_bytes}")
        at = _timestamp(_now())

        def write(connection: sqlite3.Connection) -> None:
            # Absolute, so resume and status find the file whatever folder they are started from.
            saved_at = str(Path(local_path).absolute())
            self._run_state(connection, run_id)
            self._require_relpaths(connection, run_id, [relpath])
            connection.execute(
                "DELETE FROM file_failures WHERE run_id = ? AND relpath = ?", (run_id, relpath)
            )
            connection.execute(
                "INSERT INTO downloads (run_id, relpath, local_path, size_bytes, at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (run_id, relpath) DO UPDATE SET local_path = excluded.local_path,"
                " size_bytes = excluded.size_bytes, at = excluded.at"
                " WHERE local_path IS NOT excluded.local_path OR size_bytes IS NOT excluded.size_bytes",
                (run_id, relpath, saved_at, size_bytes, at),
            )

        await self._write(write, durable=False)

    async def record_file_failed(self, run_id: str, relpath: str, error: Mapping[str, Any]) -> None:
        """Record that one input has no result (e.g. exit_code, failure_code, message, stderr_tail).

        A later download of the same input replaces this record, and this replaces an earlier
        download record. SAS signatures inside the error's text are redacted.
        """
        error_json = json.dumps(_jsonable(error), sort_keys=True, ensure_ascii=False)
        at = _timestamp(_now())

        def write(connection: sqlite3.Connection) -> None:
            self._run_state(connection, run_id)
            self._require_relpaths(connection, run_id, [relpath])
            connection.execute("DELETE FROM downloads WHERE run_id = ? AND relpath = ?", (run_id, relpath))
            connection.execute(
                "INSERT INTO file_failures (run_id, relpath, error_json, at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (run_id, relpath) DO UPDATE SET error_json = excluded.error_json,"
                " at = excluded.at WHERE error_json IS NOT excluded.error_json",
                (run_id, relpath, error_json, at),
            )

        await self._write(write, durable=False)

    # ----------------------------------------------------------------- reads

    async def load_run(self, run_id: str) -> RunRecord | None:
        """Everything recorded about one run, or None when the journal has no such run."""
        records = await self._read(lambda connection: _load_runs(connection, [run_id]))
        return records[0] if records else None

    async def list_runs(self) -> list[RunRecord]:
        """Every run in the journal, oldest id first (run ids sort by creation time)."""

        def read(connection: sqlite3.Connection) -> list[RunRecord]:
            run_ids = [row[0] for row in connection.execute("SELECT run_id FROM runs ORDER BY run_id")]
            return _load_runs(connection, run_ids)

        return await self._read(read)

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
                "SELECT 1 FROM inputs WHERE run_id = ? AND task_id = ? LIMIT 1", (run_id, task_id)
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
                raise JournalError(f"cannot write the journal {self.path}: {error}") from error

        # Not abandoned on cancellation: a write that started always finishes (committed or rolled back).
        await anyio.to_thread.run_sync(transaction, limiter=self._limiter)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in one read transaction, so it sees a consistent snapshot."""

        def transaction() -> T:
            connection = self._use()
            try:
                connection.execute("BEGIN")
                try:
                    return work(connection)
                finally:
                    connection.execute("COMMIT")
            except sqlite3.Error as error:
                raise JournalError(f"cannot read the journal {self.path}: {error}") from error

        return await anyio.to_thread.run_sync(transaction, limiter=self._limiter)


def _input_rows(run_id: str, inputs: Sequence[JournalInput]) -> list[tuple[Any, ...]]:
    """The `inputs` table rows of a run, after checking every input and their uniqueness."""
    for item in inputs:
        _check_input(item, run_id)
    rows = [
        (
            run_id,
            item.index,
            item.relpath,
            item.path,
            item.size_bytes,
            item.mtime_ns,
            None if item.md5_hex is None else item.md5_hex.lower(),
            item.blob_name,
            item.task_id,
        )
        for item in inputs
    ]
    _check_unique(run_id, "index", [row[1] for row in rows])
    _check_unique(run_id, "relpath", [row[2] for row in rows])
    _check_unique(run_id, "blob_name", [row[7] for row in rows])
    return rows


def _check_unique(run_id: str, what: str, values: Sequence[object]) -> None:
    seen: set[object] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"run {run_id}: two inputs share the {what} {value!r}")
        seen.add(value)


def _connect(path: Path) -> tuple[Path, sqlite3.Connection]:
    """Open the database in WAL mode and bring its schema up to date (runs on a worker thread)."""
    if path.is_dir():
        path = journal_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise JournalUnusableError(
            f"cannot create the state folder {path.parent} for the journal: {error};"
            " set [local] state_dir (or TOPN_LOCAL_STATE_DIR) to a writable folder"
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
            for statement in _MIGRATIONS[version - 1]:
                connection.execute(statement)
            connection.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, _timestamp(_now())),
            )
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _load_runs(connection: sqlite3.Connection, run_ids: Sequence[str]) -> list[RunRecord]:
    records = []
    for run_id in run_ids:
        run = connection.execute(
            "SELECT created_at, state, settings_json, out_dir FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if run is None:
            continue
        created_at, state, settings_json, out_dir = run
        history = tuple(
            StateChange(state=row[0], at=_parse_timestamp(row[1]))
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
            )
            for row in connection.execute(
                "SELECT idx, relpath, path, size_bytes, mtime_ns, md5_hex, blob_name, task_id"
                " FROM inputs WHERE run_id = ? ORDER BY idx",
                (run_id,),
            )
        )
        uploads = {
            row[0]: UploadRecord(md5_hex=row[1], blob_name=row[2])
            for row in connection.execute(
                "SELECT relpath, md5_hex, blob_name FROM uploads WHERE run_id = ? ORDER BY relpath", (run_id,)
            )
        }
        expiries = {
            row[0]: _parse_timestamp(row[1])
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
        records.append(
            RunRecord(
                run_id=run_id,
                created_at=_parse_timestamp(created_at),
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
            )
        )
    return records


def describe_run(record: RunRecord) -> dict[str, Any]:
    """What `topn status` shows for a run: its state, progress per stage and its failed files."""
    task_ids = record.task_ids
    succeeded = record.succeeded_task_ids
    failed = record.failed_task_ids
    finished_inputs = [item for item in record.inputs if item.task_id in record.completed]
    task_of = record.task_of_relpath
    failed_files = record.failed_relpaths
    failures = [
        {"file": relpath, "task_id": task_of[relpath], **record.file_error(relpath)}
        for relpath in failed_files
    ]
    updated_at = record.state_history[-1].at if record.state_history else record.created_at
    return {
        "run_id": record.run_id,
        "state": record.state,
        "finished": record.is_finished,
        "created_at": _timestamp(record.created_at),
        "updated_at": _timestamp(updated_at),
        "out_dir": record.out_dir,
        "files": len(record.inputs),
        "bytes": sum(item.size_bytes for item in record.inputs),
        "tasks": len(task_ids),
        "stages": {
            "staging": {
                "done": len(record.inputs) - len(record.pending_uploads),
                "total": len(record.inputs),
            },
            "submitting": {"done": len(task_ids) - len(record.unsubmitted_task_ids), "total": len(task_ids)},
            "running": {"done": len(succeeded) + len(failed), "total": len(task_ids)},
            "collecting": {
                "done": len(finished_inputs) - len(record.undownloaded_relpaths),
                "total": len(finished_inputs),
            },
        },
        "files_succeeded": sum(1 for item in record.inputs if item.relpath in record.downloads),
        "files_failed": len(failed_files),
        "tasks_succeeded": len(succeeded),
        "tasks_failed": len(failed),
        "tasks_in_flight": len(record.incomplete_task_ids),
        "failures": failures,
        "sas_expiries": {purpose: _timestamp(moment) for purpose, moment in record.sas_expiries.items()},
        "history": [{"state": change.state, "at": _timestamp(change.at)} for change in record.state_history],
    }
