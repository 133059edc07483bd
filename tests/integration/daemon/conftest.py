"""Daemon tests run in-process must never block the event loop: every batch of a daemon shares one loop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster

from tests.event_loop_guard import event_loop_guard


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test in which topn's own code blocks the event loop (tests/event_loop_guard.py)."""
    with event_loop_guard() as guard:
        yield guard
