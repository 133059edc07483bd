"""What a run reads of its local files to tell whether one changed: size, mtime, MD5."""

from __future__ import annotations

import hashlib
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


def file_md5_hex(path: Path) -> str | None:
    """The MD5 of a file's bytes, or None when it cannot be read."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with path.open("rb") as stream:
            for chunk in iter(lambda: stream.read(4 * 1024 * 1024), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()
