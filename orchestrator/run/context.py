"""What every stage of a run shares: its fixed facts (RunContext) and what it has done so far (RunLedger)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from azure.batch.aio import BatchClient
from azure.storage.blob.aio import BlobServiceClient

from orchestrator import naming
from orchestrator.azure.clients import Clients, RequestCounter
from orchestrator.azure.pool import Capacity, PoolHandle
from orchestrator.azure.retry import RetryPolicy
from orchestrator.files import file_mtime_ns
from orchestrator.inputs import InputFile, SkippedInput
from orchestrator.journal import Journal, JournalInput, JournalListing, JournalRange, RunRecord
from orchestrator.results import RunCounts, entry_line
from orchestrator.run.split_plan import UnitRange, plan_units, ranges_from_journal
from orchestrator.settings import Settings


class PoolSupply(Protocol):
    """The pool as a run may use it (the process's pool keeper): never created, changed or deleted here."""

    @property
    def pool_id(self) -> str: ...

    async def ensure(self, needed_until: datetime) -> PoolHandle: ...

    async def wait_usable(self) -> Capacity: ...

    def planned_slots(self) -> int: ...


class ProgressSink(Protocol):
    """Receives progress for a display (the CLI renders it with rich on a terminal).

    Stages: "staging" (files uploaded of all files), "running" (tasks completed of all tasks),
    "collecting" (files whose results are saved, of all files).
    """

    def update(self, stage: str, done: int, total: int) -> None: ...


@dataclass
class RunJobs:
    """The run's jobs: the first (`topn-<run_id>`) and the successors a resume made when one ended under it.

    The current job (`number`) holds every work unit without a recorded outcome; a unit that finished
    in an earlier job stays there (its task files are read from that job).
    """

    run_id: str
    number: int = 1
    unit_numbers: dict[str, int] = field(default_factory=dict)  # units moved to a successor; absent: 1

    @property
    def current(self) -> str:
        return naming.job_id(self.run_id, self.number)

    def holding(self, task_id: str) -> str:
        """The job that holds (or held) a work unit's task."""
        return naming.job_id(self.run_id, self.unit_numbers.get(task_id, 1))

    def every_job(self) -> list[str]:
        """Every job the run may have made, first to current (what clean-up deletes)."""
        return [naming.job_id(self.run_id, number) for number in range(1, self.number + 1)]

    def move(self, number: int, task_ids: Sequence[str]) -> None:
        """The units now belong to the successor `number`, which becomes the current job."""
        self.number = number
        self.unit_numbers.update(dict.fromkeys(task_ids, number))


@dataclass(frozen=True)
class RunContext:
    """The run's fixed facts and collaborators, decided before its first side effect."""

    settings: Settings
    clients: Clients
    pool: PoolSupply
    requests: RequestCounter  # this run's requests only (the clients may serve other runs too)
    inputs: list[InputFile]  # grows while blob prefixes are listed (run/listing.py), fixed after PREPARING
    out_dir: Path
    run_id: str
    journal: Journal | None
    progress: ProgressSink | None
    resume: RunRecord | None
    started: float  # time.monotonic() when the run began, for durations
    jobs: RunJobs
    app_container: str
    input_container: str
    output_container: str
    units: list[list[int]]  # input indexes per work unit (one task each)
    task_ids: list[str]  # the task of each unit, by unit index
    unit_by_task: dict[str, int]
    # Work units whose task a resume re-issued, and the generation now in the job (absent: 0).
    generations: dict[str, int] = field(default_factory=dict)
    # Work units that count one byte range of a split input (run/split_plan.py), by unit index.
    ranges: dict[int, UnitRange] = field(default_factory=dict)
    # The ETag a split input's ranges read, by blob name, once looked up (run/splitting.py).
    pinned_etags: dict[str, str | None] = field(default_factory=dict)
    # What `--skip-unreadable` left out at discovery: journalled with the run, listed in summary.json.
    skipped: tuple[SkippedInput, ...] = ()
    # Hears each wait on the active-jobs quota (refusals so far, seconds to wait); the daemon counts them.
    # A new run waits only when someone listens; a resumed run always waits (it is under way).
    on_quota_wait: Callable[[int, float], None] | None = None
    # How far each blob prefix is listed; a prefix not complete is listed on in PREPARING.
    listings: list[JournalListing] = field(default_factory=list)
    max_files_per_task: int = naming.MAX_FILES_PER_UNIT  # how later pages' units are planned
    # A new run's first pages, listed before it was created: their requests, and when listing began.
    listing_start: tuple[int, float] | None = None

    @property
    def still_listing(self) -> bool:
        """Whether inputs are still to be listed (then the run's inputs and units are not all known)."""
        return any(not listing.complete for listing in self.listings)

    @property
    def job_id(self) -> str:
        """The job the run works in now (a successor once a resume found the previous one ended)."""
        return self.jobs.current

    def batch_task_id(self, task_id: str) -> str:
        """The id a work unit's task has in the job now."""
        return naming.task_generation_id(task_id, self.generations.get(task_id, 0))

    def unit_task_id(self, batch_task_id: str) -> str:
        """The work unit's task id of a task in the job (itself, unless a resume re-issued it)."""
        if batch_task_id in self.unit_by_task:
            return batch_task_id
        base, _, generation = batch_task_id.rpartition("-g")
        if base in self.unit_by_task and generation.isdigit():
            return base
        raise KeyError(f"task {batch_task_id!r} is none of this run's")

    @property
    def batch(self) -> BatchClient:
        return self.clients.batch

    @property
    def blobs(self) -> BlobServiceClient:
        return self.clients.blob_service

    @property
    def retry(self) -> RetryPolicy:
        return self.settings.retry


@dataclass(frozen=True, slots=True)
class FileResult:
    """One input's summary entry as its summary.json line, and what the run's totals take from it.

    The line, not the dict: every file's entry is kept until the run ends (results.SummaryEntries).
    """

    line: str
    succeeded: bool
    words: int
    invalid_bytes: int

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> FileResult:
        succeeded = entry["status"] == "succeeded"
        words, invalid = (int(entry["words"] or 0), int(entry["invalid_bytes"] or 0)) if succeeded else (0, 0)
        return cls(entry_line(entry), succeeded, words, invalid)

    @property
    def entry(self) -> dict[str, Any]:
        """The entry as a dict (decoded afresh: change it and make a new FileResult.of it)."""
        entry: dict[str, Any] = json.loads(self.line)
        return entry


@dataclass
class RunLedger:
    """What the run has done so far: what it created, how long each stage took, each file's result."""

    stage_s: dict[str, float] = field(default_factory=dict)
    first_task_s: float | None = None  # seconds from the run's start to its first task in the job
    job_created: bool = False
    job_is_new: bool = True  # False when a resumed run found its job still there
    # Tasks of the job already completed that the monitor does not await (a resumed run's recorded
    # completions, tasks re-issued since they ended): not news when the counts show them.
    completed_in_job: int = 0
    results: dict[int, FileResult] = field(default_factory=dict)  # by input index
    # Split inputs: how each range unit's task ended (by task id), and the inputs being merged.
    range_outcomes: dict[str, Any] = field(default_factory=dict)
    merging: set[int] = field(default_factory=set)
    # A resumed run's inputs that changed before their task was submitted, by index: uploaded again
    # and counted at their size now.
    resized_inputs: dict[int, int] = field(default_factory=dict)
    # Inputs that could not be uploaded (vanished or unreadable since discovery), by index: why.
    unreadable_inputs: dict[int, str] = field(default_factory=dict)
    counts: RunCounts = field(default_factory=RunCounts)

    def current_inputs(self, inputs: Sequence[InputFile]) -> list[InputFile]:
        """The run's inputs with the sizes they have now."""
        return [
            dataclasses.replace(item, size_bytes=self.resized_inputs[index])
            if index in self.resized_inputs
            else item
            for index, item in enumerate(inputs)
        ]

    def failed_files(self) -> int:
        return sum(1 for result in self.results.values() if not result.succeeded)


def new_run_context(
    settings: Settings,
    inputs: Sequence[InputFile],
    clients: Clients,
    out_dir: Path,
    *,
    pool: PoolSupply,
    run_id: str,
    journal: Journal | None,
    progress: ProgressSink | None,
    max_files_per_task: int,
    resume: RunRecord | None,
    started: float,
    skipped: Sequence[SkippedInput] = (),
    on_quota_wait: Callable[[int, float], None] | None = None,
    listings: Sequence[JournalListing] = (),
    listing_start: tuple[int, float] | None = None,
) -> RunContext:
    """The context of a run: its names, and its work units (a resumed run's own, never a new plan).

    `listings`: a new run's blob prefixes still to list (a resumed run's come from its journal).
    """
    inputs = list(inputs)
    prefix = settings.storage.container_prefix
    if resume is not None:
        task_ids = list(resume.task_ids)
        index_of = {item.relpath: index for index, item in enumerate(inputs)}
        by_task = resume.inputs_by_task
        units = [[index_of[item.relpath] for item in by_task[task_id]] for task_id in task_ids]
        recorded = {task_id: (part.index, part.start, part.end) for task_id, part in resume.ranges.items()}
        ranges = ranges_from_journal(task_ids, recorded)
    else:
        plan = plan_units(
            [item.size_bytes for item in inputs],
            pool.planned_slots(),
            split_bytes=settings.run.split_bytes,
            max_files_per_unit=max_files_per_task,
            max_unit_bytes=settings.run.unit_target_bytes,
        )
        units, ranges = plan.units, plan.ranges
        task_ids = [naming.task_id(unit_index) for unit_index in range(len(units))]
    return RunContext(
        settings=settings,
        clients=clients,
        pool=pool,
        requests=RequestCounter(),
        inputs=inputs,
        out_dir=out_dir,
        run_id=run_id,
        journal=journal,
        progress=progress,
        resume=resume,
        started=started,
        jobs=RunJobs(
            run_id,
            resume.job_number if resume is not None else 1,
            dict(resume.task_jobs) if resume is not None else {},
        ),
        app_container=naming.app_container(prefix),
        input_container=naming.input_container(prefix, run_id),
        output_container=naming.output_container(prefix, run_id),
        units=units,
        task_ids=task_ids,
        unit_by_task={task_id: unit_index for unit_index, task_id in enumerate(task_ids)},
        generations=dict(resume.task_generations) if resume is not None else {},
        ranges=ranges,
        skipped=(
            tuple(SkippedInput(Path(path), reason) for path, reason in resume.skipped.items())
            if resume is not None
            else tuple(skipped)
        ),
        on_quota_wait=on_quota_wait,
        listings=list(resume.listings if resume is not None else listings),
        max_files_per_task=max_files_per_task,
        listing_start=listing_start,
    )


def journal_inputs(run: RunContext, first_input: int = 0, first_unit: int = 0) -> list[JournalInput]:
    """The run's inputs as the journal records them, each with the task that processes it (a split
    input's first range's); from `first_input` on, whose units are `first_unit` and later."""
    task_of_input: dict[int, str] = {}
    for unit_index in range(first_unit, len(run.units)):
        for index in run.units[unit_index]:
            task_of_input.setdefault(index, run.task_ids[unit_index])
    return [
        JournalInput(
            index=index,
            relpath=item.relpath,
            path=str(item.path),
            size_bytes=item.size_bytes,
            mtime_ns=file_mtime_ns(item.path),
            md5_hex=None,
            blob_name=naming.input_blob_name(run.run_id, item.relpath),
            task_id=task_of_input[index],
        )
        if item.blob is None
        else JournalInput(  # read where it lives: its address stands for its path and blob name
            index=index,
            relpath=item.relpath,
            path=item.blob.address,
            size_bytes=item.size_bytes,
            mtime_ns=0,
            md5_hex=None,
            blob_name=item.blob.address,
            task_id=task_of_input[index],
            etag=item.blob.etag,
        )
        for index, item in enumerate(run.inputs[first_input:], start=first_input)
    ]


def journal_ranges(run: RunContext, first_unit: int = 0) -> list[JournalRange]:
    """The run's range units as the journal records them (those from `first_unit` on)."""
    return [
        JournalRange(task_id=run.task_ids[unit_index], index=part.index, start=part.start, end=part.end)
        for unit_index, part in sorted(run.ranges.items())
        if unit_index >= first_unit
    ]
