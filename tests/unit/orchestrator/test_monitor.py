"""Monitoring: interval arithmetic (property-tested) and the polling loop against a fake job."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from azure.batch.models import (
    BatchJob,
    BatchJobExecutionInfo,
    BatchTask,
    BatchTaskCounts,
    BatchTaskCountsResult,
    BatchTaskExecutionInfo,
    BatchTaskFailureInfo,
    BatchTaskSlotCounts,
)
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from orchestrator.azure import monitor
from orchestrator.azure.monitor import (
    WATERMARK_OVERLAP,
    TaskOutcome,
    completion_filter,
    outcome_of,
    watch_job,
)
from orchestrator.azure.retry import RetryPolicy, next_poll_interval
from orchestrator.errors import RunFailedError

FAST = RetryPolicy(max_attempts=2, base_delay_s=0.0, max_delay_s=0.0, deadline_s=10)
T0 = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)


@given(
    current=st.floats(0.01, 100),
    minimum=st.floats(0.01, 5),
    spread=st.floats(0, 50),
    moved=st.booleans(),
)
def test_interval_stays_in_bounds_snaps_back_and_never_shrinks_while_idle(
    current: float, minimum: float, spread: float, moved: bool
) -> None:
    maximum = minimum + spread
    interval = next_poll_interval(current, moved, minimum, maximum)
    assert minimum <= interval <= maximum
    if moved:
        assert interval == minimum
    elif minimum <= current <= maximum:
        assert interval >= current


def test_idle_polls_back_off_to_the_cap() -> None:
    intervals = [0.5]
    for _ in range(10):
        intervals.append(next_poll_interval(intervals[-1], False, 0.5, 10.0))
    assert intervals[1] == 0.75 and intervals[-1] == 10.0


def test_completion_filter_uses_a_watermark_with_overlap() -> None:
    assert completion_filter(None) == "state eq 'completed'"
    text = completion_filter(T0 + timedelta(seconds=10))
    assert text == "state eq 'completed' and stateTransitionTime ge datetime'2026-11-22T00:00:08.000000Z'"


def task(
    task_id: str, *, exit_code: int | None, result: str, when: datetime, failure: str | None = None
) -> BatchTask:
    return BatchTask(
        id=task_id,
        state="completed",
        state_transition_time=when,
        execution_info=BatchTaskExecutionInfo(
            retry_count=0,
            requeue_count=0,
            exit_code=exit_code,
            result=result,
            start_time=when - timedelta(seconds=2),
            end_time=when,
            failure_info=BatchTaskFailureInfo(category="usererror", code=failure, message="boom")
            if failure
            else None,
        ),
    )


def test_outcome_needs_success_and_exit_code_zero() -> None:
    good = outcome_of(task("a", exit_code=0, result="success", when=T0))
    bad = outcome_of(task("b", exit_code=42, result="failure", when=T0, failure="FailureExitCode"))
    assert good.succeeded and good.duration_s == 2.0
    assert not bad.succeeded and bad.exit_code == 42 and bad.failure_code == "FailureExitCode"


class FakeJob:
    """Tasks complete on a schedule of polls; records every request and filter."""

    def __init__(self, schedule: list[list[BatchTask]], total: int | None = None) -> None:
        self.schedule = schedule
        self.completed: list[BatchTask] = []
        self.polls = 0
        self.filters: list[str] = []
        self.total = total if total is not None else sum(len(step) for step in schedule)
        self.job_state = "active"
        self.terminate_reason: str | None = None
        self.job_checks = 0

    def counts(self) -> BatchTaskCountsResult:
        done = len(self.completed)
        succeeded = sum(1 for t in self.completed if t.execution_info.result == "success")
        counts = BatchTaskCounts(
            active=self.total - done, running=0, completed=done, succeeded=succeeded, failed=done - succeeded
        )
        slots = BatchTaskSlotCounts(active=0, running=0, completed=0, succeeded=0, failed=0)
        return BatchTaskCountsResult(task_counts=counts, task_slot_counts=slots)

    async def get_job_task_counts(self, job_id: str, **kwargs: Any) -> BatchTaskCountsResult:
        if self.polls < len(self.schedule):
            self.completed.extend(self.schedule[self.polls])
        self.polls += 1
        return self.counts()

    async def get_job(self, job_id: str, **kwargs: Any) -> BatchJob:
        self.job_checks += 1
        return BatchJob(
            id=job_id,
            state=self.job_state,
            execution_info=BatchJobExecutionInfo(start_time=T0, termination_reason=self.terminate_reason),
        )

    def list_tasks(self, job_id: str, **kwargs: Any) -> AsyncIterator[BatchTask]:
        self.filters.append(kwargs["filter"])
        assert "executionInfo" in kwargs["select"]
        completed = list(self.completed)

        async def pages() -> AsyncIterator[BatchTask]:
            for item in completed:
                yield item

        return pages()


async def run_watch(job: FakeJob, task_ids: list[str]) -> list[TaskOutcome]:
    send, receive = anyio.create_memory_object_stream[TaskOutcome](100)
    outcomes: list[TaskOutcome] = []
    async with anyio.create_task_group() as group:
        group.start_soon(
            lambda: watch_job(job, "j", task_ids, send, poll_min_s=0.001, poll_max_s=0.004, retry=FAST)
        )
        async with receive:
            async for outcome in receive:
                outcomes.append(outcome)
    return outcomes


async def test_each_completion_is_sent_once_and_listing_happens_only_when_counts_move() -> None:
    schedule = [
        [task("t1", exit_code=0, result="success", when=T0)],
        [],
        [],
        [
            task(
                "t2", exit_code=3, result="failure", when=T0 + timedelta(seconds=5), failure="FailureExitCode"
            )
        ],
        [],
        [task("t3", exit_code=0, result="success", when=T0 + timedelta(seconds=9))],
    ]
    job = FakeJob(schedule)
    outcomes = await run_watch(job, ["t1", "t2", "t3"])
    assert [outcome.task_id for outcome in outcomes] == ["t1", "t2", "t3"]
    assert [outcome.succeeded for outcome in outcomes] == [True, False, True]
    assert job.polls == 6
    assert len(job.filters) == 3  # one listing per poll where the completed count moved
    assert job.filters[0] == "state eq 'completed'"
    assert "stateTransitionTime ge" in job.filters[1]


async def test_a_job_stopped_under_the_run_ends_the_watch_with_the_reason() -> None:
    job = FakeJob([[task("t1", exit_code=0, result="success", when=T0)]], total=2)
    job.job_state = "completed"
    job.terminate_reason = "MaxWallClockTimeExpiry"
    with pytest.raises(RunFailedError, match=r"completed \(MaxWallClockTimeExpiry\) with 1 task"):
        send, _receive = anyio.create_memory_object_stream[TaskOutcome](10)
        await watch_job(job, "j", ["t1", "t2"], send, poll_min_s=0.001, poll_max_s=0.004, retry=FAST)
    assert job.job_checks == 1


async def test_an_active_job_is_checked_only_now_and_then_while_idle() -> None:
    schedule: list[list[BatchTask]] = [[]] * 12 + [[task("t1", exit_code=0, result="success", when=T0)]]
    job = FakeJob(schedule)
    outcomes = await run_watch(job, ["t1"])
    assert [outcome.task_id for outcome in outcomes] == ["t1"]
    assert job.job_checks == 2  # after 5 and 10 idle polls


async def test_a_steady_stream_of_completions_does_not_flood_the_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor, "PROGRESS_EVENT_INTERVAL_S", 3600.0)  # no clock in the assertion
    schedule = [
        [task(f"t{n}", exit_code=0, result="success", when=T0 + timedelta(seconds=n))] for n in range(8)
    ]
    job = FakeJob(schedule)
    with capture_logs() as logs:
        outcomes = await run_watch(job, [f"t{n}" for n in range(8)])
    assert len(outcomes) == 8
    progress = [entry for entry in logs if entry["event"] == "tasks.progress"]
    assert [entry["completed"] for entry in progress] == [
        1,
        8,
    ]  # the first, then the final


class LastTaskEndsTheJob(FakeJob):
    """The last task completes, and the job ends with it, between a counts poll and the job check.

    The counts stay behind ("might not be up to date", Batch docs): only a listing shows the task.
    """

    def __init__(self, first: list[BatchTask], last: BatchTask) -> None:
        super().__init__([first], total=len(first) + 1)
        self.last = last

    async def get_job(self, job_id: str, **kwargs: Any) -> BatchJob:
        self.completed.append(self.last)
        self.job_state, self.terminate_reason = "completed", "AllTasksComplete"
        return await super().get_job(job_id, **kwargs)

    def counts(self) -> BatchTaskCountsResult:
        counted = len(self.completed) - (1 if self.last in self.completed else 0)
        counts = BatchTaskCounts(
            active=self.total - counted, running=0, completed=counted, succeeded=counted, failed=0
        )
        slots = BatchTaskSlotCounts(active=0, running=0, completed=0, succeeded=0, failed=0)
        return BatchTaskCountsResult(task_counts=counts, task_slot_counts=slots)


async def test_counts_that_lag_behind_an_ended_job_never_fail_a_run_whose_tasks_all_completed() -> None:
    done = [task(f"t{n}", exit_code=0, result="success", when=T0 + timedelta(seconds=n)) for n in range(3)]
    job = LastTaskEndsTheJob(done[:2], done[2])
    outcomes = await run_watch(job, ["t0", "t1", "t2"])
    assert sorted(outcome.task_id for outcome in outcomes) == ["t0", "t1", "t2"]
    assert all(outcome.succeeded for outcome in outcomes)
    assert job.job_checks == 1
    assert job.filters[-1] == "state eq 'completed'"  # the confirming listing starts from the beginning


class FilteringJob(FakeJob):
    """A FakeJob whose listing honours the `stateTransitionTime ge` filter, as the service does."""

    def __init__(self, schedule: list[list[BatchTask]]) -> None:
        super().__init__(schedule)
        self.listing_sizes: list[int] = []

    def list_tasks(self, job_id: str, **kwargs: Any) -> AsyncIterator[BatchTask]:
        query = kwargs["filter"]
        self.filters.append(query)
        found = re.search(r"stateTransitionTime ge datetime'([^']+)'", query)
        since = (
            datetime.strptime(found.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) if found else None
        )
        listed = [t for t in self.completed if since is None or t.state_transition_time >= since]
        self.listing_sizes.append(len(listed))

        async def pages() -> AsyncIterator[BatchTask]:
            for item in listed:
                yield item

        return pages()


async def test_the_watermark_moves_forward_with_each_completion_and_listings_stay_small() -> None:
    """Each listing starts just before the newest completion seen: its size follows what changed."""
    spacing = timedelta(seconds=10)  # well beyond the listing's overlap
    schedule = [[task(f"t{n}", exit_code=0, result="success", when=T0 + n * spacing)] for n in range(12)]
    job = FilteringJob(schedule)
    outcomes = await run_watch(job, [f"t{n}" for n in range(12)])
    assert [outcome.task_id for outcome in outcomes] == [f"t{n}" for n in range(12)]
    moments = [
        datetime.strptime(found, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        for query in job.filters[1:]
        for found in re.findall(r"datetime'([^']+)'", query)
    ]
    assert len(moments) == len(job.filters) - 1 == 11
    # Listing n starts one overlap before completion n-1, the newest one seen so far.
    assert moments == [T0 + n * spacing - WATERMARK_OVERLAP for n in range(11)]
    assert max(job.listing_sizes) <= 2  # O(changed): the new completion, plus the one at the watermark
