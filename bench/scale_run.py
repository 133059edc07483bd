"""Scale figure (issue 4, point 9): N small generated files, run by topn and the seed tutorial's way.

Both runs use the same freshly started Azurite and Batch emulator, each with its own pool of the
same shape. Printed side by side: wall time and Batch requests per operation (from the emulator's
GET /_emulator/stats), and their ratios (seed / topn). Nothing is asserted: benchmarks report.

    .venv/bin/python -m bench.scale_run --files 1000

First figures (2026-11-22, this 2-core machine, shared with other work, runs under `nice`):
1,000 files of 30-120 words: topn 34.8 s, the seed way 462.5 s (13.3x); Batch requests 48 vs 310
(list_tasks 7 vs 297, each of the seed's listing all 1,000 tasks; create_task_collection 1 vs 10).
Most of the wall-time gain is work units: topn packs the small files into 16 tasks, one process each.
With packing off (`--one-task-per-file`, later run: topn 18.9 s, one task per file 407.7 s) the
node's process start dominates, as for the seed; topn then polls at poll_min_s (0.2 s in
config/local.toml) while tasks keep completing, 2,204 small requests (1,416 task counts, 772
filtered listings returning about 1,000 tasks in all) against the seed's 310 full listings.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from bench.seed_baseline import SeedEndpoints, run_seed_baseline
from orchestrator.azure.clients import open_clients
from orchestrator.azure.staging import build_node_script
from orchestrator.events import configure_events
from orchestrator.inputs import discover_inputs
from orchestrator.local import processes as local
from orchestrator.run.pipeline import run_pipeline
from orchestrator.service.poolkeeper import PoolKeeper
from orchestrator.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
# Common English words; generated texts need realistic repetition, not meaning.
VOCABULARY = """
the of and to in is was that for it with as his on be at by had are but from or have an they which one you
were her all she there would their we him been has when who will more no if out so said what up its about
into than them can only other new some could time these two may then do first any my now such like
""".split()  # noqa: SIM905 - a word list reads better as text


def generate_files(folder: Path, count: int, seed: int = 4) -> None:
    """`count` small text files (30-120 words) in 10 sub-folders, deterministic for a seed."""
    chooser = random.Random(seed)
    for number in range(count):
        path = folder / f"part{number % 10}" / f"doc{number:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        words = chooser.choices(VOCABULARY, k=chooser.randint(30, 120))
        path.write_text(" ".join(words) + "\n", encoding="utf-8")


def emulator_stats(endpoint: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{endpoint}/_emulator/stats", timeout=10) as response:  # noqa: S310 - loopback
        stats: dict[str, Any] = json.loads(response.read())
        return stats


def requests_between(before: dict[str, Any], after: dict[str, Any]) -> Counter[str]:
    delta = Counter(after["requests"])
    delta.subtract(before["requests"])
    return Counter({operation: count for operation, count in delta.items() if count})


def run_topn(
    files_dir: Path, out_dir: Path, batch: str, blob: str, state_dir: Path
) -> tuple[float, dict[str, Any]]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("TOPN_")}
    env.update(
        {
            "TOPN_BATCH_ENDPOINT": batch,
            "TOPN_STORAGE_BLOB_ENDPOINT": blob,
            "TOPN_LOCAL_STATE_DIR": str(state_dir),
            "TOPN_POOL_ID": "topn-scale",
            "PYTHONPATH": str(ROOT),
        }
    )
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(files_dir), "--out", str(out_dir), "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    wall = time.monotonic() - started
    if completed.returncode != 0:
        raise SystemExit(f"topn run failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    summary: dict[str, Any] = json.loads(completed.stdout)
    return wall, summary


@dataclass(frozen=True)
class Measured:
    label: str
    wall_s: float
    requests: Counter[str]


def print_report(count: int, runs: list[Measured]) -> None:
    """One column per run; the last column divides the last run's figures by the first (topn's)."""
    ours, seed = runs[0], runs[-1]
    print(f"\n{count} files, same Azurite + emulator, pools of 2 nodes x 2 slots")
    print(f"{'':28}" + "".join(f"{run.label:>18}" for run in runs) + f"{'last/first':>11}")
    print(
        f"{'wall time (s)':28}"
        + "".join(f"{run.wall_s:>18.1f}" for run in runs)
        + f"{seed.wall_s / ours.wall_s:>11.1f}"
    )
    totals = [sum(run.requests.values()) for run in runs]
    ratio = totals[-1] / max(1, totals[0])
    print(f"{'Batch requests (total)':28}" + "".join(f"{total:>18}" for total in totals) + f"{ratio:>11.1f}")
    for operation in sorted(set().union(*(run.requests for run in runs))):
        counts = [run.requests.get(operation, 0) for run in runs]
        ratio_text = f"{counts[-1] / counts[0]:.1f}" if counts[0] else "-"
        print(f"  {operation:26}" + "".join(f"{value:>18}" for value in counts) + f"{ratio_text:>11}")


async def measure(count: int, skip_seed: bool, one_task_per_file: bool, base: Path) -> None:
    """Start the services, run topn (as a CLI subprocess), then the seed way, and report."""
    generate_files(base / "texts", count)
    azurite = await local.start_azurite(base / "azurite", base / "logs")
    try:
        emulator = await local.start_emulator(base / "emulator", base / "logs")
        try:
            await compare(count, skip_seed, one_task_per_file, base, azurite.endpoint, emulator.endpoint)
        finally:
            await local.stop_service(emulator)
    finally:
        await local.stop_service(azurite)


async def compare(
    count: int, skip_seed: bool, one_task_per_file: bool, base: Path, blob_endpoint: str, batch_endpoint: str
) -> None:
    before = await anyio.to_thread.run_sync(emulator_stats, batch_endpoint)
    topn_wall, summary = await anyio.to_thread.run_sync(
        run_topn, base / "texts", base / "topn-out", batch_endpoint, blob_endpoint, base / "state"
    )
    after = await anyio.to_thread.run_sync(emulator_stats, batch_endpoint)
    runs = [Measured("topn", topn_wall, requests_between(before, after))]
    totals = summary["totals"]
    print(f"topn: {totals['succeeded']}/{count} files in {topn_wall:.1f} s (stages {totals['stages_s']})")
    files = sorted((base / "texts").rglob("*.txt"))
    if one_task_per_file:
        before = after
        wall = await run_topn_one_task_per_file(files, base, batch_endpoint, blob_endpoint)
        after = await anyio.to_thread.run_sync(emulator_stats, batch_endpoint)
        runs.append(Measured("topn 1 file/task", wall, requests_between(before, after)))
    if not skip_seed:
        endpoints = SeedEndpoints(
            batch_endpoint,
            local.EMULATOR_ACCOUNT_NAME,
            local.EMULATOR_ACCOUNT_KEY,
            blob_endpoint,
            local.AZURITE_ACCOUNT_NAME,
            local.AZURITE_ACCOUNT_KEY,
        )
        node_script = await anyio.to_thread.run_sync(build_node_script)
        before = after
        seed = await run_seed_baseline(endpoints, files, node_script, base / "seed-out", pool_id="seed-scale")
        after = await anyio.to_thread.run_sync(emulator_stats, batch_endpoint)
        print(f"seed way: {seed.succeeded}/{seed.tasks} tasks succeeded, {seed.outputs_downloaded} outputs")
        runs.append(Measured("seed way", seed.wall_s, requests_between(before, after)))
    print_report(count, runs)


async def run_topn_one_task_per_file(
    files: list[Path], base: Path, batch_endpoint: str, blob_endpoint: str
) -> float:
    """topn's orchestration with packing off: one task per file, like the seed (in-process run)."""
    environ = {
        "TOPN_BATCH_ENDPOINT": batch_endpoint,
        "TOPN_STORAGE_BLOB_ENDPOINT": blob_endpoint,
        "TOPN_LOCAL_STATE_DIR": str(base / "state-single"),
        "TOPN_POOL_ID": "topn-scale-single",
    }
    settings = load_settings(ROOT / "config" / "local.toml", environ)
    configure_events("json", sys.stderr, level="warning")  # the run's own events would flood the report
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        summary = await run_pipeline(
            settings,
            discover_inputs([base / "texts"]),
            clients,
            base / "single-out",
            pool=PoolKeeper(settings, clients),
            max_files_per_task=1,
        )
    wall = time.monotonic() - started
    print(f"topn, one task per file: {summary['totals']['succeeded']}/{len(files)} files in {wall:.1f} s")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--skip-seed", action="store_true", help="no seed-way run")
    parser.add_argument(
        "--one-task-per-file",
        action="store_true",
        help="also run topn with packing off (orchestration alone)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="topn-scale-") as folder:
        anyio.run(measure, args.files, args.skip_seed, args.one_task_per_file, Path(folder))


if __name__ == "__main__":
    main()
