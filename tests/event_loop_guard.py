"""blockbuster for the tests that drive runs and the daemon in-process: topn's code must never block
the event loop (a daemon runs many batches on one loop). Only calls made from `orchestrator` modules
count; the SDKs and the tests' own set-up are not ours to judge here."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

# Where topn may block, by file and function: what production runs before the event loop starts.
ALLOWED_TO_BLOCK: list[tuple[str, set[str]]] = [
    ("orchestrator/settings/loading.py", {"load_settings"}),  # the CLI loads settings once, before the loop
    ("orchestrator/inputs.py", {"discover_inputs"}),  # and finds the inputs before it, too
    # The SDK clients read a few platform facts as they are built: once per process, at start.
    ("orchestrator/azure/clients.py", {"open_clients"}),
]

# The SDKs' user-agent policy asks `platform` once per process, through a subprocess (a blocking
# call, cached once it succeeds); a process does that before its loop, so it is done here at import.
platform.platform()
platform.uname().processor  # noqa: B018


@contextmanager
def event_loop_guard() -> Iterator[BlockBuster]:
    """Fail the block if topn's own code makes a blocking call on the event loop."""
    with blockbuster_ctx(scanned_modules=["orchestrator"]) as guard:
        for function in guard.functions.values():
            for path, names in ALLOWED_TO_BLOCK:
                function.can_block_in(path, names)
        yield guard


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test in which topn's own code blocks the event loop.

    A conftest turns it on for its folder: `from tests.event_loop_guard import blockbuster as blockbuster`.
    """
    with event_loop_guard() as guard:
        yield guard
