"""The account's in-memory state and every transition of pools, nodes, jobs and tasks.

All mutations go through `Account`, which keeps job task counts incremental, logs one event per
state change and wakes the scheduler. Nothing here blocks: process work lives in runner.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import structlog

from emulator.model import (
    REBOOTABLE_NODE_STATES,
    TASK_ENDED_BY_USER,
    AllocationState,
    AttemptOutcome,
    FailureInfo,
    Job,
    JobState,
    Node,
    NodeState,
    Pool,
    PoolState,
    Task,
    TaskResult,
    TaskState,
    adjust_counts,
    exit_job_action,
    retries_left,
)
from emulator.quota import Quotas, check_active_jobs
from emulator.validation import DEFAULT_JOB_CONSTRAINTS, POOL_UPDATABLE_WHEN_EMPTY
from emulator.wire import ServiceError, invalid_property, new_etag, parse_duration, utc_now

log = structlog.get_logger("emulator")

StopAttempt = Callable[[], None]
# What a job replace (PUT) falls back to for properties it leaves out.
UPDATABLE_JOB_DEFAULTS: dict[str, Any] = {
    "priority": 0,
    "maxParallelTasks": -1,
    "allowTaskPreemption": False,
    "constraints": DEFAULT_JOB_CONSTRAINTS,
    "onAllTasksComplete": "noaction",
    "onTaskFailure": "noaction",
    "metadata": [],
}


class Account:
    """One Batch account: pools, jobs and tasks, plus hooks to stop running work."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.pools: dict[str, Pool] = {}
        self.jobs: dict[str, Job] = {}
        self._sequence = itertools.count(1)
        self._wake: anyio.Event | None = None
        # Set when a job is added or changed, so the wall clock (jobclock.py) looks at deadlines again.
        self._job_deadlines: anyio.Event | None = None
        # Cancel hooks of running attempts (tasks) and start tasks (nodes), set by the runner.
        self.task_stoppers: dict[Task, StopAttempt] = {}
        self.node_stoppers: dict[Node, StopAttempt] = {}
        # Active jobs by lowercased pool id (dicts as ordered sets), maintained by _reindex.
        self._active_jobs: dict[str, dict[Job, None]] = {}
        self._indexed_pool: dict[Job, str] = {}
        self.tasks_added = 0
        self.tasks_completed = 0
        self.tasks_running = 0
        self.quota = Quotas()

    # -- scheduler wake-ups -------------------------------------------------------------------
    def wake_event(self) -> anyio.Event:
        """The event the scheduler waits on; set whenever work or capacity may have appeared."""
        if self._wake is None:
            self._wake = anyio.Event()
        return self._wake

    def notify(self) -> None:
        if self._wake is not None:
            self._wake.set()
            self._wake = None

    def job_deadlines_event(self) -> anyio.Event:
        """The event the job wall clock waits on; set when a job is added or its constraints may change."""
        if self._job_deadlines is None:
            self._job_deadlines = anyio.Event()
        return self._job_deadlines

    def _job_deadlines_changed(self) -> None:
        if self._job_deadlines is not None:
            self._job_deadlines.set()
            self._job_deadlines = None

    def next_sequence(self) -> int:
        return next(self._sequence)

    # -- pools --------------------------------------------------------------------------------
    def get_pool(self, pool_id: str) -> Pool:
        pool = self.pools.get(pool_id.lower())
        if pool is None:
            raise ServiceError(404, "PoolNotFound", "The specified pool does not exist.")
        return pool

    def add_pool(self, spec: dict[str, Any]) -> Pool:
        pool_id = str(spec["id"])
        existing = self.pools.get(pool_id.lower())
        if existing is not None:
            if existing.state == PoolState.DELETING:
                raise ServiceError(
                    409, "PoolBeingDeleted", "The specified pool has been marked for deletion."
                )
            raise ServiceError(409, "PoolExists", "The specified pool already exists.")
        now = utc_now()
        pool = Pool(
            pool_id,
            spec,
            now,
            sequence=self.next_sequence(),
            last_modified=now,
            state_time=now,
            allocation_state_time=now,
        )
        self.pools[pool_id.lower()] = pool
        log.info("pool.created", pool_id=pool_id, target_nodes=_target_nodes(spec))
        return pool

    def node_dir(self, pool: Pool, node_id: str) -> Path:
        return self.root / pool.id / node_id

    def set_node_state(self, node: Node, state: NodeState) -> None:
        if node.state == state:
            return
        previous, node.state, node.state_time = node.state, state, utc_now()
        log.info(
            "node.state_changed", pool_id=node.pool_id, node_id=node.id, from_state=previous, to_state=state
        )
        if state in (NodeState.IDLE, NodeState.RUNNING):
            self.notify()

    def begin_delete_pool(self, pool: Pool) -> None:
        """Mark the pool deleting, requeue its running tasks and stop its processes."""
        if pool.state == PoolState.DELETING:
            raise ServiceError(409, "PoolBeingDeleted", "The specified pool has been marked for deletion.")
        now = utc_now()
        pool.state, pool.state_time = PoolState.DELETING, now
        pool.touch(now)
        log.info("pool.deleting", pool_id=pool.id)
        for node in pool.nodes.values():
            self.remove_node(node)

    def begin_resize_pool(
        self, pool: Pool, dedicated: int, low_priority: int, deallocation: str = "requeue"
    ) -> None:
        """New targets; the runner then adds or removes nodes and reports `steady`."""
        if pool.state == PoolState.DELETING:
            raise ServiceError(409, "PoolBeingDeleted", "The specified pool has been marked for deletion.")
        if pool.allocation_state != AllocationState.STEADY:
            raise ServiceError(
                409, "OperationInvalidForCurrentState", "The pool is resizing; wait until it is steady."
            )
        now = utc_now()
        pool.spec = {**pool.spec, "targetDedicatedNodes": dedicated, "targetLowPriorityNodes": low_priority}
        pool.allocation_state, pool.allocation_state_time = AllocationState.RESIZING, now
        pool.deallocation_option = deallocation
        pool.resize_errors.clear()
        pool.touch(now)
        log.info("pool.resizing", pool_id=pool.id, target_nodes=dedicated + low_priority)

    def update_pool(self, pool: Pool, changes: dict[str, Any]) -> None:
        """PATCH: replace the given properties; a new start task reaches new and rebooted nodes only."""
        if pool.state == PoolState.DELETING:
            raise ServiceError(409, "PoolBeingDeleted", "The specified pool has been marked for deletion.")
        needs_empty = sorted(set(changes) & POOL_UPDATABLE_WHEN_EMPTY)
        if needs_empty and (pool.nodes or pool.allocation_state != AllocationState.STEADY):
            raise ServiceError(
                409,
                "OperationInvalidForCurrentState",
                f"{needs_empty[0]} can be changed only while the pool is steady with no nodes.",
                {"PropertyName": needs_empty[0]},
            )
        pool.spec = {**pool.spec, **changes}
        pool.touch(utc_now())
        log.info("pool.updated", pool_id=pool.id, properties=sorted(changes))

    def begin_reboot_node(self, node: Node, option: str) -> None:
        """The node goes `rebooting`: its tasks are requeued (or ended) and its start task stopped.

        The runner then boots it again with the pool's current start task.
        """
        if node.state not in REBOOTABLE_NODE_STATES:
            raise ServiceError(
                409,
                "OperationInvalidForCurrentState",
                f"The node is {node.state}; a node can be rebooted when it is idle or running, "
                "or after its start task failed.",
            )
        # `rebooting` first, so releasing the tasks below never makes the node look idle.
        self.set_node_state(node, NodeState.REBOOTING)
        for task in sorted(node.running_tasks, key=lambda task: task.sequence):
            if option == "terminate":
                self._end_by_user(task)
                self.check_job_completion(self.jobs[task.job_id.lower()])
            else:
                self.requeue(task)
        stop = self.node_stoppers.pop(node, None)
        if stop is not None:
            stop()
        log.info("node.rebooting", pool_id=node.pool_id, node_id=node.id, reboot_option=option)

    def remove_node(self, node: Node, option: str = "requeue") -> None:
        """A node leaves its pool: its running tasks are requeued (or ended) and its start task stopped."""
        for task in sorted(node.running_tasks, key=lambda task: task.sequence):
            if option == "terminate":
                self._end_by_user(task)
                self.check_job_completion(self.jobs[task.job_id.lower()])
            else:
                self.requeue(task)
        stop = self.node_stoppers.pop(node, None)
        if stop is not None:
            stop()
        self.set_node_state(node, NodeState.LEAVING_POOL)

    def forget_pool(self, pool: Pool) -> None:
        if self.pools.get(pool.id.lower()) is pool:
            del self.pools[pool.id.lower()]
            log.info("pool.deleted", pool_id=pool.id)

    # -- jobs ---------------------------------------------------------------------------------
    def get_job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id.lower())
        if job is None:
            raise ServiceError(404, "JobNotFound", "The specified job does not exist.")
        return job

    def active_jobs_for_pool(self, pool_id: str) -> Iterable[Job]:
        """Active jobs bound to a pool, from an index, so dispatch cost does not grow with old jobs."""
        return self._active_jobs.get(pool_id.lower(), {}).keys()

    def _reindex(self, job: Job) -> None:
        """Keep the active-jobs index in step with a job's state and pool (call after every change)."""
        previous = self._indexed_pool.pop(job, None)
        if previous is not None:
            self._active_jobs[previous].pop(job, None)
        if job.state == JobState.ACTIVE and job.pool_id and self.jobs.get(job.id.lower()) is job:
            key = job.pool_id.lower()
            self._active_jobs.setdefault(key, {})[job] = None
            self._indexed_pool[job] = key

    def add_job(self, spec: dict[str, Any]) -> Job:
        job_id = str(spec["id"])
        existing = self.jobs.get(job_id.lower())
        if existing is not None:
            if existing.state == JobState.DELETING:
                raise ServiceError(409, "JobBeingDeleted", "The specified job has been marked for deletion.")
            raise ServiceError(409, "JobExists", "The specified job already exists.")
        check_active_jobs(self.quota, self.jobs.values())
        now = utc_now()
        job = Job(job_id, spec, self.next_sequence(), now, last_modified=now, state_time=now)
        self.jobs[job_id.lower()] = job
        self._reindex(job)
        log.info("job.created", job_id=job_id, pool_id=job.pool_id)
        self._job_deadlines_changed()
        self.check_job_completion(job)
        self.notify()
        return job

    def require_job_open(self, job: Job) -> None:
        """Reject changes to a job that is not active, with the service's codes."""
        if job.state == JobState.DELETING:
            raise ServiceError(409, "JobBeingDeleted", "The specified job has been marked for deletion.")
        if job.state == JobState.TERMINATING:
            raise ServiceError(409, "JobBeingTerminated", "The specified job is being terminated.")
        if job.state == JobState.COMPLETED:
            raise ServiceError(409, "JobCompleted", "The specified job is already in a completed state.")

    def update_job(self, job: Job, changes: dict[str, Any], replace: bool) -> None:
        self.require_job_open(job)
        # As on the service, a job set to end when its tasks are done cannot be set back to noaction
        # (a PUT that leaves the property out resets it to noaction, so it is refused too).
        default = "noaction" if replace else job.on_all_tasks_complete
        if job.on_all_tasks_complete == "terminatejob" and (
            str(changes.get("onAllTasksComplete", default)).lower() == "noaction"
        ):
            raise invalid_property("onAllTasksComplete", "cannot be changed from terminatejob to noaction")
        if replace:
            # PUT resets every updatable property it does not name; fixed properties stay.
            fixed = {key: value for key, value in job.spec.items() if key not in UPDATABLE_JOB_DEFAULTS}
            job.spec = {**fixed, **UPDATABLE_JOB_DEFAULTS, **changes}
        else:
            job.spec = {**job.spec, **changes}
        job.touch(utc_now())
        self._reindex(job)
        log.info("job.updated", job_id=job.id, properties=sorted(changes))
        self._job_deadlines_changed()
        self.check_job_completion(job)
        self.notify()

    def terminate_job(self, job: Job, reason: str) -> None:
        """Stop the job's running tasks (completed as TaskEnded); active tasks stay active and never run."""
        self.require_job_open(job)
        now = utc_now()
        job.set_state(JobState.TERMINATING, now)
        self._reindex(job)
        for task in [
            task for task in job.tasks_in_order if task.state in (TaskState.RUNNING, TaskState.PREPARING)
        ]:
            self._end_by_user(task)
        job.terminate_reason = reason
        job.end_time = utc_now()
        job.set_state(JobState.COMPLETED, job.end_time)
        log.info("job.terminated", job_id=job.id, terminate_reason=reason)

    def begin_delete_job(self, job: Job) -> None:
        if job.state == JobState.DELETING:
            raise ServiceError(409, "JobBeingDeleted", "The specified job has been marked for deletion.")
        job.set_state(JobState.DELETING, utc_now())
        self._reindex(job)
        # Running tasks are killed; they end like a terminated task until the job disappears.
        for task in [
            task for task in job.tasks_in_order if task.state in (TaskState.RUNNING, TaskState.PREPARING)
        ]:
            self._end_by_user(task)
        log.info("job.deleting", job_id=job.id)

    def forget_job(self, job: Job) -> None:
        if self.jobs.get(job.id.lower()) is job:
            del self.jobs[job.id.lower()]
            self._reindex(job)
            log.info("job.deleted", job_id=job.id, tasks=len(job.tasks))

    def check_job_completion(self, job: Job) -> None:
        """`onAllTasksComplete: terminatejob` ends the job once no task is active or running (even none)."""
        if (
            job.state == JobState.ACTIVE
            and job.on_all_tasks_complete == "terminatejob"
            and job.all_tasks_complete()
        ):
            self.terminate_job(job, "AllTasksComplete")

    # -- tasks --------------------------------------------------------------------------------
    def add_task(self, job: Job, spec: dict[str, Any]) -> Task:
        """Add a validated task; raises ServiceError TaskExists for a duplicate id."""
        task_id = str(spec["id"])
        if task_id.lower() in job.tasks:
            raise ServiceError(409, "TaskExists", "The specified task already exists.")
        constraints = spec.get("constraints") or {}
        job_constraints = job.spec.get("constraints") or {}
        max_retries = constraints.get("maxTaskRetryCount", job_constraints.get("maxTaskRetryCount", 0))
        wall_clock = constraints.get("maxWallClockTime")
        now = utc_now()
        task = Task(
            job_id=job.id,
            id=task_id,
            spec=spec,
            sequence=self.next_sequence(),
            created=now,
            max_task_retry_count=int(max_retries),
            max_wall_clock_s=parse_duration(wall_clock) if wall_clock else float("inf"),
            required_slots=int(spec.get("requiredSlots", 1)),
            last_modified=now,
            state_time=now,
        )
        job.tasks[task_id.lower()] = task
        job.tasks_in_order.append(task)
        adjust_counts(job.counts, task, 1, 1)
        adjust_counts(job.slot_counts, task, task.required_slots, 1)
        job.make_ready(task)
        self.tasks_added += 1
        return task

    def get_task(self, job: Job, task_id: str) -> Task:
        task = job.tasks.get(task_id.lower())
        if task is None:
            raise ServiceError(404, "TaskNotFound", "The specified task does not exist.")
        return task

    def _set_task_state(self, task: Task, state: TaskState, result: TaskResult | None = None) -> None:
        job = self.jobs[task.job_id.lower()]
        adjust_counts(job.counts, task, 1, -1)
        adjust_counts(job.slot_counts, task, task.required_slots, -1)
        now = utc_now()
        previous = task.state
        task.previous_state, task.previous_state_time = task.state, task.state_time
        task.state, task.state_time = state, now
        task.result = result
        task.etag, task.last_modified = new_etag(), now
        adjust_counts(job.counts, task, 1, 1)
        adjust_counts(job.slot_counts, task, task.required_slots, 1)
        if previous != TaskState.RUNNING and state == TaskState.RUNNING:
            self.tasks_running += 1
        elif previous == TaskState.RUNNING and state != TaskState.RUNNING:
            self.tasks_running -= 1
        if state == TaskState.COMPLETED:
            self.tasks_completed += 1
        log.info(
            "task.state_changed",
            job_id=task.job_id,
            task_id=task.id,
            from_state=previous,
            to_state=state,
            node_id=task.node_id,
            exit_code=task.exit_code,
            result=result,
            failure_code=task.failure.code if task.failure else None,
            retry_count=task.retry_count,
            requeue_count=task.requeue_count,
        )

    def assign(self, task: Task, node: Node) -> int:
        """Put an active task on a node (it is `running` from here, including resource downloads)."""
        now = utc_now()
        task.attempt += 1
        task.pool_id, task.node_id = node.pool_id, node.id
        task.start_time, task.end_time = now, None
        task.exit_code, task.failure = None, None
        if task.retry_count > 0:
            task.last_retry_time = now
        node.running_tasks.add(task)
        node.used_slots += task.required_slots
        node.total_tasks_run += 1
        self._set_task_state(task, TaskState.RUNNING)
        self.set_node_state(node, NodeState.RUNNING)
        return task.attempt

    def _release_node(self, task: Task) -> None:
        node = self.find_node(task)
        if node is None or task not in node.running_tasks:
            return
        node.running_tasks.discard(task)
        node.used_slots -= task.required_slots
        if not node.running_tasks and node.state == NodeState.RUNNING:
            self.set_node_state(node, NodeState.IDLE)
        self.notify()

    def find_node(self, task: Task) -> Node | None:
        if task.pool_id is None or task.node_id is None:
            return None
        pool = self.pools.get(task.pool_id.lower())
        return pool.nodes.get(task.node_id) if pool is not None else None

    def is_current(self, task: Task, attempt: int) -> bool:
        """Whether `attempt` is still the task's live attempt (not ended, requeued or deleted since)."""
        job = self.jobs.get(task.job_id.lower())
        return (
            job is not None
            and job.tasks.get(task.id.lower()) is task
            and task.attempt == attempt
            and task.state == TaskState.RUNNING
        )

    def finish_attempt(self, task: Task, attempt: int, outcome: AttemptOutcome) -> None:
        """Apply retry rules to an attempt's outcome: back to active for a retry, else completed."""
        if not self.is_current(task, attempt):
            return
        self.task_stoppers.pop(task, None)
        node = self.find_node(task)
        task.end_time = utc_now()
        task.exit_code = outcome.exit_code
        task.failure = outcome.failure
        self._release_node(task)
        job = self.jobs[task.job_id.lower()]
        if (
            not outcome.succeeded
            and outcome.retryable
            and retries_left(task.retry_count, task.max_task_retry_count)
        ):
            task.retry_count += 1
            self._set_task_state(task, TaskState.ACTIVE)
            job.make_ready(task)
            self.notify()
            return
        if node is not None and outcome.succeeded:
            node.total_tasks_succeeded += 1
        self._set_task_state(
            task, TaskState.COMPLETED, TaskResult.SUCCESS if outcome.succeeded else TaskResult.FAILURE
        )
        if (
            not outcome.succeeded
            and job.state == JobState.ACTIVE
            and job.on_task_failure == "performexitoptionsjobaction"
            and exit_job_action(task.spec, outcome) == "terminate"
        ):
            self.terminate_job(job, "TaskFailed")
        self.check_job_completion(job)

    def requeue(self, task: Task) -> None:
        """Take a running task off its node and make it active again (`requeueCount` + 1)."""
        if task.state not in (TaskState.RUNNING, TaskState.PREPARING):
            return
        stop = self.task_stoppers.pop(task, None)
        if stop is not None:
            stop()
        self._release_node(task)
        task.requeue_count += 1
        task.last_requeue_time = utc_now()
        task.start_time = None
        self._set_task_state(task, TaskState.ACTIVE)
        job = self.jobs[task.job_id.lower()]
        job.make_ready(task)
        self.notify()

    def _end_by_user(self, task: Task, failure: FailureInfo = TASK_ENDED_BY_USER) -> None:
        stop = self.task_stoppers.pop(task, None)
        if stop is not None:
            stop()
        self._release_node(task)
        task.end_time = utc_now()
        task.failure = failure
        self._set_task_state(task, TaskState.COMPLETED, TaskResult.FAILURE)

    def fail_unschedulable(self, task: Task, slots_per_node: int) -> None:
        """Complete a task that needs more slots than any node of its pool has."""
        failure = FailureInfo(
            "usererror",
            "TaskSchedulingConstraintFailed",
            f"The task needs {task.required_slots} slots but the pool's nodes have {slots_per_node}.",
        )
        task.end_time, task.failure = utc_now(), failure
        self._set_task_state(task, TaskState.COMPLETED, TaskResult.FAILURE)
        self.check_job_completion(self.jobs[task.job_id.lower()])

    def delete_task(self, job: Job, task: Task) -> None:
        """Remove a task from its job; a running attempt is killed and its late result ignored."""
        stop = self.task_stoppers.pop(task, None)
        if stop is not None:
            stop()
        self._release_node(task)
        if task.state == TaskState.RUNNING:
            self.tasks_running -= 1
        adjust_counts(job.counts, task, 1, -1)
        adjust_counts(job.slot_counts, task, task.required_slots, -1)
        del job.tasks[task.id.lower()]
        job.tasks_in_order.remove(task)  # the ready queue drops it lazily (next_ready checks identity)
        log.info("task.deleted", job_id=job.id, task_id=task.id, state=task.state)
        self.check_job_completion(job)
        self.notify()

    def terminate_task(self, job: Job, task: Task) -> None:
        if task.state == TaskState.COMPLETED:
            raise ServiceError(409, "TaskCompleted", "The specified task is already completed.")
        self._end_by_user(task)
        self.check_job_completion(job)


def _target_nodes(spec: dict[str, Any]) -> int:
    return int(spec.get("targetDedicatedNodes", 0)) + int(spec.get("targetLowPriorityNodes", 0))
