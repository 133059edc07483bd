"""The job wall clock's rules: when a job's `maxWallClockTime` runs out, and what ending it does."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.jobclock import WALL_CLOCK_EXPIRY, JobWallClock, expired_jobs, job_deadline, next_deadline
from emulator.model import JobState, TaskResult, TaskState
from emulator.state import Account
from emulator.wire import UNLIMITED_DURATION


def account_with_jobs(*wall_clocks: str | None) -> Account:
    account = Account("acct", Path("/nonexistent"))
    for index, wall_clock in enumerate(wall_clocks):
        spec: dict[str, object] = {"id": f"j{index}", "poolInfo": {"poolId": "p"}}
        if wall_clock is not None:
            spec["constraints"] = {"maxWallClockTime": wall_clock}
        account.add_job(spec)
    return account


def test_the_deadline_counts_from_the_jobs_creation_and_follows_the_time_scale() -> None:
    account = account_with_jobs("PT1H", None, UNLIMITED_DURATION, "P10675199D")
    first, no_limit, unlimited, huge = account.jobs.values()
    assert job_deadline(first) == first.created + timedelta(hours=1)
    assert job_deadline(first, time_scale=0.01) == first.created + timedelta(seconds=36)
    assert job_deadline(no_limit) is job_deadline(unlimited) is job_deadline(huge) is None


def test_only_active_jobs_past_their_deadline_expire_and_the_next_deadline_is_the_earliest() -> None:
    account = account_with_jobs("PT10S", "PT20S", "PT5S", None)
    short, longer, ended, _ = account.jobs.values()
    account.terminate_job(ended, "UserTerminate")
    at_15_s = short.created + timedelta(seconds=15)
    assert expired_jobs(account.jobs.values(), at_15_s) == [short]
    assert expired_jobs(account.jobs.values(), short.created + timedelta(seconds=9)) == []
    assert next_deadline(account.jobs.values()) == short.created + timedelta(seconds=10)
    account.terminate_job(short, "UserTerminate")
    assert next_deadline(account.jobs.values()) == longer.created + timedelta(seconds=20)


@settings(max_examples=60, deadline=None)
@given(
    seconds=st.lists(st.one_of(st.none(), st.integers(0, 100)), min_size=1, max_size=8),
    at=st.integers(0, 120),
)
def test_a_job_expires_exactly_when_its_deadline_is_not_after_now(seconds: list[int | None], at: int) -> None:
    account = account_with_jobs(*[None if value is None else f"PT{value}S" for value in seconds])
    jobs = list(account.jobs.values())
    now = min(job.created for job in jobs) + timedelta(seconds=at)
    expected = [
        job
        for job, value in zip(jobs, seconds, strict=True)
        if value is not None and job.created + timedelta(seconds=value) <= now
    ]
    assert expired_jobs(jobs, now) == expected
    upcoming = next_deadline(jobs)
    limited = [
        job.created + timedelta(seconds=value)
        for job, value in zip(jobs, seconds, strict=True)
        if value is not None
    ]
    assert upcoming == (min(limited) if limited else None)


def test_expiry_ends_running_tasks_keeps_active_ones_and_completes_the_job() -> None:
    account = account_with_jobs("PT1S")
    job = next(iter(account.jobs.values()))
    running = account.add_task(job, {"id": "running", "commandLine": "x"})
    waiting = account.add_task(job, {"id": "waiting", "commandLine": "x"})
    running.state = TaskState.RUNNING  # as the scheduler leaves a task it started
    clock = JobWallClock(account)
    assert clock.expire(job.created) == []
    assert clock.expire(job.created + timedelta(seconds=1)) == [job]
    assert job.state == JobState.COMPLETED and job.terminate_reason == WALL_CLOCK_EXPIRY
    assert (running.state, running.result) == (TaskState.COMPLETED, TaskResult.FAILURE)
    assert running.failure is not None and running.failure.code == "TaskEnded"
    assert waiting.state == TaskState.ACTIVE
    assert clock.expire(job.created + timedelta(seconds=2)) == []  # ended once


async def test_the_clock_wakes_for_a_job_added_after_it_started_waiting() -> None:
    account = account_with_jobs()
    async with anyio.create_task_group() as group:
        group.start_soon(JobWallClock(account, time_scale=0.01).run)
        await anyio.sleep(0.05)  # the clock waits with no deadline at all
        job = account.add_job(
            {"id": "late", "poolInfo": {"poolId": "p"}, "constraints": {"maxWallClockTime": "PT20S"}}
        )
        with anyio.fail_after(10):  # 20 s scaled by 0.01: ends after about 0.2 s
            while True:
                if job.state == JobState.COMPLETED:
                    break
                await anyio.sleep(0.02)
        group.cancel_scope.cancel()
    assert job.terminate_reason == WALL_CLOCK_EXPIRY
