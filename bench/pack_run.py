"""Packing's figure (issue 13, points 5/7): the same N small files with `[run] pack_max_bytes` off and on.

    .venv/bin/python -m bench.pack_run --scale 1000 10000

For each count, two blocks of bench/scale_run.py side by side in one invocation, each on freshly
started Azurite and emulator over the same generated files: `TOPN_RUN_PACK_MAX_BYTES=0` (every
input its own blob, as before packs) and the default (a unit's small inputs one blob). Printed per
block: wall, orchestrator CPU per file (getrusage of the `topn run` child), storage requests per
file (the run's own count), peak RSS, first task, Azurite's CPU over the block, and /proc/loadavg
after it (the machine is shared); then the ratios off / on. Nothing is asserted: benchmarks report.
Each block runs in a process of its own (getrusage's peak RSS of waited children is the largest
ever waited for: in one process a later block would report an earlier block's Azurite). Azurite's
small-GET latency is probed on the first unit's manifest, a blob both modes have.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import anyio

from bench import scale_run
from bench.scale_run import ScaleFigures, loadavg

MODES: tuple[tuple[str, str | None], ...] = (("off", "0"), ("on", None))  # None: the default setting


async def _probe_manifest(blob_endpoint: str, container: str, blob_name: str, count: int = 200) -> float:
    del blob_name  # a packed run has no blob per input: probe a small blob both modes have
    return await _original_probe(blob_endpoint, container, "units/t000000.json", count)


_original_probe = scale_run.azurite_get_latency_ms


async def pack_block(count: int, base: Path, pack_max_bytes: str | None) -> ScaleFigures:
    """One scale_run block, its `topn run` child with `TOPN_RUN_PACK_MAX_BYTES` set (or the default)."""
    setting = [] if pack_max_bytes is None else [f"TOPN_RUN_PACK_MAX_BYTES={pack_max_bytes}"]
    # scale_run's child gets no TOPN_* of this process: the setting rides on its launcher (env(1)
    # execs the interpreter, so getrusage still sees the run's own process).
    launcher = ["env", *setting, sys.executable]
    names = vars(scale_run)  # the module's globals, which scale_block's helpers look up when called
    saved = {name: names[name] for name in ("profiler_launcher", "azurite_get_latency_ms")}
    names["profiler_launcher"] = lambda profile_dir, label: launcher
    names["azurite_get_latency_ms"] = _probe_manifest
    try:
        return await scale_run.scale_block(count, base)
    finally:
        names.update(saved)


def _row(mode: str, figures: ScaleFigures, load: str) -> str:
    uploads = figures.storage_by_operation.get("upload_blob", 0)
    return (
        f"{figures.files:>7} {mode:>4} {figures.wall_s:>8.1f} {figures.cpu_s / figures.files * 1000:>12.2f} "
        f"{figures.storage_requests / figures.files:>9.3f} {uploads:>8} {figures.peak_rss_mb:>8.0f} "
        f"{figures.first_task_s!s:>10} {figures.tasks:>6} {figures.azurite_cpu_s:>12.1f} "
        f"{figures.emulator_cpu_s:>12.1f} {figures.azurite_get_ms:>8.1f}   {load}"
    )


def _ratio(off: float, on: float) -> str:
    return f"{off / on:.2f}x" if on else "-"


def block_in_child(count: int, base: Path, mode: str) -> ScaleFigures:
    """One block in a process of its own: getrusage's peak RSS of waited children is the largest
    ever waited for, so in one process a later block would report an earlier block's Azurite."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.pack_run", "--block", str(count), mode, str(base)],
        cwd=scale_run.ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"block {count} pack {mode} failed:\n{completed.stderr[-3000:]}")
    return ScaleFigures(**json.loads(completed.stdout.strip().splitlines()[-1]))


async def measure(counts: Sequence[int], base: Path) -> None:
    print(f"/proc/loadavg before: {loadavg()}", flush=True)
    rows: list[str] = []
    ratios: list[str] = []
    for count in counts:
        measured: dict[str, ScaleFigures] = {}
        for mode, _ in MODES:
            figures = await anyio.to_thread.run_sync(block_in_child, count, base / f"pack-{mode}", mode)
            load = loadavg()
            print(f"{count} pack {mode}: {figures}  loadavg {load}", flush=True)
            measured[mode] = figures
            rows.append(_row(mode, figures, load))
        off, on = measured["off"], measured["on"]
        ratios.append(
            f"{count:>7}  wall {_ratio(off.wall_s, on.wall_s)}, CPU {_ratio(off.cpu_s, on.cpu_s)}, "
            f"storage requests {_ratio(off.storage_requests, on.storage_requests)}, "
            f"Azurite CPU {_ratio(off.azurite_cpu_s, on.azurite_cpu_s)}, "
            f"emulator + nodes CPU {_ratio(off.emulator_cpu_s, on.emulator_cpu_s)}, "
            f"peak RSS {_ratio(off.peak_rss_mb, on.peak_rss_mb)}"
        )
    print(
        f"\n{'files':>7} {'pack':>4} {'wall s':>8} {'CPU ms/file':>12} {'req/file':>9} {'uploads':>8} "
        f"{'RSS MB':>8} {'1st task':>10} {'tasks':>6} {'Azurite CPU':>12} {'emul+nodes':>12} {'GET ms':>8}"
        "   loadavg after"
    )
    print("\n".join(rows))
    print("\nratios off / on:")
    print("\n".join(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, nargs="+", default=[1000], help="file counts (default 1000)")
    parser.add_argument("--block", nargs=3, metavar=("COUNT", "MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.block:  # one block, its figures as JSON on the last line (see block_in_child)
        count, mode, folder_name = args.block
        figures = anyio.run(pack_block, int(count), Path(folder_name), dict(MODES)[mode])
        print(json.dumps(dataclasses.asdict(figures)))
        return
    with tempfile.TemporaryDirectory(prefix="topn-pack-") as folder:
        anyio.run(measure, args.scale, Path(folder))


if __name__ == "__main__":
    main()
