"""Split-file figure (issue 13, point 7): one big file counted by one task, then split over the pool's slots.

    .venv/bin/python -m bench.split_run --size-mb 2048

Starts a fresh Azurite and Batch emulator (pool of 2 nodes, 2 slots each: config/local.toml), warms
the pool with a tiny run, then runs `topn run` twice on the same file as child processes:

* one task: `[run] split_bytes` above the file's size, so one node counts it whole;
* split: `[run] split_bytes` (default 256 MiB), so `ceil(size / split_bytes)` tasks each count one
  byte range of the uploaded blob and topn merges them.

Reported: each run's wall time and stages, the ratio split / one task (goal here: at most 1.15x;
every node of the local emulator shares the machine's 2 cores, and one task already uses both),
whether the counts are exact (the split run's summary entry and `_OUTPUT` word lines equal the
one-task run's, which is the node's one-process count), each range's task (node, start, duration,
from the emulator's task records through the Batch API) and how many ran at once, and the projected
wall time on a pool of 8 and 32 nodes from the measured per-range times: the run's time outside the
ranges plus the longest node's share when the ranges are spread over that many nodes, at the default
split and with `split_bytes = size / nodes` (range time scaled by bytes). Nothing is asserted.

The runs raise `[retry] deadline_s` to 1800 s: the retry layer bounds every request by it (60 s in
config/local.toml), and one upload of a 2 GB input to a busy Azurite takes longer (126 s here), so
with the default the input is reported unreadable (`input.unreadable`, an empty TimeoutError).

Figures of 2026-12-06 15:25-15:40 UTC (2 cores shared with other sessions' test suites: loadavg
15-22 throughout, so every wall time is inflated; both runs of a size saw the same load):

| file | split_bytes | ranges | one task | split | split/one | exact | at once | 8 nodes | 32 nodes |
|---|---|---|---|---|---|---|---|---|---|
| 2,048 MiB | 256 MiB | 8 | 501.8 s | 323.5 s | 0.64x | yes | 2 (2 nodes) | 176.6 s | 176.6 s (138.2) |
| 512 MiB | 64 MiB | 8 | 131.3 s | 87.6 s | 0.67x | yes | 2 (2 nodes) | 44.8 s | 44.8 s (30.7) |
(In brackets: with `split_bytes = size / 32`, 32 ranges.)

2 GB: staging (the one upload) 126.5 s and 120.5 s; the one task counted for 368.8 s, the 8 ranges
took 47.5-50.6 s each, two at a time (one per node), 197.5 s in all. Split is faster here, not
slower: the one task is one process on one core, the two nodes' ranges use both. The projections
keep the 126 s spent outside the ranges (the upload to the local Azurite), which more nodes do not
shorten; at the default split a 2 GB file has 8 ranges, so 32 nodes gain nothing over 8 unless
`split_bytes` is lowered (the second figure).
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from orchestrator.local import processes as local

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
POOL_ID = "topn-split-bench"
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "that",
    "for",
    "it",
    "with",
    "as",
    "his",
    "on",
    "be",
    "at",
    "by",
    "had",
    "are",
    "but",
    "from",
    "or",
    "have",
    "an",
    "they",
    "which",
    "one",
    "you",
    "were",
    "her",
    "all",
    "she",
    "there",
    "would",
    "their",
    "we",
    "him",
    "been",
    "has",
    "when",
    "who",
    "will",
    "more",
    "no",
    "if",
    "out",
    "so",
    "said",
    "what",
    "naïve",
    "café",
    "Œuvre",
    "déjà",
    "日本",
    "語",
    "straße",
    "ĳssel",
]


def write_corpus(path: Path, size_bytes: int, seed: int = 20261206) -> None:
    """`size_bytes` of words (some multi-byte) in lines, streamed: 16 distinct 8 MiB blocks, reordered."""
    chooser = random.Random(seed)
    blocks = []
    for _ in range(16):
        words = chooser.choices(WORDS, k=1_600_000)
        text = "\n".join(" ".join(words[start : start + 12]) for start in range(0, len(words), 12)) + "\n"
        blocks.append(text.encode("utf-8")[: 8 * MIB])
    with path.open("wb") as file:
        written = 0
        number = 0
        while written < size_bytes:
            block = blocks[(number * 7) % len(blocks)][: size_bytes - written]
            file.write(block)
            written += len(block)
            number += 1


def topn_run(
    files: Path, out: Path, batch: str, blob: str, state: Path, split_bytes: int
) -> tuple[float, dict[str, Any]]:
    """`topn run --json` as a child process with this split; its wall time and summary (job kept)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TOPN_")}
    env.update(
        {
            "TOPN_BATCH_ENDPOINT": batch,
            "TOPN_STORAGE_BLOB_ENDPOINT": blob,
            "TOPN_LOCAL_STATE_DIR": str(state),
            "TOPN_POOL_ID": POOL_ID,
            "TOPN_RUN_SPLIT_BYTES": str(split_bytes),
            "TOPN_RUN_DELETE_JOB": "false",
            # The retry layer bounds each request by [retry] deadline_s (60 s locally), and one upload
            # of a multi-GB input to a busy Azurite takes longer: it would be reported unreadable.
            "TOPN_RETRY_DEADLINE_S": "1800",
            "PYTHONPATH": str(ROOT),
        }
    )
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(files), "--out", str(out), "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=7200,
    )
    wall = time.monotonic() - started
    if completed.returncode != 0:
        raise SystemExit(f"topn run failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    summary: dict[str, Any] = json.loads(completed.stdout)
    return wall, summary


@dataclass(frozen=True)
class RangeTask:
    task_id: str
    start_byte: int
    end_byte: int
    node: str
    started: datetime
    ended: datetime

    @property
    def seconds(self) -> float:
        return (self.ended - self.started).total_seconds()


async def range_tasks(batch: str, job_id: str) -> list[RangeTask]:
    """Each task of the job that counted a range, from the emulator's task records and its manifest."""
    credential = AzureNamedKeyCredential(local.EMULATOR_ACCOUNT_NAME, local.EMULATOR_ACCOUNT_KEY)
    found = []
    async with BatchClient(batch, credential) as client, aiohttp.ClientSession() as session:
        async for task in client.list_tasks(job_id):
            (url,) = [
                str(item.http_url)
                for item in task.resource_files or []
                if str(item.file_path).startswith("unit-")
            ]
            async with session.get(url) as response:
                manifest = json.loads(await response.read())
            for item in manifest["inputs"]:
                if item["range"] is not None:
                    info, node = task.execution_info, task.node_info
                    assert info is not None and node is not None, f"task {task.id} has not run"
                    assert info.start_time is not None and info.end_time is not None
                    start, end = item["range"]
                    found.append(
                        RangeTask(str(task.id), start, end, str(node.node_id), info.start_time, info.end_time)
                    )
    return sorted(found, key=lambda task: task.start_byte)


def most_at_once(tasks: list[RangeTask]) -> int:
    """The largest number of range tasks running at the same moment."""
    moments = sorted([(task.started, 1) for task in tasks] + [(task.ended, -1) for task in tasks])
    running = peak = 0
    for _, change in moments:
        running += change
        peak = max(peak, running)
    return peak


def makespan(durations: list[float], nodes: int) -> float:
    """Longest node's total when the ranges go, longest first, to the least loaded of `nodes` nodes."""
    loads = [0.0] * nodes
    for duration in sorted(durations, reverse=True):
        heapq.heapreplace(loads, loads[0] + duration)
    return max(loads)


def output_rows(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[: lines.index("-" * 30, 2)]


async def measure(size_mb: int, split_bytes: int, base: Path) -> None:
    files = base / "in"
    files.mkdir()
    big = files / "big.txt"
    started = time.monotonic()
    write_corpus(big, size_mb * MIB)
    print(f"corpus: {big.stat().st_size:,} bytes written in {time.monotonic() - started:.1f} s", flush=True)
    warm = base / "warm"
    warm.mkdir()
    (warm / "tiny.txt").write_text("warm the pool\n", encoding="utf-8")
    azurite = await local.start_azurite(base / "azurite", base / "logs")
    try:
        emulator = await local.start_emulator(base / "emulator", base / "logs")
        try:
            await anyio.to_thread.run_sync(
                topn_run,
                warm,
                base / "out-warm",
                emulator.endpoint,
                azurite.endpoint,
                base / "state",
                split_bytes,
            )
            size = big.stat().st_size
            one_wall, one = await anyio.to_thread.run_sync(
                topn_run,
                files,
                base / "out-one",
                emulator.endpoint,
                azurite.endpoint,
                base / "state",
                size + 1,
            )
            split_wall, split = await anyio.to_thread.run_sync(
                topn_run,
                files,
                base / "out-split",
                emulator.endpoint,
                azurite.endpoint,
                base / "state",
                split_bytes,
            )
            ranges = await range_tasks(emulator.endpoint, f"topn-{split['run_id']}")
        finally:
            await local.stop_service(emulator)
    finally:
        await local.stop_service(azurite)
    report(size, split_bytes, (one_wall, one), (split_wall, split), ranges, base)


def report(
    size: int,
    split_bytes: int,
    one: tuple[float, dict[str, Any]],
    split: tuple[float, dict[str, Any]],
    ranges: list[RangeTask],
    base: Path,
) -> None:
    (one_entry,) = one[1]["files"]
    (split_entry,) = split[1]["files"]
    same = {key: one_entry[key] for key in ("top", "words", "invalid_bytes")} == {
        key: split_entry[key] for key in ("top", "words", "invalid_bytes")
    }
    same_rows = output_rows(base / "out-one" / "big_OUTPUT.txt") == output_rows(
        base / "out-split" / "big_OUTPUT.txt"
    )
    words = one_entry["words"]
    print(f"\nfile: {size / MIB:,.0f} MiB, {words:,} words; split_bytes {split_bytes / MIB:,.0f} MiB")
    print(f"counts exact (summary entry and _OUTPUT rows equal the one-task count): {same and same_rows}")
    for label, (wall, summary) in (("one task", one), ("split", split)):
        stages = ", ".join(
            f"{stage} {seconds:.1f}" for stage, seconds in summary["totals"]["stages_s"].items()
        )
        print(f"{label:>9}: wall {wall:7.1f} s  ({stages})")
    print(f"    ratio: split / one task = {split[0] / one[0]:.2f}x (goal on the local emulators: <= 1.15x)")
    nodes_used = len({task.node for task in ranges})
    print(f"\n{len(ranges)} range tasks, at most {most_at_once(ranges)} at once, on {nodes_used} nodes:")
    first = min(task.started for task in ranges)
    for task in ranges:
        offset = (task.started - first).total_seconds()
        print(
            f"  {task.task_id} [{task.start_byte:>13,}, {task.end_byte:>13,}) on {task.node}: "
            f"starts +{offset:5.1f} s, {task.seconds:6.1f} s"
        )
    span = (max(task.ended for task in ranges) - first).total_seconds()
    outside = split[0] - span  # upload, submission, merge: what more nodes do not shorten
    durations = [task.seconds for task in ranges]
    seconds_per_byte = sum(durations) / size
    print(f"\nsplit run outside the ranges: {outside:.1f} s; ranges' span {span:.1f} s")
    for nodes in (8, 32):
        at_default = outside + makespan(durations, nodes)
        evenly = outside + size / nodes * seconds_per_byte
        print(
            f"projected on {nodes:>2} nodes: {at_default:6.1f} s at this split ({len(ranges)} ranges), "
            f"{evenly:6.1f} s with split_bytes = size / {nodes}"
        )
    print(
        f"(range times measured with {most_at_once(ranges)} ranges at once sharing this machine's "
        f"{os.cpu_count()} cores and the services: a real node counts its range alone)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=2048, help="the file's size in MiB (default 2048)")
    parser.add_argument(
        "--split-mb", type=int, default=256, help="[run] split_bytes of the split run, in MiB (default 256)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="topn-split-") as folder:
        anyio.run(measure, args.size_mb, args.split_mb * MIB, Path(folder))


if __name__ == "__main__":
    main()
