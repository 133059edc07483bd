"""What `topn resume` continues from: the journalled run's inputs, results folder and result-shaping settings.

Endpoints and credentials always come from the current configuration (secrets were never journalled);
everything that shapes the results comes from the run's settings snapshot, so a resumed run gives
the summary an uninterrupted one would have given (docs/journal.md, "How resume uses the journal").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.azure.states import TaskState
from orchestrator.errors import UsageError
from orchestrator.inputs import InputFile
from orchestrator.journal import RunRecord
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
        InputFile(path=Path(item.path), relpath=item.relpath, size_bytes=item.size_bytes) for item in ordered
    ]


def resumed_out_dir(record: RunRecord) -> Path:
    """The results folder the run started writing to."""
    if not record.out_dir:
        raise UsageError(
            f"run {record.run_id} has no results folder in the journal (written by an older topn); "
            "it cannot be resumed - start it again with `topn run`"
        )
    return Path(record.out_dir)


def sas_expire_before(expiries: Mapping[str, datetime], deadline: datetime) -> bool:
    """Whether a SAS the run's submitted tasks may carry ends before `deadline` (an unrecorded one counts)."""
    return any(purpose not in expiries or expiries[purpose] < deadline for purpose in SAS_PURPOSES)


@dataclass(frozen=True)
class SasRefreshPlan:
    """What a resume does about tasks whose SAS would expire before its deadline."""

    replace: tuple[str, ...]  # active (not started): delete, then add again with the same id and fresh SAS
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
