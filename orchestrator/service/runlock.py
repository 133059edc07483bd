"""One driver per run: a per-run lock file that the operating system releases when its holder dies.

`fcntl.flock` locks belong to the open file description, so a process killed with SIGKILL (or a
machine that rebooted) holds nothing: the next `topn resume` takes the lock at once. The holder's
pid is written into the file only to name it in the refusal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from orchestrator.errors import UsageError
from orchestrator.files import LockHeldError, release_pid_lock, take_pid_lock


class RunLockedError(UsageError):
    """Another live process drives this run (exit 2 at once, naming its pid)."""


def lock_path(state_dir: Path, run_id: str) -> Path:
    """Where the lock of `run_id` lives: `<state_dir>/locks/<run_id>.lock`."""
    return state_dir / "locks" / f"{run_id}.lock"


@contextlib.contextmanager
def run_lock(state_dir: Path, run_id: str) -> Iterator[None]:
    """Hold the run's lock for the block; RunLockedError when another live process holds it."""
    try:
        descriptor = take_pid_lock(lock_path(state_dir, run_id))
    except LockHeldError as held:
        raise RunLockedError(
            f"run {run_id} is being driven by another topn process (pid {held.holder}); wait for it to "
            f"finish, or stop it (Ctrl-C, or `kill {held.holder}`) and then `topn resume {run_id}`"
        ) from None
    try:
        yield
    finally:
        release_pid_lock(descriptor)


def runs_being_driven(state_dir: Path) -> list[tuple[str, str]]:
    """(run id, holder pid) of every run a live process holds the lock of, on this state folder."""
    driven: list[tuple[str, str]] = []
    for path in sorted((state_dir / "locks").glob("*.lock")):
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode("ascii", errors="replace").strip() or "unknown"
            driven.append((path.stem, holder))
        finally:
            os.close(descriptor)  # a shared lock we got is released with it
    return driven
