"""A big input's upload gets a deadline that grows with its size; small ones keep the policy's."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.azure.retry import RetryPolicy
from orchestrator.azure.staging import MIN_UPLOAD_BYTES_PER_S, retry_for_upload

MIB = 1024 * 1024


def test_a_2_gb_upload_outlasts_a_60_s_deadline_and_a_small_one_keeps_it() -> None:
    policy = RetryPolicy(deadline_s=60.0)
    assert retry_for_upload(policy, 64 * 1024) is policy
    big = retry_for_upload(policy, 2048 * MIB)
    # 2 GiB at 4 MiB/s is 512 s, on top of the 60 s the policy gives any request.
    assert big.deadline_s == 60.0 + 512.0
    assert (big.max_attempts, big.base_delay_s, big.max_delay_s) == (
        policy.max_attempts,
        policy.base_delay_s,
        policy.max_delay_s,
    )


@given(st.integers(0, 1 << 40), st.floats(1.0, 3600.0))
def test_the_deadline_never_shrinks_and_covers_the_slowest_rate(size_bytes: int, deadline_s: float) -> None:
    policy = RetryPolicy(deadline_s=deadline_s)
    widened = retry_for_upload(policy, size_bytes)
    assert widened.deadline_s >= deadline_s
    assert widened.deadline_s >= size_bytes / MIN_UPLOAD_BYTES_PER_S
