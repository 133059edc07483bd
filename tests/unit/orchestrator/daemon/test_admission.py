"""Quota backoff and which jobs the janitor deletes (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.azure.states import JobState
from orchestrator.service.admission import JobView, jobs_to_delete, quota_backoff_s

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@given(st.integers(min_value=1, max_value=200), st.floats(min_value=1, max_value=600))
def test_backoff_doubles_from_one_second_and_is_capped(refusals: int, cap: float) -> None:
    wait = quota_backoff_s(refusals, cap)
    assert 0 < wait <= cap
    assert wait == min(cap, 2.0 ** (refusals - 1))
    assert quota_backoff_s(refusals + 1, cap) >= wait


def test_no_refusal_no_wait() -> None:
    assert quota_backoff_s(0, 60) == 0


def job(
    job_id: str,
    state: JobState,
    *,
    pool: str = "p",
    age_s: float = 0,
    ended_s: float | None = None,
    owner: str | None = "me",
) -> JobView:
    return JobView(
        owner=owner,
        job_id=job_id,
        state=state,
        pool_id=pool,
        created_at=NOW - timedelta(seconds=age_s),
        ended_at=None if ended_s is None else NOW - timedelta(seconds=ended_s),
    )


def test_only_the_daemons_pools_topn_jobs_past_their_time_are_deleted() -> None:
    jobs = [
        job("topn-old", JobState.COMPLETED, ended_s=90_000),  # past retention: deleted
        job("topn-fresh", JobState.COMPLETED, ended_s=10),  # kept for its retention
        job("topn-running", JobState.ACTIVE, age_s=99_999),  # ours and active: never
        job("topn-stray", JobState.ACTIVE, age_s=700),  # unknown, past the grace: reconciled
        job("topn-young-stray", JobState.ACTIVE, age_s=5),  # unknown, within the grace: waits
        job("topn-other-topn", JobState.ACTIVE, age_s=99_999, owner="another"),  # another daemon's
        job("topn-a-cli-run", JobState.ACTIVE, age_s=99_999, owner=None),  # a `topn run`'s
        job("topn-elsewhere", JobState.ACTIVE, pool="other", age_s=99_999),  # another pool's
        job("someone-else", JobState.COMPLETED, ended_s=99_999),  # not topn's
        job("topn-going", JobState.DELETING, age_s=99_999),
    ]
    known = {"old", "fresh", "running", "going"}
    expired, unknown = jobs_to_delete(jobs, known, "p", owner="me", now=NOW, retention_s=86_400, grace_s=600)
    assert expired == ["topn-old"]
    assert unknown == ["topn-stray"]
