"""One daemon per state folder and per inbox: an advisory lock file in each, holding the owner's pid.

`flock` locks die with their process (even on SIGKILL), so a crashed daemon never leaves a stale
lock behind; the pid written inside is only there to name the holder in the refusal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from orchestrator.errors import UsageError

LOCK_FILENAME = ".topn-daemon.lock"


class DaemonAlreadyRunningError(UsageError):
    """Another daemon holds the state folder or the inbox (exit 2)."""


def _acquire(folder: Path, what: str) -> TextIO:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILENAME
    handle = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise DaemonAlreadyRunningError(
            f"another topn daemon (pid {holder}) is running on the {what} {folder}; "
            "stop it first, or give this one another state folder and inbox"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


@contextlib.contextmanager
def single_instance(state_dir: Path, inbox: Path) -> Iterator[Sequence[Path]]:
    """Hold both locks for the block (called before the event loop starts; it blocks on nothing)."""
    handles: list[TextIO] = []
    try:
        handles.append(_acquire(state_dir, "state folder"))
        handles.append(_acquire(inbox, "inbox"))
        yield [state_dir / LOCK_FILENAME, inbox / LOCK_FILENAME]
    finally:
        for handle in handles:
            handle.close()
