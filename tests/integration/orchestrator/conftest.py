"""Runs driven in-process here must never block the event loop: many runs share one loop in a daemon."""

from tests.event_loop_guard import blockbuster as blockbuster  # autouse: every test here is guarded
