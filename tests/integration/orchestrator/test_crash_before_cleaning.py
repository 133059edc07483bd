"""A kill at the moment CLEANING is journalled leaves a resumable run (issue 10, point 13).

summary.json must be on disk before the journal says CLEANING: a resume from CLEANING only reads
it back. The test takes what a `kill -9` at that exact moment would leave - the journal (an SQLite
backup, i.e. every committed record) and the results folder - right after CLEANING is committed,
lets the run finish, puts that snapshot back and resumes from it. Real Azurite and emulator.
"""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.azure.clients import open_clients
from orchestrator.inputs import discover_inputs
from orchestrator.journal import Journal
from orchestrator.run.pipeline import run_pipeline
from orchestrator.service.poolkeeper import PoolKeeper
from tests.conftest import StartEmulator, StorageEndpoint
from tests.integration.orchestrator.test_pipeline_run import settings_for, stand_in_node

pytestmark = pytest.mark.asyncio(loop_scope="session")

TEXTS = {"a.txt": "one two two", "b.txt": "three three three"}


def _backup(source: Path, target: Path) -> None:
    with sqlite3.connect(source) as reading, sqlite3.connect(target) as writing:
        reading.backup(writing)
    writing.close()
    reading.close()


async def _pipeline(tmp_path: Path, settings: Any, journal: Journal, resume: Any = None) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        return await run_pipeline(
            settings,
            discover_inputs([tmp_path / "in"]),
            clients,
            tmp_path / "out",
            journal=journal,
            pool=PoolKeeper(settings, clients, stand_in_node()),
            resume=resume,
        )


async def test_a_kill_just_after_cleaning_is_journalled_leaves_a_resumable_run(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    (tmp_path / "in").mkdir()
    for name, text in TEXTS.items():
        (tmp_path / "in" / name).write_text(text, encoding="utf-8")
    settings = settings_for(batch, azurite, tmp_path / "state", TOPN_POOL_ID="crash-at-cleaning")
    journal_file = tmp_path / "state" / "journal.sqlite3"
    crash = tmp_path / "at-cleaning"
    async with await Journal.open(journal_file) as journal:
        record_state = journal.record_state

        async def record_then_snapshot(run_id: str, state: str) -> None:
            await record_state(run_id, state)
            # What kill -9 right now would leave (async file calls: this runs inside the run's loop).
            if state == "CLEANING" and not await anyio.Path(crash).exists():
                await anyio.Path(crash).mkdir()
                await anyio.to_thread.run_sync(_backup, journal_file, crash / "journal.sqlite3")
                await anyio.to_thread.run_sync(shutil.copytree, tmp_path / "out", crash / "out")

        journal.record_state = record_then_snapshot  # type: ignore[method-assign]
        first = await _pipeline(tmp_path, settings, journal)
    assert first["state"] == "SUCCEEDED" and crash.exists()

    # The process "died" at CLEANING: its journal and results folder are what the snapshot holds.
    shutil.rmtree(tmp_path / "out")
    shutil.copytree(crash / "out", tmp_path / "out")
    for leftover in (tmp_path / "state").glob("journal.sqlite3*"):
        leftover.unlink()
    shutil.copy(crash / "journal.sqlite3", journal_file)
    async with await Journal.open(journal_file) as journal:
        record = await journal.load_run(first["run_id"])
        assert record is not None and record.state == "CLEANING"
        resumed = await _pipeline(tmp_path, settings, journal, resume=record)
        final = await journal.load_run(first["run_id"])
    assert resumed == first  # the summary written before CLEANING, read back whole
    assert final is not None and final.state == "SUCCEEDED"
