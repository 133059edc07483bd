"""Per-file counts merged into the run's exact top N, the summary, and safe writes of result files.

The merge is order-independent: files finish in any order, yet the run-level ranking equals what
`Counter.update` over the files in sorted input order followed by `most_common` would give (ties
broken by first occurrence: earliest input first, then position inside that input).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast, overload

from orchestrator import naming
from orchestrator.errors import InputError, LocalWriteError
from orchestrator.secrets import redact_value

if TYPE_CHECKING:  # inputs.py imports this module
    from orchestrator.inputs import SkippedInput

RUN_MARKER = ".topn-run"  # holds the run id that owns a results folder


@dataclass(frozen=True)
class FileCounts:
    """One input's full counts, in order of first occurrence (as its unit's result blob holds them)."""

    words: int
    distinct: int
    invalid_bytes: int
    counts: list[tuple[str, int]]


def top_of(counts: Sequence[tuple[str, int]], top: int) -> list[tuple[str, int]]:
    """The `top` most frequent words of first-occurrence-ordered counts, ties by first occurrence."""
    order = sorted(range(len(counts)), key=lambda position: -counts[position][1])  # stable sort
    # Interned: the same few words top most files, and each file's entry lives until the run ends
    # (100,000 entries would otherwise hold a million copies of them).
    return [(sys.intern(counts[position][0]), counts[position][1]) for position in order[:top]]


@dataclass
class RunCounts:
    """Accumulates files' counts in any arrival order; ranks as a sorted-order Counter merge would."""

    totals: dict[str, int] = field(default_factory=dict)
    first_seen: dict[str, tuple[str | int, int]] = field(default_factory=dict)  # (input order, position)

    def add(self, order: str | int, counts: Iterable[tuple[str, int]]) -> None:
        """Merge one input's counts; `order` is its place in the run's sorted inputs (its relpath).

        A run ranks ties by first occurrence in relpath order, whatever order its inputs were
        listed in (blob pages come after the local inputs); one kind of `order` per run.
        """
        totals = self.totals
        first_seen = self.first_seen
        for position, (word, count) in enumerate(counts):
            key = (order, position)
            if word in totals:
                totals[word] += count
                if key < first_seen[word]:
                    first_seen[word] = key
            else:
                totals[word] = count
                first_seen[word] = key

    def top(self, top: int) -> list[tuple[str, int]]:
        """The exact run-level top N."""
        ranked = sorted(self.totals, key=lambda word: (-self.totals[word], self.first_seen[word]))
        return [(word, self.totals[word]) for word in ranked[:top]]


def format_output(
    top: Sequence[tuple[str, int]], *, node_id: str, task_id: str, job_id: str, pool_id: str
) -> str:
    """The seed's `_OUTPUT` text (DESIGN §1), for a reference or a re-rendering."""
    rule = "-" * 30
    lines = ["Word\tCount", rule, *[f"{word}:\t{count}" for word, count in top], rule]
    lines += [f"Node: {node_id}", f"Task: {task_id}", f"Job:  {job_id}", f"Pool: {pool_id}"]
    return "\n".join(lines) + "\n"


def file_entry(
    relpath: str,
    *,
    task_id: str,
    succeeded: bool,
    top: Sequence[tuple[str, int]] = (),
    words: int | None = None,
    invalid_bytes: int | None = None,
    output: str | None = None,
    error: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One element of summary.json's `files` list (DESIGN §4).

    `invalid_bytes` (bytes the node replaced by U+FFFD) is null for a failed file, like `words`:
    nothing was counted, so 0 would wrongly claim the file was clean.
    """
    return {
        "path": relpath,
        "status": "succeeded" if succeeded else "failed",
        "top": [[word, count] for word, count in top],
        "words": words,
        "invalid_bytes": invalid_bytes,
        "error": dict(error) if error is not None else None,
        "task_id": task_id,
        "output": output,
    }


# How many files a one-line notice names before it only says how many more there are.
UNDECODABLE_NAMES_SHOWN = 5


def undecodable_notice(
    files: Sequence[Mapping[str, Any]], *, names_shown: int = UNDECODABLE_NAMES_SHOWN
) -> str | None:
    """One line naming the files whose undecodable bytes were replaced, or None when every file was clean.

    A binary file fed by mistake "succeeds" with nonsense words; this line is how the user notices.
    """
    affected = sorted(
        (str(entry["path"]), int(entry["invalid_bytes"]))
        for entry in files
        if isinstance(entry.get("invalid_bytes"), int) and entry["invalid_bytes"] > 0
    )
    if not affected:
        return None
    replaced = sum(count for _, count in affected)
    names = ", ".join(path for path, _ in affected[:names_shown])
    if len(affected) > names_shown:
        names += f" and {len(affected) - names_shown} more"
    files_word = "file had" if len(affected) == 1 else "files had"
    bytes_word = "byte" if replaced == 1 else "bytes"
    replacement = f"{replaced:,} {bytes_word} replaced by U+FFFD"
    return f"{len(affected)} {files_word} undecodable bytes ({replacement}): {names}"


def failure_details(
    *, exit_code: int | None, failure_code: str | None, message: str, stderr_tail: str
) -> dict[str, Any]:
    """The `error` object of a failed file: enough to act on without opening the node's logs."""
    return {
        "exit_code": exit_code,
        "failure_code": failure_code,
        "message": message,
        "stderr_tail": stderr_tail,
    }


def build_summary(
    run_id: str,
    state: str,
    run_top: Sequence[tuple[str, int]],
    files: Sequence[Mapping[str, Any]],
    totals: Mapping[str, Any],
) -> dict[str, Any]:
    """summary.json as DESIGN §4: run id, final state, run-level top, one entry per input, totals.

    `files` are entries (sorted by path here) or SummaryEntries (already in path order).
    """
    # The entries themselves, not copies: at 100,000 files each copy of them is tens of megabytes.
    ordered: Sequence[Mapping[str, Any]] = (
        files if isinstance(files, SummaryEntries) else sorted(files, key=lambda entry: str(entry["path"]))
    )
    return {
        "run_id": run_id,
        "state": state,
        "top": [[word, count] for word, count in run_top],
        "files": ordered,
        "totals": dict(totals),
    }


def entry_line(entry: Mapping[str, Any]) -> str:
    """One summary.json `files` entry as its line of the file: compact JSON, secrets redacted."""
    return json.dumps(redact_value(entry), ensure_ascii=False, separators=_ONE_LINE)


class SummaryEntries(Sequence[dict[str, Any]]):
    """summary.json's `files`, held as their lines (entry_line): a few hundred bytes per file.

    A run keeps every file's entry until it ends; as dicts with their lists, 100,000 of them took
    well over 100 MB. Reading an item decodes it (a fresh dict each time); summary_text writes the
    lines as they are.
    """

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = lines

    def __len__(self) -> int:
        return len(self.lines)

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence of the same entries (a list read back from summary.json)."""
        if not isinstance(other, Sequence) or isinstance(other, str) or len(other) != len(self):
            return False
        return all(mine == theirs for mine, theirs in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable-like, compared by content

    @overload
    def __getitem__(self, position: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, position: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, position: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(position, slice):
            return [json.loads(line) for line in self.lines[position]]
        entry: dict[str, Any] = json.loads(self.lines[position])
        return entry


def summary_text(summary: Mapping[str, Any]) -> Iterator[str]:
    """summary.json's text piece by piece, secrets redacted: each file's entry on a line of its own.

    Never the whole text (nor a redacted copy of the whole summary) at once: at 100,000 files that
    is over 100 MB held for a moment. One compact line per entry also goes through json's C encoder,
    where indenting every entry took the pure-Python one (a fifth of a millisecond per file).
    """
    yield "{"
    separator = "\n"
    for key, value in summary.items():
        yield f"{separator}  {json.dumps(key, ensure_ascii=False)}: "
        separator = ",\n"
        if key == "files" and isinstance(value, Sequence):
            lines = value.lines if isinstance(value, SummaryEntries) else map(entry_line, value)
            yield "["
            entry_separator = "\n    "
            for line in lines:
                yield entry_separator + line
                entry_separator = ",\n    "
            yield "\n  ]" if value else "]"
        else:
            text = json.dumps(redact_value(value), ensure_ascii=False, indent=2)
            yield text.replace("\n", "\n  ")
    yield "\n}\n"


_ONE_LINE = (", ", ": ")


def result_path(out_dir: Path, name: str) -> Path:
    """Where a result named `name` (a blob name, `/`-separated) goes: always inside `out_dir`.

    naming.UnsafeNameError refuses a name with `..`, an absolute path, a backslash or a drive letter,
    and a name that a symbolic link inside the folder would lead elsewhere.
    """
    path = out_dir.joinpath(*naming.check_relative_name(name).split("/"))
    if not path.resolve().is_relative_to(out_dir.resolve()):
        raise naming.UnsafeNameError(f"result {name!r} would be written outside the results folder {out_dir}")
    return path


def write_result(out_dir: Path, name: str, data: bytes) -> Path:
    """Write one result file under `out_dir` atomically, refusing any name that would leave it.

    LocalWriteError (the run stays resumable) names the file, the folder, the error and the fix.
    """
    return ResultWriter(out_dir).write(name, data)


class ResultWriter:
    """Writes result files under one results folder as write_result does, for a unit's many files.

    The folder and each subfolder are resolved once, and each subfolder is made once: a few
    system calls per file instead of one per path component (result_path resolves both whole).
    A file name that is itself a symbolic link is still resolved and refused if it leads outside.
    """

    def __init__(self, out_dir: Path, *, sync_later: bool = False) -> None:
        """With `sync_later`, files are made durable together by `sync` (one filesystem sync)."""
        self.out_dir = out_dir
        self._root: Path | None = None
        self._resolved_folders: dict[Path, Path] = {}
        self._made_folders: set[Path] = set()
        self._folder_checked = False
        # Where the system has no syncfs, each file is fsynced as it is written, as write_atomic does.
        self._sync_later = sync_later and _SYNCFS is not None
        self._unsynced = False

    def path_of(self, name: str) -> Path:
        """Where `name` goes (as result_path, which it equals): naming.UnsafeNameError if outside."""
        path = self.out_dir.joinpath(*naming.check_relative_name(name).split("/"))
        if self._root is None:
            self._root = self.out_dir.resolve()
        folder = self._resolved_folders.get(path.parent)
        if folder is None:
            folder = self._resolved_folders[path.parent] = path.parent.resolve()
        resolved = path.resolve() if path.is_symlink() else folder / path.name
        if not resolved.is_relative_to(self._root):
            raise naming.UnsafeNameError(
                f"result {name!r} would be written outside the results folder {self.out_dir}"
            )
        return path

    def write(self, name: str, data: bytes) -> Path:
        """Write one result file atomically; LocalWriteError (resumable) when the folder cannot take it."""
        path = self.path_of(name)
        durable = not self._sync_later
        try:
            if not self._folder_checked:
                # Once per writer: later, a vanished folder shows as ENOENT at the write and is checked there.
                _check_still_there(self.out_dir)
                self._folder_checked = True
            if path.parent not in self._made_folders:
                _make_folders_below(self.out_dir, path.parent)
                self._made_folders.add(path.parent)
            # Never the results folder itself: one removed while other files are written stays removed.
            try:
                write_atomic(path, data, make_folders=False, durable=durable)
            except FileNotFoundError:
                # A subfolder removed since it was made here is made again, as write_result would.
                _check_still_there(self.out_dir)
                _make_folders_below(self.out_dir, path.parent)
                write_atomic(path, data, make_folders=False, durable=durable)
        except OSError as error:
            raise LocalWriteError(local_write_message(self.out_dir, path, error)) from None
        self._unsynced = self._unsynced or not durable
        return path

    def sync(self) -> None:
        """Make every file written since the last sync durable; LocalWriteError (resumable) if it fails.

        One syncfs for a unit's files instead of an fsync each: on this project's test machines the
        fsyncs were most of a collected file's cost. Callers journal the files only after this returns.
        """
        if not self._unsynced:
            return
        try:
            _sync_filesystem(self.out_dir)
        except OSError as error:
            raise LocalWriteError(local_write_message(self.out_dir, self.out_dir, error)) from None
        self._unsynced = False


def _make_folders_below(out_dir: Path, folder: Path) -> None:
    """Create `folder` one level at a time below `out_dir`, never `out_dir` itself.

    A results folder removed meanwhile (by the user, or while another unit's outputs are written)
    then fails the write with ENOENT instead of being made again empty.
    """
    current = out_dir
    for part in folder.relative_to(out_dir).parts:
        current = current / part
        current.mkdir(exist_ok=True)


def _check_still_there(out_dir: Path) -> None:
    """A results folder removed during the run is not silently made again (earlier results went with it)."""
    if not out_dir.is_dir():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(out_dir))


# What to do about a write the system refused, by errno; anything else: the generic advice.
_WRITE_FIXES = {
    errno.ENOSPC: "free some space on that disk",
    errno.EDQUOT: "free some space within your disk quota",
    errno.EROFS: "remount the filesystem read-write",
    errno.EACCES: "make the folder writable for this user",
    errno.EPERM: "make the folder writable for this user",
    errno.ENOENT: "the folder was moved or deleted; put it back (results saved so far are fetched again)",
    errno.ENOTDIR: "something in its path is no longer a folder; put the folder back",
}


def local_write_message(out_dir: Path, path: Path, error: OSError) -> str:
    """Why a result could not be written, and what to do: named file, folder, error and fix."""
    code = errno.errorcode.get(error.errno or 0, "")
    reason = f"{error.strerror or error}{f' ({code})' if code else ''}"
    fix = _WRITE_FIXES.get(error.errno or 0, "make the folder usable again")
    what = "its results" if path == out_dir else path  # the folder itself: a sync of all its new files
    return f"cannot write {what} in the results folder {out_dir}: {reason}; {fix}"


def write_atomic(
    path: Path, data: bytes | Iterable[str], *, make_folders: bool = True, durable: bool = True
) -> None:
    """Write a file whole or not at all (temp file in the same folder, fsync, rename).

    `data` is the bytes, or text in pieces (written as UTF-8 as they come). With `make_folders`
    false the file's folder must exist: a folder removed meanwhile is an error (ENOENT), never made
    again. With `durable` false there is no fsync: the caller syncs the filesystem
    before anything relies on the file surviving a crash (ResultWriter.sync does, once for many).
    """
    if make_folders:
        path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX)
    try:
        if isinstance(data, bytes):
            # Straight to the descriptor: no file object (and its fstat and isatty) for one write.
            try:
                _write_all(handle, data)
                if durable:
                    os.fsync(handle)
            finally:
                os.close(handle)
        else:
            with os.fdopen(handle, "wb") as stream:
                for piece in data:
                    stream.write(piece.encode("utf-8"))  # buffered: many small pieces, few system calls
                stream.flush()
                if durable:
                    os.fsync(stream.fileno())
        # os, not pathlib: no Path object made per file for a name mkstemp gave as a string.
        os.rename(temporary, path)  # noqa: PTH104
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)  # noqa: PTH108
        raise


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


def _load_syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2) from the C library (the os module has no wrapper), or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return cast("Callable[[int], int]", function)


_SYNCFS = _load_syncfs()


def _sync_filesystem(folder: Path) -> None:
    """Flush what was written on `folder`'s filesystem to disk: data, new names, renames (syncfs).

    Raises OSError with the errno syncfs gave (EIO, ENOSPC: errors met writing the data back).
    """
    assert _SYNCFS is not None  # ResultWriter syncs later only where there is syncfs
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(descriptor) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(folder))
    finally:
        os.close(descriptor)


def summary_path(out_dir: Path) -> Path:
    return out_dir / "summary.json"


def write_summary(out_dir: Path, summary: Mapping[str, Any]) -> Path:
    """summary.json (summary_text), written atomically, UTF-8, stable key order; secrets redacted."""
    path = summary_path(out_dir)
    try:
        _check_still_there(out_dir)
        write_atomic(path, summary_text(summary))
    except OSError as error:
        raise LocalWriteError(local_write_message(out_dir, path, error)) from None
    return path


def skipped_entries(skipped: Sequence[SkippedInput]) -> list[dict[str, str]]:
    """summary.json's `skipped`: what `--skip-unreadable` left out at discovery, and why, by path."""
    entries = [{"path": str(item.path), "reason": item.reason} for item in skipped]
    return sorted(entries, key=lambda entry: entry["path"])


def read_summary(out_dir: Path) -> dict[str, Any]:
    """The summary.json a run wrote; raises OSError or ValueError when it cannot be read."""
    summary: dict[str, Any] = json.loads(summary_path(out_dir).read_text(encoding="utf-8"))
    return summary


# Names of write_atomic's temporary files, which a resume clears after a crash.
_TEMP_PREFIX, _TEMP_SUFFIX = ".tmp-", ".part"


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Delete what an atomic write left when the process died between writing and renaming."""
    for leftover in out_dir.rglob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def claim_results_folder(out_dir: Path, run_id: str) -> None:
    """Make `out_dir` this run's; refuse (exit 2) a folder holding another run's or anyone's files."""
    marker = out_dir / RUN_MARKER
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"results path exists and is not a folder: {out_dir} (pass another --out)")
    if marker.is_file():
        owner = marker.read_text(encoding="utf-8").strip()
        if owner == run_id:
            _remove_stale_temporaries(out_dir)
            return
        raise InputError(
            f"results folder {out_dir} holds the results of run {owner}; "
            "pass a new or empty --out so they are not overwritten "
            f"(if that run did not finish, `topn resume {owner}` continues it)"
        )
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise InputError(
            f"results folder {out_dir} is not empty; pass a new or empty --out so nothing is overwritten"
        )
    check_results_folder_creatable(out_dir)
    try:
        write_atomic(marker, f"{run_id}\n".encode())
    except OSError as error:  # read-only, no permission, a full disk: the user's --out cannot be used
        raise InputError(
            f"cannot create the results folder {out_dir}: {error.strerror} (pass another --out)"
        ) from None


# Linux's PATH_MAX: a longer path cannot be opened at all.
MAX_PATH_BYTES = 4095


def check_result_paths_fit(out_dir: Path, relpaths: Iterable[str]) -> None:
    """Refuse (exit 2) inputs whose result file would have a path too long to open, before anything starts."""
    base = len(str(out_dir.absolute()).encode("utf-8")) + 1
    for relpath in relpaths:
        length = base + len(naming.output_name(relpath).encode("utf-8"))
        if length > MAX_PATH_BYTES:
            raise InputError(
                f"the result of input {relpath[:80]}... would have a {length}-byte path under {out_dir}, "
                f"more than the system's {MAX_PATH_BYTES}; pass a shorter --out, or name a deeper folder"
            )


def check_results_folder_creatable(out_dir: Path) -> None:
    """Refuse (exit 2) an --out below something that is not a folder, before anything starts."""
    ancestor = out_dir
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor != out_dir and not ancestor.is_dir():
        raise InputError(
            f"cannot create the results folder {out_dir}: {ancestor} is not a folder (pass another --out)"
        )
