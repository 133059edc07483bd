"""Split inputs that change after discovery (issue 13, point 6): real Azurite, emulator and node.

A split input removed after discovery fails alone, with the reason its ranges had (every range reads
a blob that was never uploaded); one that grew is counted as uploaded, its last range reaching the
blob's end. The reference is the node's one-process count of the file as it is now.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from node.counting import count_file
from orchestrator.azure.clients import open_clients
from orchestrator.azure.staging import build_node_script
from orchestrator.inputs import discover_inputs
from orchestrator.journal import Journal
from orchestrator.run.pipeline import run_pipeline
from orchestrator.service.poolkeeper import PoolKeeper
from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.run_cli import SHARED_POOL_ID, project_wheel_cache
from tests.integration.orchestrator.test_pipeline_run import settings_for

pytestmark = pytest.mark.asyncio(loop_scope="session")


def words(count: int, word: str) -> str:
    return " ".join(f"{word}{number % 7}" for number in range(count)) + "\n"


async def test_a_split_input_removed_after_discovery_fails_alone_and_a_grown_one_counts_as_uploaded(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = batch_emulator
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha alpha beta\n", encoding="utf-8")
    (folder / "gone.txt").write_text(words(800, "gone"), encoding="utf-8")  # about 4,800 bytes: 5 ranges
    (folder / "grown.txt").write_text(words(800, "grow"), encoding="utf-8")
    settings = settings_for(
        batch, azurite, tmp_path / "state", TOPN_POOL_ID=SHARED_POOL_ID, TOPN_RUN_SPLIT_BYTES="1000"
    )
    inputs = discover_inputs([folder])
    (folder / "gone.txt").unlink()  # after discovery, before the upload
    with (folder / "grown.txt").open("a", encoding="utf-8") as grown:
        grown.write(words(300, "late"))  # past the last nominal range's end
    # The real node's bundle, as topn stages it outside local mode (wheels from the checkout's cache).
    node_script = await anyio.to_thread.run_sync(build_node_script, project_wheel_cache())
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        journal = await Journal.open(tmp_path / "state" / "journal.sqlite3")
        stack.push_async_callback(journal.close)
        summary = await run_pipeline(
            settings,
            inputs,
            clients,
            tmp_path / "out",
            journal=journal,
            pool=PoolKeeper(settings, clients, node_script),
            max_files_per_task=3,
        )
        record = await journal.load_run(summary["run_id"])
    assert record is not None
    files = {entry["path"]: entry for entry in summary["files"]}
    assert summary["state"] == "FAILED"  # one file failed; the run itself finished
    assert files["a.txt"]["status"] == "succeeded" and files["a.txt"]["words"] == 3
    # Each split input was counted by its own range units (journalled), 5 each.
    ranges_of = {record.inputs[part.index].relpath for part in record.ranges.values()}
    assert ranges_of == {"gone.txt", "grown.txt"} and len(record.ranges) == 10
    assert files["gone.txt"]["status"] == "failed"
    assert "was removed after the run started" in files["gone.txt"]["error"]["message"]
    assert files["gone.txt"]["task_id"] in record.ranges
    reference = count_file(folder / "grown.txt", "words")
    assert files["grown.txt"]["status"] == "succeeded"
    assert files["grown.txt"]["words"] == reference.words == 1100
    assert files["grown.txt"]["top"] == [[word, count] for word, count in reference.top(10)]
    # The bytes written after discovery were counted (late0 occurs 43 times, all past the plan's end).
    assert "late0:\t43\n" in (tmp_path / "out" / "grown_OUTPUT.txt").read_text(encoding="utf-8")
