"""Seeded, deterministic fault decisions (pure): request errors, start-task failures, preemption,
failed allocations.

Every fault is transient by construction: a request that got a fault is answered normally when the
client retries it (azure-core reuses the `client-request-id`), and a task is preempted at most
once. The SDK's `create_tasks` loops forever on a persistent 5xx, so a fault that never cleared
would hang any client.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class FaultSettings:
    """What to inject; all off by default."""

    seed: int = 0
    fraction_503: float = 0.0
    fraction_500: float = 0.0
    fraction_429: float = 0.0
    retry_after_s: float = 1.0
    pool_allocation_delay_s: float = 0.0
    start_task_failures: int = 0
    preempt_fraction: float = 0.0
    task_fail_match: str | None = None
    task_fail_exit_code: int = 42
    allocation_failures: int = 0
    # (operation, seconds): requests of that operation are answered this much later (a slow service)
    slow_operations: tuple[tuple[str, float], ...] = ()

    def problems(self) -> list[str]:
        """Human-readable reasons these settings are unusable (empty when they are fine)."""
        found: list[str] = []
        for flag, value in (
            ("--fault-503", self.fraction_503),
            ("--fault-500", self.fraction_500),
            ("--fault-429", self.fraction_429),
            ("--fault-preempt", self.preempt_fraction),
        ):
            if not 0.0 <= value < 1.0:
                found.append(f"{flag} must be a fraction in [0, 1), got {value}")
        if self.fraction_503 + self.fraction_500 + self.fraction_429 >= 1.0:
            found.append("--fault-503 + --fault-500 + --fault-429 must stay below 1 so requests can succeed")
        if self.retry_after_s < 0 or self.pool_allocation_delay_s < 0:
            found.append("--fault-retry-after-s and --pool-allocation-delay-s must not be negative")
        if self.start_task_failures < 0:
            found.append("--fault-start-task-failures must not be negative")
        if self.allocation_failures < 0:
            found.append("--fault-allocation-failed must not be negative")
        if not 0 <= self.task_fail_exit_code <= 255:
            found.append("--fault-task-fail-exit-code must be an exit status between 0 and 255")
        found.extend(
            f"--fault-slow {operation}={seconds:g}: the delay must be from 0 to 60 seconds"
            for operation, seconds in self.slow_operations
            if not 0 <= seconds <= 60
        )
        return found

    def delay_of(self, operation: str) -> float:
        """How long to hold a request of `operation` before doing it (0: not slowed)."""
        return sum(seconds for name, seconds in self.slow_operations if name == operation)


@dataclass(frozen=True)
class RequestFault:
    """An error answer to send instead of doing the work."""

    status: int
    code: str
    message: str
    retry_after_s: float | None = None


_REMEMBERED_REQUESTS = 100_000


class FaultInjector:
    """Draws faults from one seeded generator, so the same request sequence gets the same faults."""

    def __init__(self, settings: FaultSettings) -> None:
        self.settings = settings
        self._random = random.Random(settings.seed)
        self._preempt_random = random.Random(settings.seed + 1)
        self._faulted_requests: OrderedDict[str, None] = OrderedDict()
        self._preempted_tasks: set[tuple[str, str]] = set()
        self._allocations_left_to_fail = settings.allocation_failures

    @property
    def injects_request_faults(self) -> bool:
        s = self.settings
        return s.fraction_503 + s.fraction_500 + s.fraction_429 > 0

    def request_fault(self, client_request_id: str | None) -> RequestFault | None:
        """The fault for this request, if any; a retry of a faulted request always passes."""
        if not self.injects_request_faults:
            return None
        if client_request_id is not None and client_request_id in self._faulted_requests:
            return None
        draw = self._random.random()
        s = self.settings
        fault: RequestFault | None = None
        if draw < s.fraction_503:
            fault = RequestFault(
                503, "ServerBusy", "The server is currently unable to receive requests. Please retry."
            )
        elif draw < s.fraction_503 + s.fraction_500:
            fault = RequestFault(
                500, "InternalError", "The server encountered an internal error. Please retry."
            )
        elif draw < s.fraction_503 + s.fraction_500 + s.fraction_429:
            fault = RequestFault(
                429,
                "TooManyRequests",
                "The request rate is too high; retry after the given time.",
                s.retry_after_s,
            )
        if fault is not None and client_request_id is not None:
            self._faulted_requests[client_request_id] = None
            if len(self._faulted_requests) > _REMEMBERED_REQUESTS:
                self._faulted_requests.popitem(last=False)
        return fault

    def start_task_fails(self, node_index: int) -> bool:
        """Whether the start task of the pool's `node_index`-th node (from 0) is made to fail."""
        return node_index < self.settings.start_task_failures

    def allocation_fails(self) -> bool:
        """Whether this allocation (a create or resize that adds nodes) fails; the first N do."""
        if self._allocations_left_to_fail <= 0:
            return False
        self._allocations_left_to_fail -= 1
        return True

    def should_preempt(self, job_id: str, task_id: str) -> bool:
        """Whether to preempt this attempt; each task is preempted at most once."""
        if self.settings.preempt_fraction <= 0:
            return False
        key = (job_id, task_id.lower())
        if key in self._preempted_tasks:
            return False
        if self._preempt_random.random() < self.settings.preempt_fraction:
            self._preempted_tasks.add(key)
            return True
        return False

    def task_fails(self, command_line: str) -> bool:
        """Whether every attempt of a task with this command line is made to fail."""
        match = self.settings.task_fail_match
        return bool(match) and match in command_line  # type: ignore[operator]
