"""A results folder that cannot be written stops the run as interrupted; `resume` then finishes it.

Disk full is injected at the write itself (`ENOSPC` from `results.write_atomic`, the one function
every result and summary.json goes through), so the test runs the same on every platform; a removed
results folder is the real thing. Azurite and the emulator are real; the node is the stand-in.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from orchestrator import naming, results
from orchestrator.azure.clients import open_clients
from orchestrator.console import render_run
from orchestrator.errors import LocalWriteError
from orchestrator.inputs import discover_inputs
from orchestrator.journal import Journal
from orchestrator.run.pipeline import run_pipeline
from orchestrator.service.poolkeeper import PoolKeeper
from orchestrator.service.status import describe_run
from tests.conftest import StartEmulator, StorageEndpoint
from tests.integration.orchestrator.test_pipeline_run import settings_for, stand_in_node

pytestmark = pytest.mark.asyncio(loop_scope="session")

TEXTS = {"a.txt": "one two two", "b.txt": "three three three", "c/d.txt": "four"}


class FullDisk:
    """`results.write_atomic` that fails with ENOSPC for the chosen files while `full` is set."""

    def __init__(self, matches: str) -> None:
        self.matches = matches
        self.full = True
        self.refused: list[Path] = []
        self._real = results.write_atomic

    def __call__(self, path: Path, data: bytes, **options: Any) -> None:
        if self.full and self.matches in path.name:
            self.refused.append(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        self._real(path, data, **options)


async def _run(tmp_path: Path, settings: Any, resume_id: str | None) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        journal = await Journal.open(tmp_path / "state" / "journal.sqlite3")
        stack.push_async_callback(journal.close)
        record = await journal.load_run(resume_id) if resume_id is not None else None
        return await run_pipeline(
            settings,
            discover_inputs([tmp_path / "in"]),
            clients,
            tmp_path / "out",
            journal=journal,
            pool=PoolKeeper(settings, clients, stand_in_node()),
            max_files_per_task=1,
            resume=record,
        )


async def _only_run(tmp_path: Path) -> Any:
    async with await Journal.open(tmp_path / "state" / "journal.sqlite3") as journal:
        runs = await journal.list_runs()
        assert len(runs) == 1
        return await journal.load_run(runs[0].run_id)


def _write_inputs(tmp_path: Path) -> None:
    for relpath, text in TEXTS.items():
        (tmp_path / "in" / relpath).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / relpath).write_text(text, encoding="utf-8")


def _assert_complete(summary: dict[str, Any], out_dir: Path) -> None:
    assert summary["state"] == "SUCCEEDED"
    assert {entry["path"]: entry["words"] for entry in summary["files"]} == {
        relpath: len(text.split()) for relpath, text in TEXTS.items()
    }
    for relpath in TEXTS:
        assert (out_dir / naming.output_name(relpath)).is_file()
    assert (out_dir / "summary.json").is_file()


@pytest.mark.parametrize("full_at", ["_OUTPUT", "summary.json"])
async def test_a_full_disk_interrupts_the_run_and_resume_finishes_it(
    start_emulator: StartEmulator,
    azurite: StorageEndpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    full_at: str,
) -> None:
    batch = await start_emulator()
    _write_inputs(tmp_path)
    settings = settings_for(batch, azurite, tmp_path / "state", TOPN_POOL_ID=f"full-disk-{full_at[-4:]}")
    disk = FullDisk(full_at)
    monkeypatch.setattr(results, "write_atomic", disk)

    with capture_logs() as logs, pytest.raises(LocalWriteError) as stopped:
        await _run(tmp_path, settings, None)
    assert disk.refused
    message = str(stopped.value)
    assert str(tmp_path / "out") in message and "No space left on device (ENOSPC)" in message
    assert "free some space" in message and "topn resume" in message
    assert stopped.value.exit_code == 1
    record = await _only_run(tmp_path)
    assert not record.is_finished and record.state in ("RUNNING", "COLLECTING")  # interrupted, not FAILED
    failed = [entry for entry in logs if entry["event"] == "run.failed"]
    assert len(failed) == 1 and failed[0]["resumable"] is True
    # The journal keeps why it stopped; `topn status RUN_ID` shows it and the next step (point 10).
    shown = render_run(describe_run(record))
    assert "LocalWriteError" in shown and "No space left on device" in shown
    assert f"Next: once the cause is fixed: topn resume {record.run_id}" in shown

    disk.full = False  # space freed
    summary = await _run(tmp_path, settings, record.run_id)
    _assert_complete(summary, tmp_path / "out")
    finished = await _only_run(tmp_path)
    assert finished.state == "SUCCEEDED" and describe_run(finished)["last_error"] is None


async def test_a_results_folder_removed_during_the_run_is_not_silently_made_again(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = await start_emulator()
    _write_inputs(tmp_path)
    settings = settings_for(batch, azurite, tmp_path / "state", TOPN_POOL_ID="vanished-out")
    real_write = results.write_atomic
    removed: list[Path] = []

    def remove_after_first_result(path: Path, data: bytes, **options: Any) -> None:
        real_write(path, data, **options)
        if "_OUTPUT" in path.name and not removed:  # the user removes the folder after one result
            removed.append(path)
            # Moved away in one step, then deleted: another output being written into the folder at
            # this moment would make a plain rmtree fail (ENOTEMPTY) in place of topn's write.
            moved = (tmp_path / "out").rename(tmp_path / "out-removed")
            shutil.rmtree(moved, ignore_errors=True)

    monkeypatch.setattr(results, "write_atomic", remove_after_first_result)
    with pytest.raises(LocalWriteError) as stopped:
        await _run(tmp_path, settings, None)
    assert str(tmp_path / "out") in str(stopped.value) and "moved or deleted" in str(stopped.value)
    assert not (tmp_path / "out").exists()
    record = await _only_run(tmp_path)
    assert not record.is_finished

    monkeypatch.setattr(results, "write_atomic", real_write)
    summary = await _run(tmp_path, settings, record.run_id)
    _assert_complete(summary, tmp_path / "out")  # the removed result was fetched again
