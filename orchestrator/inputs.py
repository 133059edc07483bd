"""Turn the paths a user gave into the run's input list, before anything is created anywhere."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import structlog

from orchestrator import naming
from orchestrator.errors import InputError
from orchestrator.results import RUN_MARKER

log = structlog.get_logger()

# Azure rejects blob names over 1,024 characters; the run prefix takes about 30 of them.
MAX_RELPATH_CHARS = 960


@dataclass(frozen=True)
class SkippedInput:
    """A file or folder left out at discovery because it could not be read (`--skip-unreadable`)."""

    path: Path
    reason: str


@dataclass(frozen=True)
class BlobSource:
    """Where an input that already lives in Blob Storage is (orchestrator/blobinputs.py): never copied."""

    container: str
    name: str
    etag: str  # as listed: the node reports the one it read, and a change is said (`input.changed`)

    @property
    def address(self) -> str:
        """`az://CONTAINER/NAME`: how the journal, summary.json and events name it."""
        return f"az://{self.container}/{self.name}"


@dataclass(frozen=True)
class InputFile:
    """One file to process: where it is, the name it has inside the run, its size."""

    path: Path  # a blob input's is its address as a path, for display only (never opened)
    relpath: str  # POSIX, relative to the argument it came from; unique within the run
    size_bytes: int
    blob: BlobSource | None = None  # set for an input read where it lives in Blob Storage

    @property
    def shown(self) -> str:
        """Where the input is, for people: its local path, or its blob's `az://CONTAINER/NAME`."""
        return self.blob.address if self.blob is not None else str(self.path)


def discover_inputs(paths: Sequence[Path], skipped: list[SkippedInput] | None = None) -> list[InputFile]:
    """Files and folders (recursively) to a list sorted by relpath; InputError names any bad path.

    Inside folders, hidden entries (names starting with ".") and topn's own results folders (holding
    a `.topn-run` marker) are skipped; a file or folder named explicitly is always taken. Symbolic
    links are followed; a loop or a broken link is refused with its path rather than skipped, so no
    file the user meant is ever silently left out. A file or folder that cannot be read is refused
    too, unless `skipped` is given (`--skip-unreadable`): then it is appended there, with an
    `input.skipped` warning event, and discovery goes on.
    """
    if not paths:
        raise InputError("no input given: name at least one file or folder, e.g. `topn run ./texts`")
    found: list[InputFile] = []
    seen_files: set[tuple[int, int]] = set()
    for argument in paths:
        for path, relpath, info in _walk_argument(argument, skipped):
            identity = (info.st_dev, info.st_ino)
            if identity in seen_files:  # the same file named twice (or reached twice) is processed once
                continue
            seen_files.add(identity)
            found.append(InputFile(path=path, relpath=relpath, size_bytes=info.st_size))
    unique = make_relpaths_unique([item.relpath for item in found])
    inputs = [
        InputFile(path=item.path, relpath=relpath, size_bytes=item.size_bytes)
        for item, relpath in zip(found, unique, strict=True)
    ]
    for item in inputs:
        check_relpath(item.relpath, item.path)
    if not inputs and skipped:
        raise InputError(
            f"no readable input: all {len(skipped)} unreadable files or folders were skipped "
            f"(the first: {skipped[0].path}, {skipped[0].reason}); check their permissions"
        )
    return sorted(inputs, key=lambda item: item.relpath)


def _unreadable(path: Path, error: OSError, what: str, skipped: list[SkippedInput] | None) -> None:
    """Refuse an unreadable input (exit 2, naming it), or note it and go on when asked to skip."""
    if skipped is None:
        raise InputError(
            f"cannot {what} {path}: {error.strerror} (check its permissions, leave it out, or run "
            "with --skip-unreadable)"
        ) from None
    reason = f"unreadable: {error.strerror}"
    skipped.append(SkippedInput(path, reason))
    log.warning("input.skipped", file=str(path), reason=reason)


def _walk_argument(
    argument: Path, skipped: list[SkippedInput] | None
) -> Iterator[tuple[Path, str, os.stat_result]]:
    """Every regular file under one argument with its relpath; symlinks followed, loops refused."""
    try:
        info = argument.stat()
    except FileNotFoundError:
        raise InputError(
            f"input not found: {argument} (check the path; folders are read recursively)"
        ) from None
    except OSError as error:
        _unreadable(argument, error, "read input", skipped)
        return
    if stat.S_ISREG(info.st_mode):
        if _readable(argument, skipped):
            yield argument, argument.name, info
        return
    if not stat.S_ISDIR(info.st_mode):
        raise InputError(
            f"input is neither a file nor a folder: {argument} (name regular files or folders; "
            "save a stream to a file first)"
        )
    count = 0
    skipped_before = len(skipped or ())
    identity = {(info.st_dev, info.st_ino)}
    for path, relpath, file_info in _walk_folder(argument, PurePosixPath(), identity, skipped):
        count += 1
        yield path, relpath, file_info
    if count == 0 and len(skipped or ()) == skipped_before:
        raise InputError(
            f"folder has no files to process (hidden ones are skipped): {argument}. "
            "Put text files in it, or name a hidden file directly to process it."
        )


def _walk_folder(
    folder: Path, prefix: PurePosixPath, ancestors: set[tuple[int, int]], skipped: list[SkippedInput] | None
) -> Iterator[tuple[Path, str, os.stat_result]]:
    """Depth-first, name-sorted walk; `ancestors` holds the folders above us to detect symlink loops."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as error:
        _unreadable(folder, error, "list folder", skipped)
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue  # hidden files and folders (.git, .topn state) are never inputs unless named
        path = Path(entry.path)
        try:
            info = path.stat()  # follows symlinks, as a user who linked a file in expects
        except FileNotFoundError:
            raise InputError(
                f"broken symbolic link in the inputs: {path} (remove it or fix its target)"
            ) from None
        except OSError as error:
            if error.errno == 40:  # ELOOP: a link that points at itself
                raise InputError(
                    f"symbolic link loop in the inputs: {path} (remove the link or fix its target)"
                ) from None
            _unreadable(path, error, "read input", skipped)
            continue
        relpath = prefix / entry.name
        if stat.S_ISDIR(info.st_mode):
            if _holds_run_marker(path, skipped):
                # An earlier run's results (`topn run .` twice puts them below the inputs): their
                # counts and summary are not the user's texts. Named as an argument, they are taken.
                continue
            identity = (info.st_dev, info.st_ino)
            if identity in ancestors:
                raise InputError(
                    f"symbolic link loop in the inputs: {path} leads back to a folder above it "
                    "(remove the link or name the folders separately)"
                )
            yield from _walk_folder(path, relpath, ancestors | {identity}, skipped)
        elif stat.S_ISREG(info.st_mode):
            if _readable(path, skipped):
                yield path, str(relpath), info
        else:  # a FIFO, socket or device inside a folder: not a text file, said so rather than silently
            log.warning("input.skipped", file=str(path), reason=_kind_of(info.st_mode))


def _kind_of(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return f"{kind}, not a regular file"
    return "not a regular file"


def _holds_run_marker(folder: Path, skipped: list[SkippedInput] | None) -> bool:
    """Whether `folder` is a topn results folder; one that cannot be entered is unreadable (the
    walk into it then refuses or skips it, naming it)."""
    try:
        return stat.S_ISREG((folder / RUN_MARKER).stat().st_mode)
    except FileNotFoundError:
        return False
    except OSError as error:
        if skipped is None:
            _unreadable(folder, error, "list folder", skipped)
        return False  # the walk into it meets the same error and skips it


def _readable(path: Path, skipped: list[SkippedInput] | None) -> bool:
    """Open the file once: one that cannot be read is refused (or skipped) now, not on the node."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        _unreadable(path, error, "read input", skipped)
        return False
    os.close(descriptor)
    return True


def make_relpaths_unique(relpaths: Sequence[str]) -> list[str]:
    """Keep each relpath, renaming later duplicates to `stem~2.ext`, `stem~3.ext`, ... (deterministic)."""
    taken = set(relpaths)
    used: set[str] = set()
    unique: list[str] = []
    for relpath in relpaths:
        if relpath not in used:
            used.add(relpath)
            unique.append(relpath)
            continue
        path = PurePosixPath(relpath)
        number = 2
        while True:
            candidate = str(path.with_name(f"{path.stem}~{number}{path.suffix}"))
            if candidate not in used and candidate not in taken:
                break
            number += 1
        used.add(candidate)
        unique.append(candidate)
    return unique


def renamed_inputs(inputs: Sequence[InputFile]) -> list[InputFile]:
    """The inputs whose run name is not their file's own name (a duplicate that became `stem~N`)."""
    return [item for item in inputs if PurePosixPath(item.relpath).name != _own_name(item)]


def _own_name(item: InputFile) -> str:
    return PurePosixPath(item.blob.name).name if item.blob is not None else item.path.name


def check_relpath(relpath: str, path: Path) -> None:
    """Refuse names that cannot become a blob name or a result file (InputError says which and why)."""
    try:
        relpath.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"input name is not valid UTF-8 and cannot be stored in Blob Storage: {path!s} (rename the file)"
        ) from None
    if any(ord(char) < 32 or ord(char) == 127 for char in relpath):
        raise InputError(f"input name contains a control character: {relpath!r} (rename the file)")
    if "\\" in relpath:
        raise InputError(
            f"input name contains a backslash, which Blob Storage treats as '/': {relpath!r} "
            "(rename the file)"
        )
    if len(relpath) > MAX_RELPATH_CHARS:
        raise InputError(
            f"input path is longer than {MAX_RELPATH_CHARS} characters: {relpath[:80]}... "
            "(shorten the folder names below the argument, or name a deeper folder)"
        )
    if any(part.endswith(".") for part in PurePosixPath(relpath).parts):
        raise InputError(
            f"input name ends with a dot, which Blob Storage cannot keep: {relpath!r} "
            "(rename the file or folder)"
        )
    try:
        naming.check_relative_name(relpath)
    except naming.UnsafeNameError as error:
        raise InputError(
            f"input name cannot name a blob or a result file, {error} (rename the file)"
        ) from None
