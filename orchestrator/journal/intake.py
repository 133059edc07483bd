"""The daemon's intake in the journal file: claimed files (keyed by content) and the batches they form.

Tables `intake_files` and `intake_batches` (schema version 5). The store has its own connection to
the same SQLite file as `Journal` (WAL lets both work; the busy timeout orders their writes), so
intake never waits behind a run's journal writes in Python. Every method is one transaction.

A file's states: `claimed` (row written, then renamed into the inbox's `.claimed/` folder) →
`batched` (it belongs to a batch, whose id is its run id) → `finishing` (its final place chosen)
→ `done` | `failed`; or `duplicate` (content already claimed: counted, not run again).
A batch's states: `queued` (in the journal, not in Batch) → `admitted` (its job exists) →
`finished`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio

from orchestrator.journal.schema import (
    JournalError,
    connect,
    format_timestamp,
    now,
    parse_timestamp,
    read_transaction,
    write_transaction,
)

T = TypeVar("T")

FILE_STATES: Final = ("claimed", "batched", "finishing", "done", "failed", "duplicate")
BATCH_STATES: Final = ("queued", "admitted", "finished")
UNFINISHED_FILE_STATES: Final = ("claimed", "batched", "finishing")


@dataclass(frozen=True)
class IntakeFile:
    """One claimed file as the journal holds it."""

    claim_id: str
    sha256: str
    relpath: str  # relative to the inbox, POSIX; kept in done/, failed/ and the outbox
    source_path: Path
    claimed_path: Path
    size_bytes: int
    source: str  # watch | rescan | api
    complete_at: str  # RFC 3339, when it was found complete
    state: str
    batch_id: str | None = None
    final_path: Path | None = None
    error: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class IntakeBatch:
    batch_id: str
    state: str
    files: int
    bytes: int
    created_at: str
    outcome: str | None


def _claims_by_sha(
    connection: sqlite3.Connection, sha256s: Sequence[str], state_condition: str
) -> dict[str, list[IntakeFile]]:
    """Rows of each content hash (through its index) meeting a constant state condition, oldest first."""
    found: dict[str, list[IntakeFile]] = {}
    for sha in set(sha256s):
        rows = connection.execute(
            f"SELECT {_FILE_COLUMNS} FROM intake_files WHERE sha256 = ?"  # noqa: S608 - constant columns, condition and placeholders
            f" AND {state_condition} ORDER BY rowid",
            (sha,),
        ).fetchall()
        if rows:
            found[sha] = [_file_of(row) for row in rows]
    return found


def _file_of(row: sqlite3.Row | tuple[Any, ...]) -> IntakeFile:
    (claim_id, sha, relpath, source_path, claimed_path, size, source, complete_at, state, batch_id,
     final_path, error_json) = tuple(row)  # fmt: skip
    return IntakeFile(
        claim_id=claim_id,
        sha256=sha,
        relpath=relpath,
        source_path=Path(source_path),
        claimed_path=Path(claimed_path),
        size_bytes=int(size),
        source=source,
        complete_at=complete_at,
        state=state,
        batch_id=batch_id,
        final_path=Path(final_path) if final_path else None,
        error=json.loads(error_json) if error_json else None,
    )


_FILE_COLUMNS = (
    "claim_id, sha256, relpath, source_path, claimed_path, size_bytes, source, complete_at, state,"
    " batch_id, final_path, error_json"
)


class IntakeStore:
    """Claims and batches, durable before the daemon acts on them."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = connection
        self._limiter = anyio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: Path) -> IntakeStore:
        path, connection = await anyio.to_thread.run_sync(connect, Path(path))
        return cls(path, connection)

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            async with self._limiter:
                connection, self._connection = self._connection, None
                if connection is not None:
                    await anyio.to_thread.run_sync(connection.close)

    # ----------------------------------------------------------------- writes

    async def record_claims(self, files: Sequence[IntakeFile], duplicates: Sequence[IntakeFile]) -> None:
        """New claims and duplicates, in one transaction (a claim id seen before is left as it is)."""
        at = format_timestamp(now())
        rows = [_row(item, at) for item in [*files, *duplicates]]

        def write(connection: sqlite3.Connection) -> None:
            connection.executemany(
                f"INSERT OR IGNORE INTO intake_files ({_FILE_COLUMNS}, at)"  # noqa: S608 - constant columns and placeholders
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        await self._write(write)

    async def create_batch(self, batch_id: str, claim_ids: Sequence[str], total_bytes: int) -> None:
        """A new queued batch and its files, in one transaction."""
        at = format_timestamp(now())

        def write(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO intake_batches (batch_id, state, files, bytes, created_at, outcome, at)"
                " VALUES (?, 'queued', ?, ?, ?, NULL, ?)",
                (batch_id, len(claim_ids), total_bytes, at, at),
            )
            changed = connection.executemany(
                "UPDATE intake_files SET state = 'batched', batch_id = ?, at = ?"
                " WHERE claim_id = ? AND state = 'claimed'",
                [(batch_id, at, claim_id) for claim_id in claim_ids],
            ).rowcount
            if changed != len(claim_ids):
                raise JournalError(
                    f"batch {batch_id}: {len(claim_ids) - changed} of its files are not claimed"
                )

        await self._write(write)

    async def set_batch_state(self, batch_id: str, state: str, outcome: str | None = None) -> None:
        if state not in BATCH_STATES:
            raise JournalError(f"unknown batch state {state!r}")
        at = format_timestamp(now())

        def write(connection: sqlite3.Connection) -> None:
            connection.execute(
                "UPDATE intake_batches SET state = ?, outcome = COALESCE(?, outcome), at = ?"
                " WHERE batch_id = ?",
                (state, outcome, at, batch_id),
            )

        await self._write(write)

    async def record_finishing(
        self, places: Mapping[str, tuple[Path | None, str, Mapping[str, Any] | None]]
    ) -> None:
        """Each file's final place (None: deleted) and outcome (`done`/`failed`), chosen before it moves."""
        at = format_timestamp(now())
        rows = [
            (
                str(path) if path is not None else None,
                outcome,
                json.dumps(error) if error is not None else None,
                at,
                claim_id,
            )
            for claim_id, (path, outcome, error) in places.items()
        ]

        def write(connection: sqlite3.Connection) -> None:
            connection.executemany(
                "UPDATE intake_files SET state = 'finishing', final_path = ?, outcome = ?, error_json = ?,"
                " at = ? WHERE claim_id = ? AND state IN ('claimed', 'batched', 'finishing')",
                rows,
            )

        await self._write(write)

    async def record_finished(self, claim_ids: Sequence[str]) -> None:
        """Files now at their final place: `finishing` becomes the outcome chosen with the place."""
        at = format_timestamp(now())

        def write(connection: sqlite3.Connection) -> None:
            connection.executemany(
                "UPDATE intake_files SET state = outcome, at = ? WHERE claim_id = ? AND state = 'finishing'",
                [(at, claim_id) for claim_id in claim_ids],
            )

        await self._write(write)

    # ----------------------------------------------------------------- reads

    async def known_claims(self, sha256s: Sequence[str]) -> dict[str, IntakeFile]:
        """The first claim of each content hash given that is neither a duplicate nor failed, if any.

        A failed claim does not make its content a duplicate (docs/daemon.md): sent again, it runs again.
        """

        def read(connection: sqlite3.Connection) -> dict[str, IntakeFile]:
            found = _claims_by_sha(connection, sha256s, "state NOT IN ('duplicate', 'failed')")
            return {sha: claims[0] for sha, claims in found.items()}

        return await self._read(read)

    async def claimed_not_batched(self, sha256s: Sequence[str]) -> list[IntakeFile]:
        """Claims of these content hashes still in state `claimed` (their rename may have failed)."""

        def read(connection: sqlite3.Connection) -> list[IntakeFile]:
            found = _claims_by_sha(connection, sha256s, "state = 'claimed'")
            return [claim for claims in found.values() for claim in claims]

        return await self._read(read)

    async def files_in_states(self, states: Sequence[str]) -> list[IntakeFile]:
        marks = ", ".join("?" for _ in states)

        def read(connection: sqlite3.Connection) -> list[IntakeFile]:
            rows = connection.execute(
                f"SELECT {_FILE_COLUMNS} FROM intake_files WHERE state IN ({marks}) ORDER BY rowid",  # noqa: S608 - constant columns and placeholders
                tuple(states),
            ).fetchall()
            return [_file_of(row) for row in rows]

        return await self._read(read)

    async def batch_files(self, batch_id: str) -> list[IntakeFile]:
        def read(connection: sqlite3.Connection) -> list[IntakeFile]:
            rows = connection.execute(
                f"SELECT {_FILE_COLUMNS} FROM intake_files WHERE batch_id = ? ORDER BY rowid",  # noqa: S608
                (batch_id,),
            ).fetchall()
            return [_file_of(row) for row in rows]

        return await self._read(read)

    async def batches(
        self, states: Sequence[str] = BATCH_STATES, limit: int | None = None
    ) -> list[IntakeBatch]:
        """Batches in the given states, newest first."""
        marks = ", ".join("?" for _ in states)
        limit_sql = f" LIMIT {int(limit)}" if limit is not None else ""

        def read(connection: sqlite3.Connection) -> list[IntakeBatch]:
            rows = connection.execute(
                "SELECT batch_id, state, files, bytes, created_at, outcome FROM intake_batches"  # noqa: S608 - constant columns and placeholders
                f" WHERE state IN ({marks}) ORDER BY batch_id DESC{limit_sql}",
                tuple(states),
            ).fetchall()
            return [IntakeBatch(*row) for row in rows]

        return await self._read(read)

    async def batch(self, batch_id: str) -> IntakeBatch | None:
        def read(connection: sqlite3.Connection) -> IntakeBatch | None:
            row = connection.execute(
                "SELECT batch_id, state, files, bytes, created_at, outcome FROM intake_batches"
                " WHERE batch_id = ?",
                (batch_id,),
            ).fetchone()
            return IntakeBatch(*row) if row is not None else None

        return await self._read(read)

    # ----------------------------------------------------------------- plumbing

    def _use(self) -> sqlite3.Connection:
        if self._connection is None:
            raise JournalError(f"the journal {self.path} is closed")
        return self._connection

    async def _write(self, work: Callable[[sqlite3.Connection], None]) -> None:
        def transaction() -> None:
            write_transaction(self._use(), work, self.path)

        await anyio.to_thread.run_sync(transaction, limiter=self._limiter)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def transaction() -> T:
            return read_transaction(self._use(), work, self.path)

        return await anyio.to_thread.run_sync(transaction, limiter=self._limiter)


def _row(item: IntakeFile, at: str) -> tuple[Any, ...]:
    return (
        item.claim_id,
        item.sha256,
        item.relpath,
        str(item.source_path),
        str(item.claimed_path),
        item.size_bytes,
        item.source,
        item.complete_at,
        item.state,
        item.batch_id,
        str(item.final_path) if item.final_path is not None else None,
        json.dumps(item.error) if item.error is not None else None,
        at,
    )


def age_s(timestamp: str) -> float:
    """Seconds since a moment the journal wrote."""
    return (now() - parse_timestamp(timestamp)).total_seconds()
