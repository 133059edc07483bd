"""The run state machine: its edges, and that each move is journalled before it is announced."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from orchestrator.run.pipeline import (
    ALLOWED,
    TERMINAL,
    RunState,
    RunStateMachine,
    TransitionError,
    check_transition,
    summary_exit_status,
)

HAPPY_PATH = [
    RunState.PREPARING,
    RunState.SUBMITTING,
    RunState.RUNNING,
    RunState.COLLECTING,
    RunState.CLEANING,
    RunState.SUCCEEDED,
]


def test_the_happy_path_is_a_chain_of_allowed_edges() -> None:
    state = RunState.CREATED
    for target in HAPPY_PATH:
        check_transition(state, target)
        state = target


@given(st.sampled_from(list(RunState)), st.sampled_from(list(RunState)))
def test_every_edge_is_forward_or_into_clean_up(current: RunState, target: RunState) -> None:
    order = list(RunState)
    if target in ALLOWED[current]:
        assert order.index(target) > order.index(current)
        assert current not in TERMINAL
    else:
        with pytest.raises(TransitionError):
            check_transition(current, target)


@pytest.mark.parametrize("state", [s for s in RunState if s not in TERMINAL and s != RunState.CLEANING])
def test_any_working_state_can_stop_and_clean_up(state: RunState) -> None:
    check_transition(state, RunState.CLEANING)
    for ending in TERMINAL:
        check_transition(RunState.CLEANING, ending)


def test_states_cannot_be_skipped() -> None:
    with pytest.raises(TransitionError):
        check_transition(RunState.PREPARING, RunState.RUNNING)
    with pytest.raises(TransitionError):
        check_transition(RunState.RUNNING, RunState.SUCCEEDED)  # never without clean-up


class RecordingJournal:
    def __init__(self, logs: list[dict[str, object]]) -> None:
        self.logs = logs
        self.states: list[str] = []
        self.announced_before_recorded: list[str] = []

    async def record_state(self, run_id: str, state: str) -> None:
        if any(entry.get("to_state") == state for entry in self.logs):
            self.announced_before_recorded.append(state)
        self.states.append(state)


async def test_each_move_is_written_to_the_journal_before_it_is_announced() -> None:
    with capture_logs() as logs:
        journal = RecordingJournal(logs)
        machine = RunStateMachine("run-1", journal)
        for target in HAPPY_PATH:
            await machine.move(target)
    assert journal.states == [state.value for state in HAPPY_PATH]
    assert journal.announced_before_recorded == []
    changes = [
        (entry["from_state"], entry["to_state"]) for entry in logs if entry["event"] == "run.state_changed"
    ]
    assert changes == list(
        zip(["CREATED", *[s.value for s in HAPPY_PATH[:-1]]], [s.value for s in HAPPY_PATH], strict=True)
    )


async def test_a_refused_move_changes_nothing() -> None:
    with capture_logs() as logs:
        journal = RecordingJournal(logs)
        machine = RunStateMachine("run-1", journal)
        with pytest.raises(TransitionError):
            await machine.move(RunState.RUNNING)
    assert machine.state == RunState.CREATED and journal.states == [] and logs == []


def test_exit_status_follows_the_summary_state() -> None:
    assert summary_exit_status({"state": "SUCCEEDED"}) == 0
    assert summary_exit_status({"state": "FAILED"}) == 1
