"""Claiming complete inbox files, and moving them to their final place when their batch ends.

The claim is a journal row, then a rename (the choice documented in docs/daemon.md): the row
(`intake_files`, keyed by a claim id that starts with the file's SHA-256) is committed first,
then the file is renamed into `inbox/.claimed/<claim_id>/<relpath>`. A crash between the two
leaves a row whose file is still in the inbox; recovery finishes the rename before intake starts,
so the file is never claimed twice. The same "decide in the journal, then move" order holds at the
end: the final place (`done/`, `failed/`) is recorded (`finishing`) before the move, and the state
becomes `done`/`failed` after it; recovery redoes any move a crash interrupted.

With `dedupe`, a file whose content was already claimed (and not failed) is a duplicate: counted,
moved to `done/`, never run again. Intake is at-least-once (watcher + rescan), and this is what
makes it idempotent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
import structlog

from orchestrator.journal.intake import IntakeFile, IntakeStore
from orchestrator.journal.schema import format_timestamp, now
from orchestrator.results import write_atomic
from orchestrator.secrets import redact_text
from orchestrator.service.intake import CLAIMED_FOLDER, CompleteFile
from orchestrator.settings import DaemonSettings

log = structlog.get_logger()

HASH_CHUNK_BYTES = 1 << 20
ERROR_SUFFIX = ".error.json"


@dataclass(frozen=True)
class DaemonFolders:
    """The inbox and its three sibling folders (all absolute)."""

    inbox: Path
    done: Path
    failed: Path
    outbox: Path

    @property
    def claimed(self) -> Path:
        return self.inbox / CLAIMED_FOLDER

    @classmethod
    def of(cls, settings: DaemonSettings, inbox: Path) -> DaemonFolders:
        """`done/`, `failed/` and `outbox/` beside the inbox unless configured."""
        inbox = inbox.resolve()
        parent = inbox.parent
        return cls(
            inbox=inbox,
            done=(settings.done_dir or parent / "done").resolve(),
            failed=(settings.failed_dir or parent / "failed").resolve(),
            outbox=(settings.outbox_dir or parent / "outbox").resolve(),
        )

    def create(self) -> None:
        """Make the folders (blocking; called before the event loop)."""
        for folder in (self.inbox, self.done, self.failed, self.outbox):
            folder.mkdir(parents=True, exist_ok=True)


def sha256_of(path: Path) -> tuple[str, int]:
    """The file's SHA-256 and the bytes read (blocking)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def new_claim_id(sha256: str) -> str:
    """A claim id: the content hash (what dedupe keys on) plus a short random part (one per claim)."""
    return f"{sha256}-{uuid.uuid4().hex[:8]}"


def free_place(folder: Path, relpath: str, claim_id: str) -> Path:
    """`folder/relpath`, or `stem.<claim>ext` beside it when that name is taken (blocking)."""
    place = folder / relpath
    if not place.exists() and not Path(f"{place}{ERROR_SUFFIX}").exists():
        return place
    pure = PurePosixPath(relpath)
    return folder / pure.with_name(f"{pure.stem}.{claim_id[:12]}{claim_id[-8:]}{pure.suffix}")


def move(source: Path, destination: Path) -> bool:
    """Rename `source` to `destination` (parents made); False when `source` is gone already (blocking)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        source.replace(destination)
    except FileNotFoundError:
        return False
    except OSError:  # another file system: copy then delete
        shutil.move(str(source), str(destination))
    return True


def _prune_empty(folder: Path, stop: Path) -> None:
    """Remove empty folders from `folder` up to (not including) `stop` (blocking)."""
    current = folder
    while current != stop and stop in current.parents:
        try:
            current.rmdir()
        except OSError:
            return
        current = current.parent


class Claimer:
    """Claims complete files (journal row, then rename) and hands the new claims on."""

    def __init__(self, store: IntakeStore, folders: DaemonFolders, settings: DaemonSettings) -> None:
        self._store = store
        self._folders = folders
        self._settings = settings

    async def claim(
        self, files: Sequence[CompleteFile], *, copy: bool = False
    ) -> tuple[list[IntakeFile], list[IntakeFile]]:
        """Claim `files`: returns (new claims, duplicates). A file that vanished meanwhile is skipped.

        `copy` (files submitted through the API, outside the inbox): the file is copied into the
        claimed folder and left where it is; a duplicate is then only counted.
        """
        hashed = await anyio.to_thread.run_sync(_hash_all, files)
        if not hashed:
            return [], []
        shas = [sha for _, sha, _ in hashed]
        known: dict[str, IntakeFile] = {}
        if self._settings.dedupe:
            known = await self._store.known_claims(shas)
        # A file's own claim whose rename failed is finished, not claimed again, with dedupe or without.
        own = {(item.source_path, item.sha256): item for item in await self._store.claimed_not_batched(shas)}
        complete_at = format_timestamp(now())
        new: list[IntakeFile] = []
        duplicates: list[IntakeFile] = []
        unfinished: list[IntakeFile] = []
        for item, sha, size in hashed:
            claim_id = new_claim_id(sha)
            original = known.get(sha)
            earlier = own.get((item.path, sha))
            if earlier is not None and not copy:
                unfinished.append(earlier)  # its row is written; only the rename is left: no new row
            elif original is None:
                claimed = self._folders.claimed / claim_id / item.relpath
                new.append(_intake_file(item, claim_id, sha, size, claimed, complete_at, "claimed"))
                if self._settings.dedupe:
                    known[sha] = new[-1]
            else:
                duplicates.append(
                    _intake_file(item, claim_id, sha, size, item.path, complete_at, "duplicate", original)
                )
        if duplicates and not copy:
            duplicates = await anyio.to_thread.run_sync(self._place_duplicates, duplicates)
        await self._store.record_claims(new, duplicates)
        if copy:
            await anyio.to_thread.run_sync(_copy_claimed, new)
            moved = new
        else:
            moved = await anyio.to_thread.run_sync(self._move_claimed, [*new, *unfinished], duplicates, files)
        for duplicate in duplicates:
            log.info("intake.duplicate", claim_id=duplicate.claim_id, original_batch_id=duplicate.batch_id)
        return moved, duplicates

    def _place_duplicates(self, duplicates: Sequence[IntakeFile]) -> list[IntakeFile]:
        placed = []
        for item in duplicates:
            place = (
                None
                if self._settings.delete_done
                else free_place(self._folders.done, item.relpath, item.claim_id)
            )
            placed.append(dataclasses.replace(item, final_path=place))
        return placed

    def _move_claimed(
        self, new: Sequence[IntakeFile], duplicates: Sequence[IntakeFile], files: Sequence[CompleteFile]
    ) -> list[IntakeFile]:
        """Rename claims into the claimed folder; returns those now there (blocking).

        A rename that fails leaves that file in the inbox with its row written: the next check
        finishes it (its own claim, found by content and path) and hands it on then, once.
        """
        moved = []
        for item in new:
            try:
                if move(item.source_path, item.claimed_path):
                    moved.append(item)
            except OSError as error:
                log.warning(
                    "intake.rename_failed", claim_id=item.claim_id, error=redact_text(str(error))[:300]
                )
        for item in duplicates:
            _finish_duplicate(item)
        for complete in files:
            if complete.marker is not None:
                with contextlib.suppress(FileNotFoundError):
                    complete.marker.unlink()
        return moved

    async def complete_interrupted(self) -> int:
        """Recovery: finish the renames and moves a crash left between a journal row and its file."""
        pending = await self._store.files_in_states(("claimed", "batched", "duplicate", "finishing"))
        finishing = [item for item in pending if item.state == "finishing"]

        def redo() -> int:
            moved = 0
            for item in pending:
                if item.state in ("claimed", "batched") and not item.claimed_path.exists():
                    moved += move(item.source_path, item.claimed_path)
                elif item.state == "duplicate" and item.source_path.exists():
                    moved += _finish_duplicate(item)
                elif item.state == "finishing" and item.claimed_path.exists():
                    _finish_one(item, self._folders)
                    moved += 1
            return moved

        moved = await anyio.to_thread.run_sync(redo)
        if finishing:
            await self._store.record_finished([item.claim_id for item in finishing])
        return moved

    async def finish(
        self, files: Sequence[IntakeFile], outcomes: Mapping[str, Mapping[str, Any] | None]
    ) -> None:
        """Move a finished batch's files: `outcomes[claim_id]` is None for success, else the error."""

        def plan() -> dict[str, tuple[Path | None, str, Mapping[str, Any] | None]]:
            places: dict[str, tuple[Path | None, str, Mapping[str, Any] | None]] = {}
            for item in files:
                if item.state not in ("claimed", "batched"):
                    continue
                error = outcomes.get(item.claim_id)
                if error is None:
                    place = (
                        None
                        if self._settings.delete_done
                        else free_place(self._folders.done, item.relpath, item.claim_id)
                    )
                    places[item.claim_id] = (place, "done", None)
                else:
                    places[item.claim_id] = (
                        free_place(self._folders.failed, item.relpath, item.claim_id),
                        "failed",
                        error,
                    )
            return places

        places = await anyio.to_thread.run_sync(plan)
        await self._store.record_finishing(places)
        finishing = [
            dataclasses.replace(item, final_path=places[item.claim_id][0], error=places[item.claim_id][2])
            for item in files
            if item.claim_id in places
        ]

        def move_all() -> None:
            for item in finishing:
                _finish_one(item, self._folders)

        await anyio.to_thread.run_sync(move_all)
        await self._store.record_finished(list(places))


def _copy_claimed(new: Sequence[IntakeFile]) -> None:
    for item in new:
        item.claimed_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.source_path, item.claimed_path)


def _hash_all(files: Sequence[CompleteFile]) -> list[tuple[CompleteFile, str, int]]:
    hashed = []
    for item in files:
        try:
            sha, size = sha256_of(item.path)
        except OSError:
            continue  # gone since its check: the next rescan says whether it is back
        hashed.append((item, sha, size))
    return hashed


def _intake_file(
    item: CompleteFile,
    claim_id: str,
    sha: str,
    size: int,
    claimed: Path,
    complete_at: str,
    state: str,
    original: IntakeFile | None = None,
) -> IntakeFile:
    return IntakeFile(
        claim_id=claim_id,
        sha256=sha,
        relpath=item.relpath,
        source_path=item.path,
        claimed_path=claimed,
        size_bytes=size,
        source=item.source,
        complete_at=complete_at,
        state=state,
        batch_id=original.batch_id if original is not None else None,
    )


def _finish_duplicate(item: IntakeFile) -> bool:
    if item.final_path is None:
        with contextlib.suppress(FileNotFoundError):
            item.source_path.unlink()
            return True
        return False
    return move(item.source_path, item.final_path)


def _finish_one(item: IntakeFile, folders: DaemonFolders) -> None:
    """Move one claimed file to its recorded final place (or delete it), with its error file (blocking)."""
    if item.error is not None and item.final_path is not None:
        report = {"path": item.relpath, "claim_id": item.claim_id, "batch_id": item.batch_id, **item.error}
        error_file = Path(f"{item.final_path}{ERROR_SUFFIX}")
        error_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(error_file, (json.dumps(report, ensure_ascii=False, indent=2) + "\n").encode())
    if item.final_path is None:
        with contextlib.suppress(FileNotFoundError):
            item.claimed_path.unlink()
    else:
        move(item.claimed_path, item.final_path)
    _prune_empty(item.claimed_path.parent, folders.claimed.parent)
