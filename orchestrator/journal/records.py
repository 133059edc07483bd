"""What the journal hands out: plain, immutable records of what was stored.

The rules that read meaning into them (what a resumed run still has to do, what `topn status`
shows) live with their users: orchestrator/run/resume.py and orchestrator/service/status.py.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

# The journal records any well-formed state name (the pipeline owns the state machine of DESIGN §3);
# it only needs to know which states end a run.
TERMINAL_STATES: Final = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


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
    # Set for an input read where it lives in Blob Storage (then `path` and `blob_name` are its
    # address `az://CONTAINER/NAME`): the ETag it was listed with.
    etag: str | None = None


@dataclasses.dataclass(frozen=True)
class JournalRange:
    """One work unit that counts the byte range [start, end) of a split input (by its index)."""

    task_id: str
    index: int
    start: int
    end: int


@dataclasses.dataclass(frozen=True)
class JournalListing:
    """How far a run has listed one blob prefix of its arguments (pure data: never a SAS or a key).

    `marker` is the continuation marker after the last journalled page (None once `complete`, or
    before the first page): a resumed run lists on from there.
    """

    position: int  # the prefix's place among the run's blob arguments
    argument: str  # as given, without any query
    container: str
    prefix: str
    marker: str | None
    complete: bool


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
    # (offset, length) in `blob_name` when the input is packed with its unit's other small inputs.
    extent: tuple[int, int] | None = None


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
    # Work units whose task a resume re-issued: the generation in the job (naming.task_generation_id).
    task_generations: Mapping[str, int] = dataclasses.field(default_factory=dict)
    # Work units a resume moved to a successor job: that job's number (naming.job_id); absent: job 1.
    task_jobs: Mapping[str, int] = dataclasses.field(default_factory=dict)
    # The error that ended the run's last attempt (error_type, message, resumable, state, at), if any.
    last_error: Mapping[str, Any] | None = None
    # The work units of split inputs, by task id: each counts one byte range of its input. A split
    # input's own `task_id` is its first range's.
    ranges: Mapping[str, JournalRange] = dataclasses.field(default_factory=dict)
    # What `--skip-unreadable` left out at discovery: why, by path as the user gave it (sorted).
    skipped: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Each blob prefix's listing, in argument order (empty for a run without blob prefixes).
    listings: tuple[JournalListing, ...] = ()

    @property
    def is_finished(self) -> bool:
        """True once the run reached SUCCEEDED, FAILED or CANCELLED (nothing left to resume)."""
        return self.state.upper() in TERMINAL_STATES

    @property
    def job_number(self) -> int:
        """The run's current job: the one that holds every unit without an outcome (1 unless succeeded)."""
        return max(self.task_jobs.values(), default=1)

    @property
    def uploaded_md5(self) -> dict[str, str]:
        """The MD5 recorded for each uploaded input, by relpath."""
        return {relpath: upload.md5_hex for relpath, upload in self.uploads.items()}

    # The derived views below are computed once per record (records are immutable snapshots), so
    # status and resume stay linear in the number of inputs.

    @functools.cached_property
    def ranges_by_index(self) -> dict[int, tuple[JournalRange, ...]]:
        """The range units of each split input (by input index), in file order."""
        grouped: dict[int, list[JournalRange]] = {}
        for part in sorted(self.ranges.values(), key=lambda part: (part.index, part.start)):
            grouped.setdefault(part.index, []).append(part)
        return {index: tuple(parts) for index, parts in grouped.items()}

    @functools.cached_property
    def task_ids(self) -> tuple[str, ...]:
        """Every task id of the run once, in input order (a split input's ranges in file order)."""
        ordered: dict[str, None] = {}
        by_index = self.ranges_by_index
        for item in self.inputs:
            ordered[item.task_id] = None
            for part in by_index.get(item.index, ()):
                ordered[part.task_id] = None
        return tuple(ordered)

    @functools.cached_property
    def inputs_by_task(self) -> dict[str, tuple[JournalInput, ...]]:
        """The inputs of each task (a work unit may hold several; a range unit, its input), in input order."""
        grouped: dict[str, list[JournalInput]] = {}
        by_index = self.ranges_by_index
        for item in self.inputs:
            grouped.setdefault(item.task_id, []).append(item)
            for part in by_index.get(item.index, ()):
                if part.task_id != item.task_id:
                    grouped.setdefault(part.task_id, []).append(item)
        return {task_id: tuple(items) for task_id, items in grouped.items()}

    @functools.cached_property
    def task_of_relpath(self) -> dict[str, str]:
        """The task id of each input, by relpath."""
        return {item.relpath: item.task_id for item in self.inputs}


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """One run in a few numbers, as `Journal.list_run_summaries` counts them in SQL (no inputs loaded).

    The counts follow the same rules as the whole-record path (orchestrator/run/resume.py);
    tests/unit/orchestrator/test_status.py checks that the two agree.
    """

    run_id: str
    state: str
    created_at: datetime
    updated_at: datetime  # the latest state change (the creation when there is none)
    out_dir: str | None
    files: int
    bytes: int
    tasks: int
    files_succeeded: int  # output saved
    files_failed: int  # recorded as failed, or in a failed task that can save nothing more
    tasks_succeeded: int
    tasks_failed: int
    tasks_in_flight: int  # submitted, no outcome recorded

    @property
    def is_finished(self) -> bool:
        """True once the run reached SUCCEEDED, FAILED or CANCELLED."""
        return self.state.upper() in TERMINAL_STATES
