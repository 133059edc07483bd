"""The inbox: which files count, when a file is complete, and the watcher + rescan that find them.

Completeness (issue 12): a `<name>.done` marker beside a file makes it complete at once; otherwise
its size and mtime must be unchanged over two checks at least `settle_s` apart, and its mtime at
least `min_age_s` old. A file renamed into the inbox is complete by the same stability rule after
one settle interval: watchfiles reports a rename-in and a create alike (both `added`), so the two
cannot be told apart from its events, and the stability rule is safe for both.

Ignored: any path with a part starting with `.` (so the daemon's own `.claimed/` folder and lock),
names ending in `.part` or `.tmp`, and `.done` markers themselves (never inputs).

The watcher (`watchfiles.awatch`) only says where to look; a full rescan every `rescan_s` catches
what it misses (network file systems, inotify overflow). Both feed the same candidate set, and the
periodic check decides; so an event seen twice, or a file found by both, is harmless.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import anyio
import structlog
import watchfiles

log = structlog.get_logger()

IGNORED_SUFFIXES = (".part", ".tmp")
DONE_MARKER_SUFFIX = ".done"
CLAIMED_FOLDER = ".claimed"
# The check period: fast enough that a settled file is seen soon after `settle_s`, never busier.
MAX_CHECK_PERIOD_S = 0.5


def is_ignored(relpath: str) -> bool:
    """Whether a path inside the inbox is never an input (hidden, partial, temporary, a marker)."""
    parts = PurePosixPath(relpath).parts
    if not parts or any(part.startswith(".") for part in parts):
        return True
    name = parts[-1]
    return name.endswith((*IGNORED_SUFFIXES, DONE_MARKER_SUFFIX))


def marker_of(relpath: str) -> str:
    """The `.done` marker that makes `relpath` complete at once."""
    return relpath + DONE_MARKER_SUFFIX


@dataclass(frozen=True)
class Observation:
    """What a check saw of a file: its size and mtime, and when (the daemon's monotonic clock)."""

    size_bytes: int
    mtime_ns: int
    seen_at: float


def is_complete(
    first_stable: Observation | None,
    current: Observation,
    *,
    wall_now_ns: int,
    settle_s: float,
    min_age_s: float,
    has_marker: bool,
) -> bool:
    """The completeness rule; `first_stable` is the earliest check that saw the same size and mtime."""
    if has_marker:
        return True
    if first_stable is None:
        return False
    if (first_stable.size_bytes, first_stable.mtime_ns) != (current.size_bytes, current.mtime_ns):
        return False
    if current.seen_at - first_stable.seen_at < settle_s:
        return False
    return wall_now_ns - current.mtime_ns >= min_age_s * 1e9


def next_first_stable(first_stable: Observation | None, current: Observation) -> Observation:
    """The streak start after a check: kept while size and mtime hold, restarted when they move."""
    if first_stable is not None and (first_stable.size_bytes, first_stable.mtime_ns) == (
        current.size_bytes,
        current.mtime_ns,
    ):
        return first_stable
    return current


@dataclass(frozen=True)
class CompleteFile:
    """A file found complete: where it is, its name in the inbox, how it was found."""

    path: Path
    relpath: str
    size_bytes: int
    source: str  # watch | rescan
    marker: Path | None  # its `.done` marker, removed once it is claimed


def walk_inbox(root: Path) -> list[str]:
    """Every candidate file's relpath under `root` (hidden folders are not entered); blocking."""
    found: list[str] = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        base = PurePosixPath(Path(folder).relative_to(root).as_posix())
        for name in filenames:
            relpath = str(base / name) if str(base) != "." else name
            if not is_ignored(relpath):
                found.append(relpath)
    return found


class Inbox:
    """Candidates of one inbox folder and their stability streaks; `check` returns the complete ones."""

    def __init__(self, root: Path, *, settle_s: float, min_age_s: float) -> None:
        self.root = root
        self._settle_s = settle_s
        self._min_age_s = min_age_s
        self._candidates: dict[str, str] = {}  # relpath -> how it was found
        self._streaks: dict[str, Observation] = {}

    @property
    def pending(self) -> int:
        """Files seen but not complete yet (the `topn_inbox_pending` gauge)."""
        return len(self._candidates)

    def add(self, relpaths: Iterable[str], source: str) -> None:
        for relpath in relpaths:
            if relpath.endswith(DONE_MARKER_SUFFIX):
                relpath = relpath[: -len(DONE_MARKER_SUFFIX)]  # a marker points at its file
            if not is_ignored(relpath):
                self._candidates.setdefault(relpath, source)

    def relpath_of(self, path: str | Path) -> str | None:
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return None

    async def check(self) -> list[CompleteFile]:
        """Stat every candidate (on a worker thread); forget the vanished, return the complete."""
        candidates = dict(self._candidates)
        if not candidates:
            return []
        seen = await anyio.to_thread.run_sync(_stat_all, self.root, list(candidates))
        now, wall_now_ns = time.monotonic(), time.time_ns()
        complete: list[CompleteFile] = []
        for relpath, source in candidates.items():
            found = seen.get(relpath)
            if found is None:  # gone (claimed by rename elsewhere, deleted) or not a regular file
                self._forget(relpath)
                continue
            size, mtime_ns, has_marker = found
            current = Observation(size, mtime_ns, now)
            first = self._streaks.get(relpath)
            if is_complete(
                first,
                current,
                wall_now_ns=wall_now_ns,
                settle_s=self._settle_s,
                min_age_s=self._min_age_s,
                has_marker=has_marker,
            ):
                self._forget(relpath)
                marker = self.root / marker_of(relpath) if has_marker else None
                complete.append(CompleteFile(self.root / relpath, relpath, size, source, marker))
            else:
                self._streaks[relpath] = next_first_stable(first, current)
        return complete

    def _forget(self, relpath: str) -> None:
        self._candidates.pop(relpath, None)
        self._streaks.pop(relpath, None)


def _stat_all(root: Path, relpaths: Sequence[str]) -> dict[str, tuple[int, int, bool]]:
    found: dict[str, tuple[int, int, bool]] = {}
    for relpath in relpaths:
        try:
            info = (root / relpath).stat()
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        found[relpath] = (info.st_size, info.st_mtime_ns, (root / marker_of(relpath)).is_file())
    return found


async def watch_inbox(
    inbox: Inbox,
    on_complete: Callable[[list[CompleteFile]], Awaitable[object]],
    *,
    rescan_s: float,
    check_every_s: float,
    on_checked: Callable[[], None] = lambda: None,
) -> None:
    """Forever: watcher events and rescans add candidates; each check hands on the complete files."""
    async with anyio.create_task_group() as group:
        group.start_soon(_watch_events, inbox)
        group.start_soon(_rescan, inbox, rescan_s)
        while True:
            complete = await inbox.check()
            if complete:
                await on_complete(complete)
            on_checked()
            await anyio.sleep(min(check_every_s, MAX_CHECK_PERIOD_S))


async def _watch_events(inbox: Inbox) -> None:
    # No watchfiles filter: its default one drops editor and build files a user may well send;
    # our own rules apply in `Inbox.add`.
    async for changes in watchfiles.awatch(
        inbox.root, watch_filter=None, recursive=True, debounce=50, step=20
    ):
        relpaths = []
        for change, path in changes:
            if change == watchfiles.Change.deleted:
                continue
            relpath = inbox.relpath_of(path)
            if relpath is not None:
                relpaths.append(relpath)
        inbox.add(relpaths, "watch")


# A second scan this soon after the first: a file that arrived while the watcher was still starting
# (before its inotify watch existed) is found now, not one `rescan_s` later.
SECOND_SCAN_AFTER_S = 1.0


async def _rescan(inbox: Inbox, rescan_s: float) -> None:
    waits = [min(SECOND_SCAN_AFTER_S, rescan_s)]
    while True:
        found = await anyio.to_thread.run_sync(walk_inbox, inbox.root)
        inbox.add(found, "rescan")
        log.debug("inbox.rescanned", files=len(found))
        await anyio.sleep(waits.pop() if waits else rescan_s)
