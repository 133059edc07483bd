"""A file larger than `[run] split_bytes` is counted by 8 tasks over byte ranges and merged exactly.

The reference is the node's one-process count of the whole file (`node.counting.count_file`), not
the merge under test; the file has a BOM, undecodable bytes and, at every range boundary, a word
whose multi-byte UTF-8 character straddles it. The emulator's task records (through the Batch API)
show the ranges ran as separate tasks, on both nodes of the pool.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from azure.storage.blob import BlobServiceClient

from node.counting import count_file
from node.report import output_text
from orchestrator import naming
from orchestrator.journal import JOURNAL_FILENAME, Journal
from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.fault_support import job_tasks, run_topn_live
from tests.e2e.run_cli import topn_environment
from tests.task_units import task_manifest

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

SPLIT_BYTES = 4096
RANGES = 8
BOM = b"\xef\xbb\xbf"
VOCABULARY = ["the", "cat", "Hat", "naïve", "café", "日本", "word", "Œuvre", "end.", "a-b", "x_y", "ÉTÉ"]


def filler(chooser: random.Random, size: int) -> bytes:
    """Exactly `size` bytes of words and separators (valid UTF-8, ends with a space)."""
    out = bytearray()
    while True:
        word = chooser.choice(VOCABULARY).encode("utf-8") + chooser.choice([b" ", b"\n", b"  ", b"\t"])
        if len(out) + len(word) > size:
            break
        out += word
    return bytes(out) + b" " * (size - len(out))


def split_corpus() -> bytes:
    """8 × SPLIT_BYTES bytes: a BOM, undecodable bytes, and a multi-byte character across each boundary."""
    chooser = random.Random(20261206)
    data = bytearray(BOM + b"bom-first word \xff\xfe caf\xe9 ok \xc3 ")
    for boundary in range(SPLIT_BYTES, RANGES * SPLIT_BYTES, SPLIT_BYTES):
        # "語" (3 bytes) starts one byte before the nominal boundary, inside a longer word.
        straddling = "x日本語y".encode()
        data += filler(chooser, boundary - len(data) - len("x日本".encode()) - 2)
        data += b" " + straddling
        if boundary % (2 * SPLIT_BYTES) == 0:
            data += b"\xe6\x97 "  # a truncated sequence just after the boundary
    data += filler(chooser, RANGES * SPLIT_BYTES - len(data))
    assert len(data) == RANGES * SPLIT_BYTES
    return bytes(data)


def output_blobs(storage: StorageEndpoint, run_id: str) -> dict[str, bytes]:
    """The `_OUTPUT` blobs of the run's output container, by name."""
    with BlobServiceClient.from_connection_string(storage.connection_string) as service:
        container = service.get_container_client(naming.output_container("topn", run_id))
        return {
            blob.name: container.download_blob(blob.name).readall()
            for blob in container.list_blobs()
            if not blob.name.startswith("results/")
        }


def overlapping(spans: list[tuple[Any, Any, str]]) -> bool:
    """Whether two of the (start, end, node) spans on different nodes overlap in time."""
    return any(
        a_start < b_end and b_start < a_end and a_node != b_node
        for position, (a_start, a_end, a_node) in enumerate(spans)
        for b_start, b_end, b_node in spans[position + 1 :]
    )


@pytest.mark.parametrize("tokenizer", ["words", "tutorial"])
async def test_a_file_split_into_8_ranges_gives_the_one_process_output_and_summary_entry(
    tokenizer: str, batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    big = tmp_path / "in" / "big.txt"
    big.parent.mkdir(parents=True)
    big.write_bytes(split_corpus())
    (tmp_path / "in" / "small.txt").write_bytes(b"small file small words\n")
    pool_id = f"e2e-split-{tokenizer}"
    env = topn_environment(
        batch_emulator,
        azurite,
        tmp_path / ".topn",
        TOPN_POOL_ID=pool_id,
        TOPN_POOL_DEDICATED_NODES="2",
        TOPN_POOL_TASK_SLOTS_PER_NODE="2",
        TOPN_RUN_TOKENIZER=tokenizer,
        TOPN_RUN_SPLIT_BYTES=str(SPLIT_BYTES),
        TOPN_RUN_DELETE_JOB="false",
    )
    run = await run_topn_live(["run", "in", "--out", "out", "--json"], tmp_path, env)
    assert run.exit_code == 0, run.stderr[-3000:]
    summary = run.summary()
    run_id = summary["run_id"]

    # The ranges ran as separate tasks: 8 manifests each naming one range of big.txt, together [0, size).
    tasks = await job_tasks(
        batch_emulator.endpoint, batch_emulator.account_name, batch_emulator.account_key, f"topn-{run_id}"
    )
    range_tasks: dict[tuple[int, int], Any] = {}
    for task in tasks:
        (item,) = (await task_manifest(task))["inputs"]
        if item["relpath"] == "big.txt":
            assert item["output_name"] is None and item["etag"]
            range_tasks[tuple(item["range"])] = task
    spans = sorted(range_tasks)
    assert len(spans) == RANGES
    assert spans[0][0] == 0 and spans[-1][1] == big.stat().st_size
    assert all(left[1] == right[0] for left, right in itertools.pairwise(spans))
    assert {task.execution_info.result for task in range_tasks.values()} == {"success"}
    times = [
        (task.execution_info.start_time, task.execution_info.end_time, task.node_info.node_id)
        for task in range_tasks.values()
    ]
    assert len({node for _, _, node in times}) == 2, "the ranges ran on both nodes"
    assert overlapping(times), "ranges ran at the same time on different nodes"

    # The one-process reference: the node's count of the whole file.
    reference = count_file(big, "words" if tokenizer == "words" else "tutorial")
    assert reference.invalid_bytes > 0 and any("語" in word for word in reference.counts)
    (entry,) = [item for item in summary["files"] if item["path"] == "big.txt"]
    first = range_tasks[spans[0]]
    assert entry == {
        "path": "big.txt",
        "status": "succeeded",
        "top": [[word, count] for word, count in reference.top(10)],
        "words": reference.words,
        "invalid_bytes": reference.invalid_bytes,
        "error": None,
        "task_id": first.id,
        "output": "big_OUTPUT.txt",
    }
    # As a node with the first range's identity writes an unsplit file's `_OUTPUT`.
    identity = {
        "AZ_BATCH_NODE_ID": first.node_info.node_id,
        "AZ_BATCH_TASK_ID": first.id,
        "AZ_BATCH_JOB_ID": f"topn-{run_id}",
        "AZ_BATCH_POOL_ID": pool_id,
    }
    expected = output_text(reference.top(10), identity).encode("utf-8")
    assert (tmp_path / "out" / "big_OUTPUT.txt").read_bytes() == expected
    uploaded = output_blobs(azurite, run_id)
    assert sorted(uploaded) == ["big_OUTPUT.txt", "small_OUTPUT.txt"]
    assert uploaded["big_OUTPUT.txt"] == expected
    totals = summary["totals"]
    assert totals["files"] == 2 and totals["succeeded"] == 2 and totals["failed"] == 0
    assert totals["words"] == reference.words + 4


def recorded_range_completions(journal_file: Path) -> int:
    """How many range units the journal holds as completed (read while topn writes it)."""
    with contextlib.closing(sqlite3.connect(journal_file, timeout=5)) as connection:
        row = connection.execute(
            "SELECT count(*) FROM completed_tasks AS done JOIN unit_ranges AS part"
            " ON part.run_id = done.run_id AND part.task_id = done.task_id"
        ).fetchone()
    return int(row[0])


async def test_a_run_killed_with_some_ranges_done_resumes_to_the_exact_result(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    """SIGKILL once the journal holds 2 to 7 of the 8 ranges as completed; `topn resume` merges all 8."""
    big = tmp_path / "in" / "big.txt"
    big.parent.mkdir(parents=True)
    big.write_bytes(split_corpus())
    # One slot: the ranges run one after another, so the kill lands between two of them.
    env = topn_environment(
        batch_emulator,
        azurite,
        tmp_path / ".topn",
        TOPN_POOL_ID="e2e-split-resume",
        TOPN_POOL_DEDICATED_NODES="1",
        TOPN_POOL_TASK_SLOTS_PER_NODE="1",
        TOPN_RUN_SPLIT_BYTES=str(SPLIT_BYTES),
        TOPN_RUN_DELETE_JOB="false",
    )
    journal_file = tmp_path / ".topn" / JOURNAL_FILENAME
    pids: list[int] = []
    killed_at: list[int] = []

    async def kill_between_ranges() -> None:
        while True:
            await anyio.sleep(0.05)
            if not pids or not journal_file.exists():
                continue
            try:
                done = await anyio.to_thread.run_sync(recorded_range_completions, journal_file)
            except sqlite3.OperationalError:  # the table is not there yet
                continue
            if 2 <= done < RANGES:
                os.kill(pids[0], signal.SIGKILL)
                killed_at.append(done)
                return

    with anyio.fail_after(150):
        async with anyio.create_task_group() as group:
            group.start_soon(kill_between_ranges)
            first = await run_topn_live(
                ["run", "in", "--out", "out", "--json"], tmp_path, env, on_started=pids.append
            )
            group.cancel_scope.cancel()
    assert killed_at and first.exit_code == -9, (first.exit_code, first.stderr[-2000:])
    async with await Journal.open(tmp_path / ".topn") as journal:
        (record,) = await journal.list_runs()
    done = [task_id for task_id in record.ranges if task_id in record.completed]
    assert 2 <= len(done) < RANGES and not record.is_finished

    second = await run_topn_live(["resume", record.run_id, "--json"], tmp_path, env)
    assert second.exit_code == 0, second.stderr[-3000:]
    reference = count_file(big, "words")
    (entry,) = second.summary()["files"]
    assert (entry["status"], entry["top"], entry["words"], entry["invalid_bytes"]) == (
        "succeeded",
        [[word, count] for word, count in reference.top(10)],
        reference.words,
        reference.invalid_bytes,
    )
    tasks = await job_tasks(
        batch_emulator.endpoint,
        batch_emulator.account_name,
        batch_emulator.account_key,
        f"topn-{record.run_id}",
    )
    first_range = min(record.ranges.values(), key=lambda part: part.start)
    (counted_first,) = [task for task in tasks if task.id == first_range.task_id]
    identity = {
        "AZ_BATCH_NODE_ID": counted_first.node_info.node_id,
        "AZ_BATCH_TASK_ID": counted_first.id,
        "AZ_BATCH_JOB_ID": f"topn-{record.run_id}",
        "AZ_BATCH_POOL_ID": "e2e-split-resume",
    }
    expected = output_text(reference.top(10), identity).encode("utf-8")
    assert (tmp_path / "out" / "big_OUTPUT.txt").read_bytes() == expected
    assert output_blobs(azurite, record.run_id) == {"big_OUTPUT.txt": expected}
    # The ranges finished before the kill were not run again.
    assert len(tasks) == RANGES and {task.id for task in tasks} == set(record.ranges)


async def test_a_big_blob_read_where_it_lives_is_split_pinned_to_the_etag_listed(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    """`topn run az://…` of a blob above split_bytes: 8 range tasks read the user's blob in place."""
    data = split_corpus()
    (tmp_path / "big.txt").write_bytes(data)  # for the reference count only
    container = f"userbig-{uuid.uuid4().hex[:12]}"
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        service.create_container(container)
        listed = service.get_blob_client(container, "logs/big.txt").upload_blob(data)["etag"]
    env = topn_environment(
        batch_emulator,
        azurite,
        tmp_path / ".topn",
        TOPN_POOL_ID="e2e-split-blob",
        TOPN_POOL_DEDICATED_NODES="2",
        TOPN_POOL_TASK_SLOTS_PER_NODE="2",
        TOPN_RUN_SPLIT_BYTES=str(SPLIT_BYTES),
        TOPN_RUN_DELETE_JOB="false",
    )
    run = await run_topn_live(["run", f"az://{container}/logs/", "--out", "out", "--json"], tmp_path, env)
    assert run.exit_code == 0, run.stderr[-3000:]
    summary = run.summary()
    tasks = await job_tasks(
        batch_emulator.endpoint,
        batch_emulator.account_name,
        batch_emulator.account_key,
        f"topn-{summary['run_id']}",
    )
    manifests = [await task_manifest(task) for task in tasks]
    ranges = sorted(tuple(manifest["inputs"][0]["range"]) for manifest in manifests)
    assert len(ranges) == RANGES and ranges[0][0] == 0 and ranges[-1][1] == len(data)
    for manifest in manifests:
        (item,) = manifest["inputs"]
        # Read in place (the user's container, not the run's input container), that version only.
        assert item["blob"] == "logs/big.txt" and item["etag"].strip('"') == listed.strip('"')
        assert f"/{container}" in manifest["sources"][item["source"]].split("?")[0]
    reference = count_file(tmp_path / "big.txt", "words")
    (entry,) = summary["files"]
    assert entry["path"] == "big.txt" and entry["status"] == "succeeded"
    assert entry["words"] == reference.words and entry["invalid_bytes"] == reference.invalid_bytes
    assert entry["top"] == [[word, count] for word, count in reference.top(10)]
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        user_blobs = [blob.name for blob in service.get_container_client(container).list_blobs()]
        service.delete_container(container)
    assert user_blobs == ["logs/big.txt"]  # nothing written beside it
