"""A job's `constraints.maxWallClockTime`, measured from its creation: the job ends when it runs out."""

from __future__ import annotations

from datetime import timedelta

import anyio

from emulator.model import Job, JobState
from emulator.state import Account
from emulator.wire import UNLIMITED_SECONDS, parse_duration, utc_now

# Sequences of the jobs with a watcher, so a PATCH that changes the limit never starts a second one.
_watched: set[int] = set()
# How often a watcher rereads the limit, so a PATCHed maxWallClockTime takes effect.
RECHECK_S = 1.0


def wall_clock_s(job: Job) -> float:
    constraints = job.spec.get("constraints") or {}
    return parse_duration(str(constraints.get("maxWallClockTime") or "P10675199DT2H48M5.4775807S"))


async def enforce_wall_clock(account: Account, job: Job) -> None:
    """Terminate the job (`MaxWallClockTimeExpiry`) once its wall clock runs out, as the service does."""
    if job.sequence in _watched or wall_clock_s(job) == UNLIMITED_SECONDS:
        return
    _watched.add(job.sequence)
    try:
        while account.jobs.get(job.id.lower()) is job and job.state == JobState.ACTIVE:
            limit = wall_clock_s(job)
            if limit == UNLIMITED_SECONDS:
                return
            remaining = (job.created + timedelta(seconds=limit) - utc_now()).total_seconds()
            if remaining <= 0:
                account.terminate_job(job, "MaxWallClockTimeExpiry")
                return
            await anyio.sleep(min(remaining, RECHECK_S))
    finally:
        _watched.discard(job.sequence)
