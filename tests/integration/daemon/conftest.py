"""Daemon tests run in-process must never block the event loop: every batch of a daemon shares one loop."""

from __future__ import annotations

import platform
from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

# Where topn may block, by file and function: what production runs before the event loop starts.
ALLOWED_TO_BLOCK: list[tuple[str, set[str]]] = [
    ("orchestrator/settings.py", {"load_settings"}),  # the CLI loads settings once, before the loop
    ("orchestrator/inputs.py", {"discover_inputs"}),  # and finds the inputs before it, too
]


# azure-core's user agent asks `platform` for the processor once per process, which runs `uname -p`;
# a daemon does that before its loop (the CLI's settings load), so it is done here at import too.
platform.uname().processor  # noqa: B018


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
