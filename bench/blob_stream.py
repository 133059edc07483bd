"""Blob-resident inputs listed page by page: when the first task goes in, counted from the command's start.

`bench/scale_run.py --blob-resident` reports `first_task_s` from the run's start; before the
listing was overlapped with feeding, the run started only once every page was listed, so that figure
hid the listing. This block counts from the moment `topn run az://…` is launched (the run's
`run.started` timestamp plus its `first_task_s`), and also says when the listing ended
(`inputs.listed`), so a side-by-side run shows the overlap:

    .venv/bin/python -m bench.blob_stream --blobs 10000 --before /work/wt-stream-base

runs `--before`'s checkout (a worktree of main: the listing before the run) and this one, each on
freshly started Azurite and emulator with the same generated blobs, and prints wall time, first
task from the command's start, listing end, CPU per file, storage requests per file, peak RSS and
/proc/loadavg around each block (the machine is shared). Nothing is asserted: benchmarks report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

from bench.profile_map import summary_of
from bench.scale_run import (
    BLOB_CONTAINER,
    BLOB_PREFIX,
    CODE_ROOT_VARIABLE,
    azurite_get_latency_ms,
    generate_files,
    loadavg,
    seed_blobs,
    topn_child,
)
from orchestrator.local import processes as local

HERE = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class StreamFigures:
    """One `topn run az://…` of a block."""

    label: str
    files: int
    wall_s: float
    first_task_s: float | None  # from the command's launch
    listed_s: float | None  # from the command's launch to `inputs.listed`
    cpu_ms_per_file: float
    storage_per_file: float
    list_requests: int
    peak_rss_mb: float
    tasks: int
    azurite_get_ms: float
    load_before: str
    load_after: str


def _moment(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def topn_run_child(blob_endpoint: str, batch_endpoint: str, folder: Path) -> tuple[float, str, str, Any]:
    """`topn run az://… --json` as a child of its own: wall time, stdout, stderr and its own rusage."""
    wall, completed, usage = topn_child(
        f"az://{BLOB_CONTAINER}/{BLOB_PREFIX}",
        folder / "out",
        batch_endpoint,
        blob_endpoint,
        folder / "state",
        timeout_s=7200,
    )
    return wall, completed.stdout, completed.stderr, usage


def measured_run(label: str, blob_endpoint: str, batch_endpoint: str, folder: Path) -> StreamFigures:
    """`topn run az://…` as a child process, timed from its launch (wall clock, as events are stamped)."""
    load_before = loadavg()
    launched = time.time()
    wall, stdout, stderr, usage = topn_run_child(blob_endpoint, batch_endpoint, folder)
    summary = summary_of(stdout)
    totals = summary["totals"]
    if totals["succeeded"] != totals["files"]:
        raise SystemExit(f"topn run: {totals['failed']} of {totals['files']} files failed")
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    by_name = {event["event"]: event for event in reversed(events)}  # the first of each name
    started, submitted, listed = (
        by_name.get(name) for name in ("run.started", "tasks.submitted", "inputs.listed")
    )
    first_task = None
    if started is not None and submitted is not None and submitted.get("first_task_s") is not None:
        first_task = _moment(started) - launched + float(submitted["first_task_s"])
    list_requests = int(listed["storage_requests"]) if listed is not None else 0
    # The run's own count never holds the listing's requests: `inputs.listed` has them all.
    storage = sum(int(count) for count in totals["requests"].get("storage", {}).values()) + list_requests
    files = int(totals["files"])
    return StreamFigures(
        label=label,
        files=files,
        wall_s=wall,
        first_task_s=round(first_task, 3) if first_task is not None else None,
        listed_s=round(_moment(listed) - launched, 3) if listed is not None else None,
        cpu_ms_per_file=(usage.ru_utime + usage.ru_stime) / files * 1000,
        storage_per_file=storage / files,
        list_requests=list_requests,
        peak_rss_mb=usage.ru_maxrss / 1024,  # kilobytes on Linux
        tasks=len({entry["task_id"] for entry in summary["files"]}),
        azurite_get_ms=0.0,
        load_before=load_before,
        load_after=loadavg(),
    )


async def block(label: str, code_root: Path, count: int, base: Path) -> StreamFigures:
    """Fresh Azurite and emulator, `count` blobs seeded, one run of `code_root`'s topn."""
    folder = base / label
    generate_files(folder / "texts", count)
    azurite = await local.start_azurite(folder / "azurite", folder / "logs")
    try:
        emulator = await local.start_emulator(folder / "emulator", folder / "logs")
        try:
            await seed_blobs(azurite.endpoint, folder / "texts")
            os.environ[CODE_ROOT_VARIABLE] = str(code_root)
            figures = await anyio.to_thread.run_sync(
                measured_run, label, azurite.endpoint, emulator.endpoint, folder
            )
            latency = await azurite_get_latency_ms(
                azurite.endpoint, BLOB_CONTAINER, f"{BLOB_PREFIX}part0/doc00000.txt"
            )
            print(f"{label}: {figures}", flush=True)
            return dataclasses.replace(figures, azurite_get_ms=latency)
        finally:
            await local.stop_service(emulator)
    finally:
        await local.stop_service(azurite)


async def measure(count: int, before: Path | None, base: Path) -> None:
    runs = [("before", before)] if before is not None else []
    results = [await block(label, root, count, base) for label, root in [*runs, ("after", HERE)]]
    print(
        f"{'run':>7} {'blobs':>7} {'wall s':>8} {'1st task s':>11} {'listed s':>9} {'CPU ms/file':>12} "
        f"{'req/file':>9} {'list req':>9} {'RSS MB':>7} {'tasks':>6} {'GET ms':>7}  loadavg before -> after"
    )
    for item in results:
        print(
            f"{item.label:>7} {item.files:>7} {item.wall_s:>8.1f} {item.first_task_s!s:>11} "
            f"{item.listed_s!s:>9} "
            f"{item.cpu_ms_per_file:>12.2f} {item.storage_per_file:>9.4f} {item.list_requests:>9} "
            f"{item.peak_rss_mb:>7.0f} {item.tasks:>6} {item.azurite_get_ms:>7.1f}  "
            f"{item.load_before} -> {item.load_after}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=10000)
    parser.add_argument("--before", type=Path, help="also run this checkout first (a worktree of main)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="topn-stream-") as folder:
        anyio.run(measure, args.blobs, args.before.resolve() if args.before else None, Path(folder))


if __name__ == "__main__":
    main()
