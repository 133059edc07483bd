"""One daemon per state folder and per inbox: an advisory lock file in each, holding the owner's pid.

`flock` locks die with their process (even on SIGKILL), so a crashed daemon never leaves a stale
lock behind; the pid written inside is only there to name the holder in the refusal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from orchestrator.errors import UsageError
from orchestrator.files import LockHeldError, release_pid_lock, take_pid_lock

LOCK_FILENAME = ".topn-daemon.lock"


class DaemonAlreadyRunningError(UsageError):
    """Another daemon holds the state folder or the inbox (exit 2)."""


def _acquire(folder: Path, what: str) -> int:
    try:
        return take_pid_lock(folder / LOCK_FILENAME)
    except LockHeldError as held:
        raise DaemonAlreadyRunningError(
            f"another topn daemon (pid {held.holder}) is running on the {what} {folder}; "
            "stop it first, or give this one another state folder and inbox"
        ) from None


@contextlib.contextmanager
def single_instance(state_dir: Path, inbox: Path) -> Iterator[Sequence[Path]]:
    """Hold both locks for the block (called before the event loop starts; it blocks on nothing)."""
    held: list[int] = []
    try:
        held.append(_acquire(state_dir, "state folder"))
        held.append(_acquire(inbox, "inbox"))
        yield [state_dir / LOCK_FILENAME, inbox / LOCK_FILENAME]
    finally:
        for descriptor in held:
            release_pid_lock(descriptor)
