"""Micro-batching: every file in exactly one place, limits kept, age closes the partial batch."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.service.batching import BatchLimits, Claimed, close_batches, next_close_at

LIMITS = BatchLimits(max_files=3, max_bytes=100, max_wait_s=10.0)


def files(*sizes: int, at: float = 0.0) -> list[Claimed]:
    return [Claimed(f"k{index}", size, at) for index, size in enumerate(sizes)]


def test_count_closes_a_batch_at_max_files() -> None:
    closed, waiting = close_batches(files(1, 1, 1, 1), LIMITS, now=0.0)
    assert [[item.claim_id for item in batch] for batch in closed] == [["k0", "k1", "k2"]]
    assert [item.claim_id for item in waiting] == ["k3"]


def test_bytes_close_a_batch_before_it_overflows() -> None:
    closed, waiting = close_batches(files(60, 30, 20), LIMITS, now=0.0)
    assert [[item.claim_id for item in batch] for batch in closed] == [["k0", "k1"]]
    assert [item.claim_id for item in waiting] == ["k2"]


def test_a_file_larger_than_max_bytes_is_a_batch_of_its_own() -> None:
    closed, waiting = close_batches(files(5, 500, 5), LIMITS, now=0.0)
    assert [[item.claim_id for item in batch] for batch in closed] == [["k0"], ["k1"]]
    assert [item.claim_id for item in waiting] == ["k2"]


def test_age_closes_the_partial_batch_only_after_max_wait() -> None:
    pending = files(1, 1, at=5.0)
    assert close_batches(pending, LIMITS, now=14.9) == ([], pending)
    assert close_batches(pending, LIMITS, now=15.0) == ([pending], [])
    assert next_close_at(pending, LIMITS) == 15.0
    assert next_close_at([], LIMITS) is None


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        BatchLimits(max_files=0, max_bytes=1, max_wait_s=1.0)


claimed_lists = st.lists(
    st.builds(
        Claimed,
        claim_id=st.uuids().map(str),
        size_bytes=st.integers(min_value=0, max_value=300),
        complete_at=st.floats(min_value=0, max_value=100),
    ),
    max_size=40,
)
limit_values = st.builds(
    BatchLimits,
    max_files=st.integers(min_value=1, max_value=10),
    max_bytes=st.integers(min_value=1, max_value=400),
    max_wait_s=st.floats(min_value=0.1, max_value=50),
)


@given(claimed_lists, limit_values, st.floats(min_value=0, max_value=200))
def test_every_file_lands_once_in_order_and_batches_keep_their_limits(
    waiting: list[Claimed], limits: BatchLimits, now: float
) -> None:
    closed, left = close_batches(waiting, limits, now)
    flattened = [item for batch in closed for item in batch] + left
    assert flattened == waiting  # nothing lost, nothing doubled, arrival order kept
    for batch in closed:
        assert batch
        assert len(batch) <= limits.max_files
        assert len(batch) == 1 or sum(item.size_bytes for item in batch) <= limits.max_bytes
    # What still waits could not have closed: not full, and younger than max_wait_s.
    assert len(left) < limits.max_files
    assert sum(item.size_bytes for item in left) < limits.max_bytes or len(left) <= 1
    if left:
        assert now - min(item.complete_at for item in left) < limits.max_wait_s
        close_at = next_close_at(left, limits)
        assert close_at is not None and close_at > now


@given(claimed_lists, limit_values)
def test_everything_closes_once_the_oldest_has_waited(waiting: list[Claimed], limits: BatchLimits) -> None:
    late = max((item.complete_at for item in waiting), default=0.0) + limits.max_wait_s + 1.0
    closed, left = close_batches(waiting, limits, late)
    assert left == []
    assert sum(len(batch) for batch in closed) == len(waiting)
