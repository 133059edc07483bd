"""What a run reads of its local files to tell whether one changed: size, mtime, MD5."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path


def file_stat(path: Path) -> tuple[int, int]:
    """(size, mtime ns) of a file, or (-1, -1) when it cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def file_mtime_ns(path: Path) -> int:
    """A file's mtime in ns, or 0 when it cannot be read (the journal then sees it as changed)."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


READ_CHUNK_BYTES = 4 * 1024 * 1024


def read_md5(path: Path, keep_up_to: int = 0) -> tuple[bytes | None, bytes]:
    """A file's MD5 in one pass, and its bytes too when there are at most `keep_up_to` (else None)."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        head = stream.read(keep_up_to + 1)
        digest.update(head)
        if len(head) <= keep_up_to:
            return head, digest.digest()
        for chunk in iter(lambda: stream.read(READ_CHUNK_BYTES), b""):
            digest.update(chunk)
    return None, digest.digest()


def file_md5_hex(path: Path) -> str | None:
    """The MD5 of a file's bytes, or None when it cannot be read."""
    try:
        return read_md5(path)[1].hex()
    except OSError:
        return None


class LockHeldError(Exception):
    """Another live process holds a pid lock; `holder` is the pid it wrote (or "unknown")."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"held by pid {holder}")
        self.holder = holder


def take_pid_lock(path: Path) -> int:
    """Lock `path` for this process and write its pid there; returns the descriptor to release.

    `fcntl.flock` locks belong to the open file description, so a holder killed with SIGKILL holds
    nothing: the next taker gets the lock at once. The pid is there only to name the holder.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 32, 0).decode("ascii", errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise LockHeldError(holder) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
    return descriptor


def release_pid_lock(descriptor: int) -> None:
    """Empty the lock file (no reader names a pid that let go) and release the lock."""
    with contextlib.suppress(OSError):
        os.ftruncate(descriptor, 0)
    os.close(descriptor)
