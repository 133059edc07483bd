"""Pools, nodes, jobs and tasks, and the state transitions the service allows (no I/O)."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from emulator.wire import new_etag


class PoolState(StrEnum):
    ACTIVE = "active"
    DELETING = "deleting"


class AllocationState(StrEnum):
    STEADY = "steady"
    RESIZING = "resizing"
    STOPPING = "stopping"


class NodeState(StrEnum):
    CREATING = "creating"
    STARTING = "starting"
    WAITING_FOR_START_TASK = "waitingforstarttask"
    START_TASK_FAILED = "starttaskfailed"
    IDLE = "idle"
    RUNNING = "running"
    REBOOTING = "rebooting"
    LEAVING_POOL = "leavingpool"


# A reboot is accepted in these states (the service also reboots a node whose start task failed).
REBOOTABLE_NODE_STATES = frozenset(
    {NodeState.IDLE, NodeState.RUNNING, NodeState.START_TASK_FAILED, NodeState.WAITING_FOR_START_TASK}
)
REBOOT_OPTIONS = ("requeue", "terminate")
DEALLOCATION_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")


# Tasks are only ever placed on nodes in these states.
SCHEDULABLE_NODE_STATES = frozenset({NodeState.IDLE, NodeState.RUNNING})


class JobState(StrEnum):
    ACTIVE = "active"
    TERMINATING = "terminating"
    COMPLETED = "completed"
    DELETING = "deleting"


class TaskState(StrEnum):
    ACTIVE = "active"
    PREPARING = "preparing"
    RUNNING = "running"
    COMPLETED = "completed"


class TaskResult(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True)
class FailureInfo:
    """Why an attempt failed, in the service's `failureInfo` shape."""

    category: str  # "usererror" | "servererror"
    code: str
    message: str
    details: tuple[tuple[str, str], ...] = ()

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"category": self.category, "code": self.code, "message": self.message}
        if self.details:
            body["details"] = [{"name": name, "value": value} for name, value in self.details]
        return body


def exit_code_failure(exit_code: int) -> FailureInfo:
    message = "The task process exited with an unexpected exit code"
    return FailureInfo("usererror", "FailureExitCode", message, (("Message", message),))


TASK_ENDED_BY_USER = FailureInfo("usererror", "TaskEnded", "Task Was Ended by User Request")
WALL_CLOCK_EXCEEDED = FailureInfo(
    "usererror",
    "TaskEnded",
    "The task was ended by user request",
    (
        ("Message", "The maximum execution time configured on the task was exceeded"),
        ("AdditionalErrorCode", "FailureExitCode"),
    ),
)


@dataclass(frozen=True)
class AttemptOutcome:
    """How one attempt of a task (or start task) ended, before retry rules are applied."""

    exit_code: int | None
    failure: FailureInfo | None
    # Failures that the service never retries: resource download, output upload, wall clock, launch errors.
    retryable: bool = True

    @property
    def succeeded(self) -> bool:
        return self.failure is None and self.exit_code == 0


def outcome_of_exit(exit_code: int) -> AttemptOutcome:
    if exit_code == 0:
        return AttemptOutcome(0, None)
    return AttemptOutcome(exit_code, exit_code_failure(exit_code))


def retries_left(retry_count: int, max_task_retry_count: int) -> bool:
    """`maxTaskRetryCount` -1 means retry without limit; attempts allowed are 1 + the count."""
    return max_task_retry_count == -1 or retry_count < max_task_retry_count


@dataclass(eq=False)
class StartTaskInfo:
    state: str = "running"
    start_time: datetime | None = None
    end_time: datetime | None = None
    exit_code: int | None = None
    retry_count: int = 0
    last_retry_time: datetime | None = None
    result: TaskResult | None = None
    failure: FailureInfo | None = None


@dataclass(eq=False)
class Node:
    id: str
    pool_id: str
    index: int
    is_dedicated: bool
    root: Path
    slots: int
    created: datetime
    state: NodeState = NodeState.CREATING
    state_time: datetime | None = None
    scheduling_enabled: bool = True
    used_slots: int = 0
    running_tasks: set[Task] = field(default_factory=set)
    total_tasks_run: int = 0
    total_tasks_succeeded: int = 0
    start_task_info: StartTaskInfo | None = None
    last_boot_time: datetime | None = None  # None: never rebooted (it booted when it was created)

    @property
    def free_slots(self) -> int:
        return self.slots - self.used_slots

    def accepts_tasks(self) -> bool:
        return self.state in SCHEDULABLE_NODE_STATES and self.scheduling_enabled


@dataclass(eq=False)
class Pool:
    id: str
    spec: dict[str, Any]
    created: datetime
    sequence: int = 0  # creation order; list paging uses it as a stable cursor
    etag: str = field(default_factory=new_etag)
    last_modified: datetime | None = None
    state: PoolState = PoolState.ACTIVE
    state_time: datetime | None = None
    allocation_state: AllocationState = AllocationState.RESIZING
    allocation_state_time: datetime | None = None
    nodes: dict[str, Node] = field(default_factory=dict)
    resize_errors: list[dict[str, Any]] = field(default_factory=list)
    # What happens to running tasks on nodes the current resize removes (requeue, terminate, ...).
    deallocation_option: str = "requeue"

    @property
    def task_slots_per_node(self) -> int:
        return int(self.spec.get("taskSlotsPerNode", 1))

    @property
    def fill_type(self) -> str:
        return str(self.spec.get("taskSchedulingPolicy", {}).get("nodeFillType", "spread")).lower()

    def touch(self, now: datetime) -> None:
        self.etag = new_etag()
        self.last_modified = now


@dataclass(eq=False)
class Task:
    job_id: str
    id: str
    spec: dict[str, Any]
    sequence: int
    created: datetime
    max_task_retry_count: int
    max_wall_clock_s: float
    required_slots: int
    etag: str = field(default_factory=new_etag)
    last_modified: datetime | None = None
    state: TaskState = TaskState.ACTIVE
    state_time: datetime | None = None
    previous_state: TaskState | None = None
    previous_state_time: datetime | None = None
    retry_count: int = 0
    requeue_count: int = 0
    last_retry_time: datetime | None = None
    last_requeue_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    exit_code: int | None = None
    result: TaskResult | None = None
    failure: FailureInfo | None = None
    pool_id: str | None = None
    node_id: str | None = None
    # Increases with every dispatch, so a stale report about an earlier attempt is ignored.
    attempt: int = 0

    @property
    def command_line(self) -> str:
        return str(self.spec.get("commandLine", ""))

    @property
    def directory(self) -> str:
        """The task folder relative to the node root (Linux layout)."""
        return f"workitems/{self.job_id}/job-1/{self.id}"


@dataclass
class TaskCounts:
    """Job task counts kept up to date on every transition, so `taskcounts` costs O(1)."""

    active: int = 0
    running: int = 0
    completed: int = 0
    succeeded: int = 0
    failed: int = 0

    def to_wire(self) -> dict[str, int]:
        return {
            "active": self.active,
            "running": self.running,
            "completed": self.completed,
            "succeeded": self.succeeded,
            "failed": self.failed,
        }


def count_bucket(state: TaskState) -> str:
    """The `taskCounts` bucket of a state; `preparing` counts as running (it is on a node)."""
    if state == TaskState.ACTIVE:
        return "active"
    if state == TaskState.COMPLETED:
        return "completed"
    return "running"


def adjust_counts(counts: TaskCounts, task: Task, weight: int, sign: int) -> None:
    """Add (`sign` 1) or remove (`sign` -1) a task's contribution to counts weighted by `weight`."""
    bucket = count_bucket(task.state)
    setattr(counts, bucket, getattr(counts, bucket) + sign * weight)
    if task.state == TaskState.COMPLETED:
        if task.result == TaskResult.SUCCESS:
            counts.succeeded += sign * weight
        else:
            counts.failed += sign * weight


@dataclass(eq=False)
class Job:
    id: str
    spec: dict[str, Any]
    sequence: int
    created: datetime
    etag: str = field(default_factory=new_etag)
    last_modified: datetime | None = None
    state: JobState = JobState.ACTIVE
    state_time: datetime | None = None
    previous_state: JobState | None = None
    previous_state_time: datetime | None = None
    end_time: datetime | None = None
    terminate_reason: str | None = None
    tasks: dict[str, Task] = field(default_factory=dict)  # keyed by lowercased id
    tasks_in_order: list[Task] = field(default_factory=list)  # by sequence
    counts: TaskCounts = field(default_factory=TaskCounts)
    slot_counts: TaskCounts = field(default_factory=TaskCounts)
    # Active tasks by submission sequence; entries go stale when a task moves on and are skipped lazily.
    _ready: list[tuple[int, int, int, Task]] = field(default_factory=list)
    _pushes: int = 0

    @property
    def pool_id(self) -> str | None:
        pool_id = self.spec.get("poolInfo", {}).get("poolId")
        return str(pool_id) if pool_id else None

    @property
    def priority(self) -> int:
        return int(self.spec.get("priority", 0))

    @property
    def max_parallel_tasks(self) -> int:
        return int(self.spec.get("maxParallelTasks", -1))

    @property
    def on_all_tasks_complete(self) -> str:
        return str(self.spec.get("onAllTasksComplete", "noaction")).lower()

    @property
    def on_task_failure(self) -> str:
        return str(self.spec.get("onTaskFailure", "noaction")).lower()

    def touch(self, now: datetime) -> None:
        self.etag = new_etag()
        self.last_modified = now

    def set_state(self, state: JobState, now: datetime) -> None:
        self.previous_state, self.previous_state_time = self.state, self.state_time
        self.state, self.state_time = state, now
        self.touch(now)

    def make_ready(self, task: Task) -> None:
        self._pushes += 1
        heapq.heappush(self._ready, (task.sequence, self._pushes, task.attempt, task))

    def next_ready(self) -> Task | None:
        """The active task submitted first, or None; drops stale queue entries on the way."""
        while self._ready:
            _, _, attempt, task = self._ready[0]
            if (
                task.state == TaskState.ACTIVE
                and task.attempt == attempt
                and self.tasks.get(task.id.lower()) is task
            ):
                return task
            heapq.heappop(self._ready)
        return None

    def all_tasks_complete(self) -> bool:
        return self.counts.active == 0 and self.counts.running == 0


def exit_job_action(spec: dict[str, Any], outcome: AttemptOutcome) -> str:
    """The job action (`none`/`disable`/`terminate`) a finished task asks for, from its `exitConditions`.

    Without a matching condition the default is `none` for exit code 0 and `terminate` otherwise.
    """
    conditions = spec.get("exitConditions") or {}
    default_action = "none" if outcome.succeeded else "terminate"

    def action_of(options: object) -> str | None:
        if isinstance(options, dict) and options.get("jobAction"):
            return str(options["jobAction"]).lower()
        return None

    chosen: str | None = None
    if outcome.exit_code is None and outcome.failure is not None:
        if outcome.failure.code.startswith("FileUpload"):
            chosen = action_of(conditions.get("fileUploadError"))
        elif outcome.failure.code.startswith(("Blob", "Resource")):
            chosen = action_of(conditions.get("preProcessingError"))
    elif outcome.exit_code is not None:
        for entry in conditions.get("exitCodes") or []:
            if isinstance(entry, dict) and entry.get("code") == outcome.exit_code:
                chosen = action_of(entry.get("exitOptions"))
                break
        else:
            for entry in conditions.get("exitCodeRanges") or []:
                if isinstance(entry, dict) and entry.get("start", 0) <= outcome.exit_code <= entry.get(
                    "end", -1
                ):
                    chosen = action_of(entry.get("exitOptions"))
                    break
    if chosen is None and not outcome.succeeded:
        chosen = action_of(conditions.get("default"))
    return chosen or default_action
