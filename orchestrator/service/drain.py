"""The daemon's drain on SIGTERM/SIGINT, as a policy object in arq's three phases.

1. Stop taking work: intake stops, readiness goes false, no queued batch starts.
2. Bounded grace: a batch whose tasks are already in Batch is stopped at once (its tasks run on,
   the next start re-attaches to them); a batch still uploading or submitting gets up to
   `grace_s` to get its tasks in.
3. Cancel whatever is left.

A second signal exits at once (`exit_now`): every journal record is its own committed
transaction, so the journal is intact whenever the process ends. The policy holds no clock and
starts nothing: the daemon calls `on_signal` and `step` (tests call them directly).
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


class Phase(enum.Enum):
    SERVING = "serving"
    DRAINING = "draining"  # phases 1 and 2
    CANCELLING = "cancelling"  # phase 3: the grace is over


@dataclass
class DrainPolicy:
    grace_s: float
    stop_intake: Callable[[], None]
    cancel_batch: Callable[[str], None]
    exit_now: Callable[[signal.Signals], None]
    phase: Phase = Phase.SERVING
    started_at: float | None = None
    signals: list[signal.Signals] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)

    @property
    def taking_work(self) -> bool:
        return self.phase is Phase.SERVING

    def on_signal(self, received: signal.Signals, now: float) -> None:
        """The first signal starts the drain; a second one exits at once."""
        self.signals.append(received)
        if len(self.signals) > 1:
            self.exit_now(received)
            return
        self.phase = Phase.DRAINING
        self.started_at = now
        self.stop_intake()

    def step(self, in_flight: Mapping[str, bool], now: float) -> None:
        """Cancel what the phase says: `in_flight` maps each batch to whether its tasks are in Batch."""
        if self.phase is Phase.SERVING or self.started_at is None:
            return
        if now - self.started_at >= self.grace_s:
            self.phase = Phase.CANCELLING
        for batch_id, past_submission in in_flight.items():
            if batch_id in self.cancelled:
                continue
            if past_submission or self.phase is Phase.CANCELLING:
                self.cancelled.add(batch_id)
                self.cancel_batch(batch_id)
