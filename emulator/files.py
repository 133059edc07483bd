"""Node and task files: safe path resolution, listings and file properties (blocking, small)."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from emulator.wire import ServiceError, format_time


@dataclass(frozen=True)
class FileEntry:
    name: str  # relative to the listing's root, with "/" separators
    path: Path
    is_directory: bool
    size: int
    modified: datetime
    created: datetime
    mode: int


def resolve_file(root: Path, relative: str) -> Path:
    """A file under `root`; 404 FileNotFound for anything missing or outside it."""
    candidate = PurePosixPath(relative)
    if candidate.is_absolute() or ".." in candidate.parts or not relative:
        raise ServiceError(404, "FileNotFound", "The specified file does not exist.")
    path = root.joinpath(*candidate.parts)
    # A symlink a task made must not turn the files API into a window on the whole machine.
    if not path.exists() or not path.resolve().is_relative_to(root.resolve()):
        raise ServiceError(404, "FileNotFound", "The specified file does not exist.")
    return path


def entry_for(root: Path, path: Path) -> FileEntry:
    info = path.stat()
    return FileEntry(
        name=path.relative_to(root).as_posix(),
        path=path,
        is_directory=stat.S_ISDIR(info.st_mode),
        size=info.st_size,
        modified=datetime.fromtimestamp(info.st_mtime, UTC),
        created=datetime.fromtimestamp(info.st_ctime, UTC),
        mode=info.st_mode,
    )


def list_entries(root: Path, recursive: bool) -> list[FileEntry]:
    """Files and folders under `root` (only the top level unless `recursive`), sorted by name."""
    if not root.is_dir():
        return []
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted((entry_for(root, path) for path in found), key=lambda entry: entry.name)


def entry_json(entry: FileEntry, url_prefix: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": entry.name,
        "url": f"{url_prefix}/{entry.name}",
        "isDirectory": entry.is_directory,
    }
    if not entry.is_directory:
        body["properties"] = {
            "creationTime": format_time(entry.created),
            "lastModified": format_time(entry.modified),
            "contentLength": str(entry.size),
            "contentType": "application/octet-stream",
            "fileMode": f"0o{entry.mode:o}",
        }
    return body


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """An inclusive `bytes=a-b` range clipped to the file; None for the whole file; 416 when unusable."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    start_text, dash, end_text = spec.partition("-")
    try:
        if unit.strip() != "bytes" or not dash:
            raise ValueError
        if start_text == "":
            length = int(end_text)
            start, end = max(size - length, 0), size - 1
        else:
            start = int(start_text)
            end = int(end_text) if end_text else size - 1
        if start < 0 or end < start or start >= max(size, 1):
            raise ValueError
    except ValueError:
        raise ServiceError(416, "InvalidRange", f"The range {header!r} cannot be satisfied.") from None
    return start, min(end, size - 1)


def read_range(path: Path, start: int, end: int) -> bytes:
    """Bytes `start`..`end` inclusive (blocking; call it from a worker thread)."""
    if end < start:
        return b""
    with path.open("rb") as file:
        file.seek(start)
        return file.read(end - start + 1)
