"""Durable run state in SQLite, so a restarted topn resumes a run instead of redoing or losing it.

One database file per state folder (`.topn/journal.sqlite3` by default) holds every run: its
settings snapshot (secrets stripped), its inputs, every state transition, SAS expiries (never the SAS
itself), the task ids submitted, the task outcomes, the outputs downloaded and the files that failed.
docs/journal.md describes the guarantees and how `topn resume` and `topn status` use them.

The package holds storage only: `schema` (the file, its migrations, opening it), `store` (the
`Journal`: one transaction per record, reads in one snapshot), `queries` (the SQL of the reads) and
`records` (what reads return). What the records mean for a resumed run is orchestrator/run/resume.py;
what `topn status` shows is orchestrator/service/status.py; secrets are stripped by orchestrator/secrets.py.

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
from orchestrator.journal.schema import (
    JOURNAL_FILENAME,
    SCHEMA_VERSION,
    JournalError,
    JournalUnusableError,
    check_state_folder,
    format_timestamp,
    journal_path,
)
from orchestrator.journal.store import Journal

__all__ = [
    "JOURNAL_FILENAME",
    "SCHEMA_VERSION",
    "TERMINAL_STATES",
    "DownloadRecord",
    "Journal",
    "JournalError",
    "JournalInput",
    "JournalListing",
    "JournalRange",
    "JournalUnusableError",
    "RunRecord",
    "RunSummary",
    "StateChange",
    "UploadRecord",
    "check_state_folder",
    "format_timestamp",
    "journal_path",
]
