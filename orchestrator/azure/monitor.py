"""Watch a job until all its tasks are complete, yielding each completion as soon as it is seen.

Cost per poll is O(1) plus O(tasks that changed): job task counts first, and a filtered,
`$select`-trimmed task listing only when the completed count moved, from a time watermark on. The
interval backs off while nothing changes and snaps back to the minimum on progress.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import anyio
import structlog
from anyio.streams.memory import MemoryObjectSendStream
from azure.batch.models import BatchJob, BatchTask, BatchTaskCountsResult
from azure.core.exceptions import ResourceNotFoundError

from orchestrator.azure.retry import RetryPolicy, next_poll_interval, retry_call
from orchestrator.azure.states import job_state, task_succeeded
from orchestrator.errors import JobEndedError

log = structlog.get_logger()

JOB_DELETED = "deleted"  # how a job that is gone ended, for the run's error

# Fields a completion needs; everything else (command line, environment, resource files) stays home.
TASK_SELECT = ["id", "state", "stateTransitionTime", "executionInfo", "nodeInfo"]
# Listings overlap the previous watermark by this much, in case the service's clock steps backwards.
WATERMARK_OVERLAP = timedelta(seconds=2)
# tasks.progress at most this often while counts keep moving (a steady stream would flood the log).
PROGRESS_EVENT_INTERVAL_S = 1.0
# After this many polls without progress, check that the job itself is still active.
IDLE_POLLS_BEFORE_JOB_CHECK = 5


class MonitorClient(Protocol):
    """The Batch operations monitoring needs (azure.batch.aio.BatchClient has them)."""

    def get_job_task_counts(self, job_id: str, **kwargs: Any) -> Awaitable[BatchTaskCountsResult]: ...

    def list_tasks(self, job_id: str, **kwargs: Any) -> AsyncIterator[BatchTask]: ...

    def get_job(self, job_id: str, **kwargs: Any) -> Awaitable[BatchJob]: ...


@dataclass(frozen=True)
class TaskOutcome:
    """How one task ended."""

    task_id: str
    succeeded: bool
    exit_code: int | None
    failure_code: str | None
    failure_message: str | None
    node_id: str | None
    duration_s: float | None


@dataclass(frozen=True)
class Counts:
    """A snapshot of the job's task counts."""

    active: int
    running: int
    completed: int
    succeeded: int
    failed: int


def completion_filter(watermark: datetime | None) -> str:
    """`$filter` for completed tasks, from a stateTransitionTime watermark on when we have one."""
    if watermark is None:
        return "state eq 'completed'"
    moment = (watermark - WATERMARK_OVERLAP).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"state eq 'completed' and stateTransitionTime ge datetime'{moment}'"


def outcome_of(task: BatchTask) -> TaskOutcome:
    """Success means result `success` and exit code 0; a node that never ran the task is a failure too."""
    info = task.execution_info
    exit_code = info.exit_code if info is not None else None
    failure = info.failure_info if info is not None else None
    duration = None
    if info is not None and info.start_time is not None and info.end_time is not None:
        duration = max(0.0, (info.end_time - info.start_time).total_seconds())
    succeeded = task_succeeded(info) and exit_code == 0 and failure is None
    return TaskOutcome(
        task_id=str(task.id),
        succeeded=succeeded,
        exit_code=exit_code,
        failure_code=failure.code if failure is not None else None,
        failure_message=failure.message if failure is not None else None,
        node_id=task.node_info.node_id if task.node_info is not None else None,
        duration_s=duration,
    )


def counts_of(result: BatchTaskCountsResult) -> Counts:
    """Our snapshot of the SDK's task counts."""
    counts = result.task_counts
    return Counts(counts.active, counts.running, counts.completed, counts.succeeded, counts.failed)


async def watch_job(
    batch: MonitorClient,
    job_id: str,
    task_ids: Sequence[str],
    completions: MemoryObjectSendStream[TaskOutcome],
    *,
    poll_min_s: float,
    poll_max_s: float,
    retry: RetryPolicy,
    on_counts: Callable[[Counts], None] | None = None,
    already_completed: int = 0,
) -> None:
    """Poll until every task in `task_ids` has completed; send each outcome once; close the stream.

    `already_completed` counts the job's other tasks known to be complete (a resumed run's recorded
    completions), so they do not look like news on every poll.
    """
    expected = set(task_ids)
    seen: set[str] = set()
    watermark: datetime | None = None
    interval = poll_min_s
    last: Counts | None = None
    idle_polls = 0
    reported: Counts | None = None
    reported_at = -PROGRESS_EVENT_INTERVAL_S
    async with completions:
        while len(seen) < len(expected):
            counts = counts_of(
                await retry_call(retry, "get_job_task_counts", lambda: batch.get_job_task_counts(job_id))
            )
            moved = counts != last
            if moved:
                now = anyio.current_time()
                finished = counts.completed >= len(expected)
                if counts != reported and (finished or now - reported_at >= PROGRESS_EVENT_INTERVAL_S):
                    log.info(
                        "tasks.progress",
                        active=counts.active,
                        running=counts.running,
                        completed=counts.completed,
                        succeeded=counts.succeeded,
                        failed=counts.failed,
                        total=len(expected),
                    )
                    reported, reported_at = counts, now
                if on_counts is not None:
                    on_counts(counts)
            last = counts
            if counts.completed > len(seen) + already_completed:
                watermark = await _collect_completed(
                    batch, job_id, expected, seen, watermark, completions, retry
                )
            if len(seen) < len(expected):
                idle_polls = 0 if moved else idle_polls + 1
                if idle_polls and idle_polls % IDLE_POLLS_BEFORE_JOB_CHECK == 0:
                    ended = await _job_end(batch, job_id, retry)
                    if ended is not None:
                        # Task counts can lag behind the job's state (a job ends when its last task
                        # does): list every completed task before calling any of them unfinished.
                        # A deleted job has none to list.
                        if ended != JOB_DELETED:
                            watermark = await _collect_completed(
                                batch, job_id, expected, seen, None, completions, retry
                            )
                        if len(seen) < len(expected):
                            raise JobEndedError(
                                f"job {job_id} ended under the run: it is {ended} with "
                                f"{len(expected) - len(seen)} task(s) not finished, which will never run in "
                                "it (a resume goes on in a new job). Check who or what ended it (its wall "
                                "clock is [run] run_timeout_s)"
                            )
                        break
                interval = next_poll_interval(interval, moved, poll_min_s, poll_max_s)
                await anyio.sleep(interval)


async def _job_end(batch: MonitorClient, job_id: str, retry: RetryPolicy) -> str | None:
    """How the job ended ("completed (AllTasksComplete)"), or None while it can still run tasks."""
    try:
        job = await retry_call(
            retry, "get_job", lambda: batch.get_job(job_id, select=["id", "state", "executionInfo"])
        )
    except ResourceNotFoundError:
        return JOB_DELETED
    state = job_state(job)
    if state.runs_tasks:
        return None
    reason = job.execution_info.termination_reason if job.execution_info is not None else None
    return f"{state.value}{f' ({reason})' if reason else ''}"


async def _collect_completed(
    batch: MonitorClient,
    job_id: str,
    expected: set[str],
    seen: set[str],
    watermark: datetime | None,
    completions: MemoryObjectSendStream[TaskOutcome],
    retry: RetryPolicy,
) -> datetime | None:
    """List completed tasks from the watermark on; send the new ones; return the new watermark."""
    query = completion_filter(watermark)

    async def listing() -> list[BatchTask]:
        return [task async for task in batch.list_tasks(job_id, filter=query, select=TASK_SELECT)]

    newest = watermark
    found_new = False
    for task in await retry_call(retry, "list_tasks", listing):
        if task.state_transition_time is not None and (newest is None or task.state_transition_time > newest):
            newest = task.state_transition_time
        if task.id in seen or task.id not in expected:
            continue
        seen.add(str(task.id))
        found_new = True
        await completions.send(outcome_of(task))
    # Counts said something completed but the watermark hid it: list everything next time.
    return newest if found_new else None
