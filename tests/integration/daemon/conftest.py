"""Daemon tests run in-process must never block the event loop: every batch of a daemon shares one loop."""

from tests.event_loop_guard import blockbuster as blockbuster  # autouse: every test here is guarded
