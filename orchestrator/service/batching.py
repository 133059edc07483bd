"""Micro-batching as plain functions: claimed files in arrival order → batches closed by count, bytes or age.

A batch closes at `max_files`, at `max_bytes` (a file that alone is larger than `max_bytes` makes a
batch of its own rather than waiting forever), or `max_wait_s` after its first file was complete,
whichever comes first. Nothing here reads a clock or a disk: the daemon passes `now`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Claimed:
    """A claimed file waiting for a batch: its key, its size and when it was found complete."""

    claim_id: str
    size_bytes: int
    complete_at: float  # the daemon's monotonic clock


@dataclass(frozen=True)
class BatchLimits:
    max_files: int
    max_bytes: int
    max_wait_s: float

    def __post_init__(self) -> None:
        if self.max_files < 1 or self.max_bytes < 1 or self.max_wait_s <= 0:
            raise ValueError(f"batch limits must be positive: {self}")


def _fits(batch_files: int, batch_bytes: int, item: Claimed, limits: BatchLimits) -> bool:
    if batch_files == 0:
        return True  # a batch always takes its first file, however large
    return batch_files + 1 <= limits.max_files and batch_bytes + item.size_bytes <= limits.max_bytes


def close_batches(
    waiting: Sequence[Claimed], limits: BatchLimits, now: float
) -> tuple[list[list[Claimed]], list[Claimed]]:
    """Split `waiting` (arrival order) into the batches that close now and the files still waiting.

    Full batches close at once; the last, partial one closes when its oldest file has waited
    `max_wait_s`. Order is kept, and every file is in exactly one of the two results.
    """
    batches: list[list[Claimed]] = []
    current: list[Claimed] = []
    current_bytes = 0
    for item in waiting:  # one pass: each file joins the open batch or starts the next
        if not _fits(len(current), current_bytes, item, limits):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += item.size_bytes
        if len(current) >= limits.max_files or current_bytes >= limits.max_bytes:
            batches.append(current)
            current, current_bytes = [], 0
    if current and now - min(item.complete_at for item in current) >= limits.max_wait_s:
        batches.append(current)
        current = []
    return batches, current


def next_close_at(waiting: Sequence[Claimed], limits: BatchLimits) -> float | None:
    """When the oldest waiting file's batch closes by age (None when nothing waits)."""
    if not waiting:
        return None
    return min(item.complete_at for item in waiting) + limits.max_wait_s
