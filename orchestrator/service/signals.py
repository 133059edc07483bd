"""Signals as a policy: the first SIGINT/SIGTERM cancels the work (its shielded clean-up runs), a
second one calls `on_repeat` (the CLI ends the process there). No printing, no exit codes: the
caller decides what a signal means to its user.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

from orchestrator.errors import TopnError, first_leaf

T = TypeVar("T")

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class SignalPolicy:
    """What each received signal does; `handle` is called once per signal (and by tests directly)."""

    cancel_work: Callable[[], None]
    on_repeat: Callable[[signal.Signals], None]
    received: list[signal.Signals] = field(default_factory=list)

    def handle(self, received: signal.Signals) -> None:
        self.received.append(received)
        if len(self.received) > 1:
            self.on_repeat(received)
        else:
            self.cancel_work()

    @property
    def first_signal(self) -> signal.Signals | None:
        return self.received[0] if self.received else None


@dataclass(frozen=True)
class Supervised(Generic[T]):
    """How supervised work ended: its result or the error it reported, and the first signal received."""

    result: T | None
    error: TopnError | None
    signalled: signal.Signals | None


def run_supervised(
    body: Callable[[], Awaitable[T]], on_repeat: Callable[[signal.Signals], None]
) -> Supervised[T]:
    """Run `body` on a fresh event loop under a SignalPolicy.

    A TopnError ends up in `Supervised.error`; anything else (a bug) propagates, as its first leaf.
    """
    outcome: list[T] = []
    errors: list[TopnError] = []
    policy_holder: list[SignalPolicy] = []

    async def supervise() -> None:
        work_scope = anyio.CancelScope()
        policy = SignalPolicy(cancel_work=work_scope.cancel, on_repeat=on_repeat)
        policy_holder.append(policy)
        async with anyio.create_task_group() as group:

            async def watch_signals() -> None:
                with anyio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
                    async for received in signals:
                        policy.handle(signal.Signals(received))

            async def work() -> None:
                try:
                    with work_scope:
                        outcome.append(await body())
                except TopnError as error:
                    errors.append(error)
                finally:
                    group.cancel_scope.cancel()

            group.start_soon(watch_signals)
            group.start_soon(work)

    try:
        anyio.run(supervise)
    except BaseExceptionGroup as group_error:
        raise first_leaf(group_error) from None
    signalled = policy_holder[0].first_signal if policy_holder else None
    return Supervised(
        result=outcome[0] if outcome else None, error=errors[0] if errors else None, signalled=signalled
    )
