"""Runs driven in-process here must never block the event loop: many runs share one loop in a daemon."""

from __future__ import annotations

import platform
from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

# The SDKs' user-agent policy asks `platform` once per process, through a subprocess (a blocking
# call, cached once it succeeds). Asked here, before any test's loop runs, so that a test file run
# alone is not failed by that first call (before, only a full run's earlier tests had warmed it).
platform.platform()

# Where topn may block, by file and function: what production runs before the event loop starts.
ALLOWED_TO_BLOCK: list[tuple[str, set[str]]] = [
    ("orchestrator/settings.py", {"load_settings"}),  # the CLI loads settings once, before the loop
    ("orchestrator/inputs.py", {"discover_inputs"}),  # and finds the inputs before it, too
    # The SDK clients read a few platform facts as they are built: once per process, at start.
    ("orchestrator/azure/clients.py", {"open_clients"}),
]


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test in which topn's own code makes a blocking call on the event loop.

    Only calls made from `orchestrator` modules count (the SDKs and the tests' own set-up are not
    ours to judge here).
    """
    with blockbuster_ctx(scanned_modules=["orchestrator"]) as guard:
        for function in guard.functions.values():
            for path, names in ALLOWED_TO_BLOCK:
                function.can_block_in(path, names)
        yield guard
