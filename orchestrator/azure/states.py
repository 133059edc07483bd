"""The SDK's states, mapped once into small enums: no other module compares wire strings.

The SDK hands back its own str-enums for values it knows and plain strings for values it does not
(a newer service, or an emulator); both map here, and anything unknown maps to OTHER/UNKNOWN.
"""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import Any


def wire_text(value: object) -> str | None:
    """An SDK enum or string as its wire text (`str()` of a str-Enum gives the member's name)."""
    if value is None:
        return None
    return str(value.value) if isinstance(value, Enum) else str(value)


class NodeState(StrEnum):
    """What topn needs to know of a compute node."""

    IDLE = "idle"
    RUNNING = "running"
    START_TASK_FAILED = "starttaskfailed"
    UNUSABLE = "unusable"
    OTHER = "other"  # booting, rebooting, leaving, ...: not usable yet, not failed

    @property
    def usable(self) -> bool:
        return self in (NodeState.IDLE, NodeState.RUNNING)


class JobState(StrEnum):
    ACTIVE = "active"
    DISABLING = "disabling"
    DISABLED = "disabled"
    ENABLING = "enabling"
    TERMINATING = "terminating"
    COMPLETED = "completed"
    DELETING = "deleting"
    UNKNOWN = "unknown"

    @property
    def runs_tasks(self) -> bool:
        """Whether tasks in the job can still run (a disabling job finishes what it was running)."""
        return self in (JobState.ACTIVE, JobState.ENABLING, JobState.DISABLING)


class TaskState(StrEnum):
    ACTIVE = "active"
    PREPARING = "preparing"
    RUNNING = "running"
    COMPLETED = "completed"
    UNKNOWN = "unknown"

    @property
    def started(self) -> bool:
        """On a node already: its resource files (and their SAS) were fetched."""
        return self in (TaskState.PREPARING, TaskState.RUNNING)


def _member(enum: type[Any], value: object, fallback: Any) -> Any:
    text = wire_text(value)
    try:
        return enum(text) if text is not None else fallback
    except ValueError:
        return fallback


def node_state(node: Any) -> NodeState:
    """The state of a `BatchNode`."""
    state: NodeState = _member(NodeState, node.state, NodeState.OTHER)
    return state


def job_state(job: Any) -> JobState:
    """The state of a `BatchJob`."""
    state: JobState = _member(JobState, job.state, JobState.UNKNOWN)
    return state


def task_state(task: Any) -> TaskState:
    """The state of a `BatchTask`."""
    state: TaskState = _member(TaskState, task.state, TaskState.UNKNOWN)
    return state


def task_succeeded(execution_info: Any) -> bool:
    """A task's last attempt ended with result `success`."""
    return execution_info is not None and wire_text(execution_info.result) == "success"


def allocation_steady(pool: Any) -> bool:
    """The pool is not resizing: no more nodes are coming for its current target."""
    return wire_text(pool.allocation_state) == "steady"
