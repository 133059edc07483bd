"""The run's states and the machine that moves between them (DESIGN §3), journalling each move first."""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

import structlog

log = structlog.get_logger()


class RunState(StrEnum):
    """The states a run moves through (names as the journal stores them)."""

    CREATED = "CREATED"
    PREPARING = "PREPARING"
    SUBMITTING = "SUBMITTING"
    RUNNING = "RUNNING"
    COLLECTING = "COLLECTING"
    CLEANING = "CLEANING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


_FORWARD = [RunState.CREATED, RunState.PREPARING, RunState.SUBMITTING, RunState.RUNNING, RunState.COLLECTING]
TERMINAL = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})
ALLOWED: dict[RunState, frozenset[RunState]] = {
    **{
        state: frozenset({_FORWARD[index + 1], RunState.CLEANING})
        for index, state in enumerate(_FORWARD[:-1])
    },
    RunState.COLLECTING: frozenset({RunState.CLEANING}),
    RunState.CLEANING: TERMINAL,
    **{state: frozenset() for state in TERMINAL},
}


class TransitionError(RuntimeError):
    """A transition the state machine does not have (a bug, never a user error)."""


def check_transition(current: RunState, target: RunState) -> None:
    """Raise TransitionError unless `current → target` is an edge of the state machine."""
    if target not in ALLOWED[current]:
        raise TransitionError(f"a run cannot go from {current} to {target}")


class StateRecorder(Protocol):
    """Where transitions are made durable (the journal, or nothing)."""

    async def record_state(self, run_id: str, state: str) -> None: ...


class RunStateMachine:
    """The current state; each move is journalled first, then announced."""

    def __init__(
        self, run_id: str, journal: StateRecorder | None, state: RunState = RunState.CREATED
    ) -> None:
        self.run_id = run_id
        self.state = state  # a resumed run starts where its journal says it stopped
        self._journal = journal

    def reached(self, target: RunState) -> bool:
        """Whether the run is already at or past `target` on the forward path (a resumed run skips those)."""
        order = [*_FORWARD, RunState.CLEANING]
        if self.state in TERMINAL or target not in order:
            return self.state in TERMINAL
        return order.index(self.state) >= order.index(target)

    async def advance(self, target: RunState) -> None:
        """Move to `target` unless a resumed run is already there or past it."""
        if not self.reached(target):
            await self.move(target)

    async def move(self, target: RunState) -> None:
        check_transition(self.state, target)
        if self._journal is not None:
            await self._journal.record_state(self.run_id, target.value)
        log.info("run.state_changed", from_state=self.state.value, to_state=target.value)
        self.state = target
