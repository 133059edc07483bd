"""The emulator's stale task counts: what a request is served with a lag."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from emulator.countlag import CountHistory


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def counts(completed: int) -> dict[str, object]:
    return {"taskCounts": {"completed": completed}}


def test_without_a_lag_the_counts_are_current() -> None:
    history = CountHistory()
    assert history.serve("j", counts(3)) == counts(3)


def test_with_a_lag_a_poll_sees_the_counts_of_lag_seconds_ago() -> None:
    clock = Clock()
    history = CountHistory(lag_s=2.0, clock=clock)
    assert history.serve("j", counts(0)) == counts(0)
    clock.now = 1.0
    assert history.serve("j", counts(5)) == counts(0)  # nothing is 2 s old yet: the first answer
    clock.now = 2.5
    assert history.serve("j", counts(9)) == counts(0)  # the answer at 0 s is the newest old enough
    clock.now = 3.5
    assert history.serve("J", counts(9)) == counts(5)  # job ids are case-insensitive
    clock.now = 10.0
    assert history.serve("j", counts(9)) == counts(9)
    history.forget("j")
    assert history.serve("j", counts(1)) == counts(1)


@given(times=st.lists(st.floats(0, 100), min_size=1, max_size=30), lag=st.floats(0.1, 10))
def test_served_counts_are_never_newer_than_the_lag_allows(times: list[float], lag: float) -> None:
    clock = Clock()
    history = CountHistory(lag_s=lag, clock=clock)
    seen: list[float] = []
    for moment in sorted(times):
        clock.now = moment
        seen.append(moment)
        served = history.serve("j", {"at": moment})
        at = served["at"]
        assert isinstance(at, float)
        # The newest answer at least `lag` old, or the first one while none is.
        old_enough = [value for value in seen if value <= moment - lag]
        assert at == (old_enough[-1] if old_enough else seen[0])
