"""Caches under .topn/ that several pytest-xdist workers fill at once: one fills, the others wait."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(cache: Path) -> Iterator[None]:
    """Hold `<cache>.lock` (next to the cache, not in it) for the block; released on errors too."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.with_name(cache.name + ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks until the worker filling the cache is done
        yield
