"""Stale task counts on purpose (`--task-counts-lag-s`): the service documents that a job's task counts
"might not be up to date", and a client must not fail a good run on them.

Each `taskcounts` answer is recorded; with a lag, a request is served the newest answer recorded at
least that long ago (before there is one, the first answer recorded), so counts trail the tasks' real
states by at least the lag once a client polls.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CountHistory:
    """Per job: the counts served so far, oldest first, with when they were true."""

    lag_s: float = 0.0
    clock: Callable[[], float] = time.monotonic
    _by_job: dict[str, deque[tuple[float, dict[str, Any]]]] = field(default_factory=dict)

    def serve(self, job_id: str, current: dict[str, Any]) -> dict[str, Any]:
        """The counts to answer with: `current` without a lag, else what was current `lag_s` ago."""
        if self.lag_s <= 0:
            return current
        now = self.clock()
        history = self._by_job.setdefault(job_id.lower(), deque())
        history.append((now, current))
        # Keep the newest entry old enough and what came after it: once an entry is at least the
        # lag old, every older one is useless. Before any is, the first answer stands.
        while len(history) > 1 and history[1][0] <= now - self.lag_s:
            history.popleft()
        return history[0][1]

    def forget(self, job_id: str) -> None:
        """A deleted job's history (a new job may take its id)."""
        self._by_job.pop(job_id.lower(), None)
