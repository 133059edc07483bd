"""An input that vanishes or becomes unreadable after discovery fails alone: its task runs the other
files, its summary row says why, and the run finishes (issue 10, point 5). Real Azurite and emulator;
the stand-in node."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from orchestrator.azure.clients import open_clients
from orchestrator.inputs import discover_inputs
from orchestrator.journal import Journal
from orchestrator.run.pipeline import run_pipeline
from orchestrator.service.poolkeeper import PoolKeeper
from tests.conftest import StartEmulator, StorageEndpoint
from tests.integration.orchestrator.test_pipeline_run import settings_for, stand_in_node

pytestmark = pytest.mark.asyncio(loop_scope="session")

TEXTS = {
    "a.txt": "alpha alpha beta",
    "b.txt": "gone gone gone gone",
    "c.txt": "gamma beta",
    "d.txt": "soon a folder",
}


async def test_an_input_removed_or_unreadable_after_discovery_fails_alone_and_grown_one_counts_as_uploaded(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    for relpath, text in TEXTS.items():
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / relpath).write_text(text, encoding="utf-8")
    settings = settings_for(batch, azurite, tmp_path / "state", TOPN_POOL_ID="vanishing-inputs")
    inputs = discover_inputs([tmp_path / "in"])
    (tmp_path / "in" / "b.txt").unlink()  # after discovery, before the upload
    (tmp_path / "in" / "c.txt").write_text(TEXTS["c.txt"] + " delta", encoding="utf-8")  # grew
    (tmp_path / "in" / "d.txt").unlink()  # becomes unreadable: a folder now stands at its path
    (tmp_path / "in" / "d.txt").mkdir()
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        journal = await Journal.open(tmp_path / "state" / "journal.sqlite3")
        stack.push_async_callback(journal.close)
        with capture_logs() as logs:
            summary = await run_pipeline(
                settings,
                inputs,
                clients,
                tmp_path / "out",
                journal=journal,
                pool=PoolKeeper(settings, clients, stand_in_node()),
                max_files_per_task=4,  # one task holds all four
            )
    files = {entry["path"]: entry for entry in summary["files"]}
    assert summary["state"] == "FAILED"  # one file failed; the run itself finished
    assert files["a.txt"]["status"] == "succeeded" and files["a.txt"]["words"] == 3
    assert files["c.txt"]["status"] == "succeeded" and files["c.txt"]["words"] == 3
    assert files["b.txt"]["status"] == "failed"
    assert "was removed after the run started" in files["b.txt"]["error"]["message"]
    assert str(tmp_path / "in" / "b.txt") in files["b.txt"]["error"]["message"]
    assert files["d.txt"]["status"] == "failed"
    assert (
        f"cannot read input {tmp_path / 'in' / 'd.txt'}: Is a directory" in files["d.txt"]["error"]["message"]
    )
    assert summary["totals"]["bytes"] == len(TEXTS["a.txt"]) + len(TEXTS["c.txt"] + " delta")
    changed = [entry for entry in logs if entry["event"] == "input.changed"]
    assert [entry["file"] for entry in changed] == ["c.txt"]
    assert sorted(entry["file"] for entry in logs if entry["event"] == "input.unreadable") == [
        "b.txt",
        "d.txt",
    ]
