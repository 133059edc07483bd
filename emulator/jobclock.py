"""A job's `constraints.maxWallClockTime`, enforced as the service does.

The wall clock counts from the job's creation. When it runs out, the service terminates the job:
running tasks end (`TaskEnded`), active ones stay active and never run, the job completes with
`executionInfo.terminateReason = MaxWallClockTimeExpiry`, and adding tasks then gets 409
`JobCompleted`. `--time-scale F` runs the clock F times as fast, as it does the autoscale periods;
the wire value (`PT1H`) stays the service's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timedelta

import anyio

from emulator.model import Job, JobState
from emulator.state import Account
from emulator.wire import parse_duration, utc_now

WALL_CLOCK_EXPIRY = "MaxWallClockTimeExpiry"
# Beyond this a wall clock never ends in practice (the service's "unlimited" is ~29,000 years,
# past what a datetime can hold); such jobs are not watched.
_NEVER_S = 100 * 365 * 24 * 3600.0


def job_deadline(job: Job, time_scale: float = 1.0) -> datetime | None:
    """When the job's wall clock runs out on the emulator's clock, or None if it never does."""
    text = (job.spec.get("constraints") or {}).get("maxWallClockTime")
    if not text:
        return None
    seconds = parse_duration(str(text)) * time_scale
    if not math.isfinite(seconds) or seconds > _NEVER_S:
        return None
    return job.created + timedelta(seconds=seconds)


def expired_jobs(jobs: Iterable[Job], now: datetime, time_scale: float = 1.0) -> list[Job]:
    """The active jobs whose wall clock has run out at `now`, oldest first."""
    expired = []
    for job in jobs:
        deadline = job_deadline(job, time_scale)
        if job.state == JobState.ACTIVE and deadline is not None and deadline <= now:
            expired.append(job)
    return sorted(expired, key=lambda job: job.sequence)


def next_deadline(jobs: Iterable[Job], time_scale: float = 1.0) -> datetime | None:
    """The earliest wall-clock end among the active jobs, or None when none has one."""
    deadlines = [
        deadline
        for job in jobs
        if job.state == JobState.ACTIVE and (deadline := job_deadline(job, time_scale)) is not None
    ]
    return min(deadlines, default=None)


class JobWallClock:
    """Ends jobs whose wall clock ran out; wakes at the next deadline or when a job's changes."""

    def __init__(self, account: Account, time_scale: float = 1.0) -> None:
        self.account = account
        self.time_scale = time_scale

    def expire(self, now: datetime) -> list[Job]:
        """Terminate every active job whose wall clock has run out at `now` (what `run` does each wake)."""
        ended = expired_jobs(self.account.jobs.values(), now, self.time_scale)
        for job in ended:  # `job.terminated` (state.py) names the reason
            self.account.terminate_job(job, WALL_CLOCK_EXPIRY)
        if ended:
            self.account.notify()
        return ended

    async def run(self) -> None:
        while True:
            # Taken before the scan: a job added or changed during it wakes the next wait at once.
            changed = self.account.job_deadlines_event()
            now = utc_now()
            self.expire(now)
            upcoming = next_deadline(self.account.jobs.values(), self.time_scale)
            wait_s = math.inf if upcoming is None else max((upcoming - now).total_seconds(), 0.0)
            with anyio.move_on_after(wait_s):
                await changed.wait()
