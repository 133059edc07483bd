"""A resume with every work unit finished makes no job: it only collects and cleans up.

The run is "killed" at the moment COLLECTING is journalled (every task's outcome recorded): the
test takes an SQLite backup of the journal and a copy of the results folder right then, as
test_crash_before_cleaning does, lets the run finish, and puts the snapshot back. Meanwhile the
run's job is deleted (by a janitor or a user; jobs are kept here, `delete_job = false`). The
resume must not create the job again (it would hold no task and, with `noaction`, never end) nor
an empty successor: no `create_job`, no pool request, no job of the run left in Batch, and the
same summary as the uninterrupted run. Real Azurite and emulator.
"""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceNotFoundError

from orchestrator.azure.clients import open_clients
from orchestrator.inputs import discover_inputs
from orchestrator.journal import Journal
from orchestrator.run.pipeline import run_pipeline
from orchestrator.service.poolkeeper import PoolKeeper
from tests.conftest import StartEmulator, StorageEndpoint
from tests.e2e.test_crash_resume import comparable
from tests.integration.orchestrator.test_pipeline_run import settings_for, stand_in_node

pytestmark = pytest.mark.asyncio(loop_scope="session")

TEXTS = {"a.txt": "one two two", "b.txt": "three three three", "c.txt": "four"}


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


async def test_a_resume_with_every_unit_finished_creates_no_job_and_collects(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    (tmp_path / "in").mkdir()
    for name, text in TEXTS.items():
        (tmp_path / "in" / name).write_text(text, encoding="utf-8")
    settings = settings_for(
        batch,
        azurite,
        tmp_path / "state",
        TOPN_POOL_ID="nothing-to-run",
        TOPN_RUN_DELETE_JOB="false",
        TOPN_RUN_MAX_FILES_PER_TASK="1",
    )
    journal_file = tmp_path / "state" / "journal.sqlite3"
    crash = tmp_path / "at-collecting"
    async with await Journal.open(journal_file) as journal:
        record_state = journal.record_state

        async def record_then_snapshot(run_id: str, state: str) -> None:
            await record_state(run_id, state)
            if state == "COLLECTING" and not await anyio.Path(crash).exists():
                await anyio.Path(crash).mkdir()
                await anyio.to_thread.run_sync(_backup, journal_file, crash / "journal.sqlite3")
                await anyio.to_thread.run_sync(shutil.copytree, tmp_path / "out", crash / "out")

        journal.record_state = record_then_snapshot  # type: ignore[method-assign]
        first = await _pipeline(tmp_path, settings, journal)
    assert first["state"] == "SUCCEEDED" and crash.exists()
    run_id = first["run_id"]

    credential = AzureNamedKeyCredential(batch.account_name, batch.account_key)
    async with BatchClient(batch.endpoint, credential) as client:
        await client.begin_delete_job(f"topn-{run_id}")
        with anyio.fail_after(60):
            while True:
                try:
                    await client.get_job(f"topn-{run_id}")
                except ResourceNotFoundError:
                    break
                await anyio.sleep(0.1)

        shutil.rmtree(tmp_path / "out")
        shutil.copytree(crash / "out", tmp_path / "out")
        for leftover in (tmp_path / "state").glob("journal.sqlite3*"):
            leftover.unlink()
        shutil.copy(crash / "journal.sqlite3", journal_file)
        async with await Journal.open(journal_file) as journal:
            record = await journal.load_run(run_id)
            assert record is not None and record.state == "COLLECTING"
            assert set(record.completed) == set(record.task_ids)  # every unit has its outcome
            resumed = await _pipeline(tmp_path, settings, journal, resume=record)
            final = await journal.load_run(run_id)
        jobs = [str(job.id) async for job in client.list_jobs() if str(job.id).startswith(f"topn-{run_id}")]
    assert jobs == []  # neither the first job again nor an empty successor
    requests = resumed["totals"]["requests"]["batch"]
    assert not {"create_job", "update_job", "create_pool", "get_pool"} & set(requests), requests
    assert comparable(resumed) == comparable(first)
    assert final is not None and final.state == "SUCCEEDED" and final.job_number == 1
    for name in TEXTS:
        assert (tmp_path / "out" / name.replace(".txt", "_OUTPUT.txt")).is_file()
