"""The signal policy, without processes: call the handler, see what was cancelled or ended."""

from __future__ import annotations

import os
import signal

import anyio
import anyio.lowlevel
import pytest

from orchestrator.errors import RunFailedError
from orchestrator.service.signals import SignalPolicy, run_supervised


def test_the_first_signal_cancels_the_work_and_a_second_calls_on_repeat() -> None:
    cancelled: list[str] = []
    repeated: list[signal.Signals] = []
    policy = SignalPolicy(cancel_work=lambda: cancelled.append("work"), on_repeat=repeated.append)
    policy.handle(signal.SIGTERM)
    assert cancelled == ["work"] and repeated == [] and policy.first_signal == signal.SIGTERM
    policy.handle(signal.SIGINT)
    assert cancelled == ["work"]  # not cancelled twice
    assert repeated == [signal.SIGINT] and policy.first_signal == signal.SIGTERM


def test_work_that_finishes_gives_its_result_and_no_signal() -> None:
    async def body() -> int:
        await anyio.lowlevel.checkpoint()
        return 7

    outcome = run_supervised(body, on_repeat=lambda _: None)
    assert (outcome.result, outcome.error, outcome.signalled) == (7, None, None)


def test_a_topn_error_is_handed_back_not_raised() -> None:
    async def body() -> int:
        raise RunFailedError("the pool broke")

    outcome = run_supervised(body, on_repeat=lambda _: None)
    assert outcome.result is None and outcome.signalled is None
    assert isinstance(outcome.error, RunFailedError) and str(outcome.error) == "the pool broke"


def test_a_bug_propagates_as_itself_not_as_an_exception_group() -> None:
    async def body() -> int:
        raise KeyError("bug")

    with pytest.raises(KeyError, match="bug"):
        run_supervised(body, on_repeat=lambda _: None)


def test_sigterm_cancels_the_work_and_its_shielded_clean_up_still_runs() -> None:
    cleaned: list[str] = []

    async def body() -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # to ourselves: the receiver installed by run_supervised
            await anyio.sleep(30)
            return 0
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)
                cleaned.append("clean-up")

    outcome = run_supervised(body, on_repeat=lambda _: None)
    assert outcome.signalled == signal.SIGTERM and outcome.result is None and outcome.error is None
    assert cleaned == ["clean-up"]
