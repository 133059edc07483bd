"""How values become journal rows: JSON snapshots, checked input rows, idempotent keyed upserts."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import Enum
from pathlib import PurePath
from typing import Any

from orchestrator.journal.records import JournalInput

_STATE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")


def is_md5_hex(text: str) -> bool:
    """True for an MD5 digest written as 32 hex digits (either case)."""
    return _MD5_HEX.fullmatch(text) is not None


def jsonable(value: Any) -> Any:
    """Plain JSON data for a snapshot or an outcome: mappings, sequences, scalars; paths as text."""
    if isinstance(value, Enum):
        return jsonable(value.value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable({field.name: getattr(value, field.name) for field in dataclasses.fields(value)})
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    # Anything else (an SDK object, a credential) is recorded by type only: its text may hold secrets.
    return f"<{type(value).__name__}>"


def state_name(state: str) -> str:
    name = state.value if isinstance(state, Enum) else state
    if not isinstance(name, str) or not _STATE_NAME.fullmatch(name):
        raise ValueError(f"invalid run state {state!r}: expected a name such as 'RUNNING'")
    return name


def _check_input(item: JournalInput, run_id: str) -> None:
    problems = []
    if not item.relpath:
        problems.append("empty relpath")
    if not item.blob_name:
        problems.append("empty blob_name")
    if not item.task_id:
        problems.append("empty task_id")
    if item.size_bytes < 0:
        problems.append(f"negative size_bytes {item.size_bytes}")
    if item.md5_hex is not None and not is_md5_hex(item.md5_hex):
        problems.append(f"md5_hex {item.md5_hex!r} is not 32 hex digits")
    if problems:
        raise ValueError(f"run {run_id}: input {item.index} ({item.relpath!r}): {', '.join(problems)}")


def upsert(
    connection: sqlite3.Connection, table: str, key: Mapping[str, str], at: str, **values: object
) -> None:
    """Insert a keyed row, or update the stored one when a value differs; an unchanged row keeps its `at`.

    This is what makes every keyed record idempotent: the latest value wins, and recording the same
    value again changes nothing (not even when it was recorded).
    """
    columns = [*key, *values, "at"]
    changed = [f"{column} IS NOT excluded.{column}" for column in values]
    updates = [f"{column} = excluded.{column}" for column in [*values, "at"]]
    # Table and column names are this module's literals; every value is a bound parameter.
    statement = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"  # noqa: S608
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {', '.join(updates)} WHERE {' OR '.join(changed)}"
    )
    connection.execute(statement, (*key.values(), *values.values(), at))


def input_rows(run_id: str, inputs: Sequence[JournalInput]) -> list[tuple[Any, ...]]:
    """The `inputs` table rows of a run, after checking every input and their uniqueness."""
    for item in inputs:
        _check_input(item, run_id)
    rows = [
        (
            run_id,
            item.index,
            item.relpath,
            item.path,
            item.size_bytes,
            item.mtime_ns,
            None if item.md5_hex is None else item.md5_hex.lower(),
            item.blob_name,
            item.task_id,
            item.etag,
        )
        for item in inputs
    ]
    _check_unique(run_id, "index", [row[1] for row in rows])
    _check_unique(run_id, "relpath", [row[2] for row in rows])
    _check_unique(run_id, "blob_name", [row[7] for row in rows])
    return rows


def _check_unique(run_id: str, what: str, values: Sequence[object]) -> None:
    seen: set[object] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"run {run_id}: two inputs share the {what} {value!r}")
        seen.add(value)
