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

Issue 13's figures (work units from manifests, one result blob per task, pipelined stages):

    .venv/bin/python -m bench.scale_run --scale 1000 10000 --seed-files 2000

runs topn on each file count against freshly started services (one block each), and the seed's
way once at `--seed-files` (its cost is per file: scaled linearly to each count, and said so).
Per topn run: wall time, orchestrator CPU per file (user + system of the `topn run` process, from
os.wait4 of that child alone), storage requests per file (the run's own count, summary.json),
peak RSS of the `topn run` process, time from the run's start to its first task in the job
(`tasks.submitted`'s `first_task_s`), Azurite's latency per small GET at that blob count, and
/proc/loadavg before and after (the machine is shared).

Figures of 2026-12-06 (2 cores shared with other sessions' test suites: loadavg 14.4 13.3 11.6
during the 1,000 block, 6.2 9.8 11.7 after the 10,000 one; wall times are inflated accordingly):

| files | wall s | CPU ms/file | storage req/file | peak RSS | first task | tasks | Azurite GET |
|---|---|---|---|---|---|---|---|
| 1,000 | 63.5 | 5.4 | 1.034 | 88 MB | 1.8 s | 16 | 9.0 ms |
| 10,000 | 1,150 (staging 634, running 504) | 4.4 | 1.003 | 212 MB | 9.6 s (no ramp yet) | 16 | 17.8 ms |

Storage requests per run: one upload per file, one manifest upload and one result download per
task, two container creations. The same 1,000-file block before the SSL-context fix
(azure/clients.py) cost 28.7 ms of CPU per file and 489 MB: azure-core re-read the CA bundle for
every request. The first task waited for its whole first unit (625 files at 10,000): the planner
now ramps the first units up (1/16 .. 1/2), which the 10,000 figure above predates.

Figures of 2026-12-06 14:00, on a quiet machine (loadavg 0.9-2.3), with the ramp; the seed's way
measured at 500 files (145.0 s and 140.0 s) and scaled linearly:
| files | wall s | seed s | speed-up | CPU ms/file | req/file | RSS | 1st task | tasks | GET |
|---|---|---|---|---|---|---|---|---|---|
| 1,000 | 13.0 | 290 | 22.2x | 4.37 | 1.040 | 86 MB | 0.23 s | 19 | 4.5 ms |
| 10,000 | 237.6 | 2,800 | 11.8x | 4.10 | 1.004 | 181 MB | 0.64 s | 20 | 15.5 ms |
(10,000: staging 105.9 s, running 126.5 s; GET is Azurite's latency per small GET.)
At 10,000 the node tasks (126 s) and Azurite (15.5 ms per GET, 3.5x its 1,000-blob figure) dominate.

Where the orchestrator's CPU per file goes, this branch's before/after and the case for packing
small inputs: docs/performance.md (`--profile DIR`, `--code DIR`, bench/profile_map.py).
Blob-resident inputs (`--blob-resident 1000 10000`: the generated files seeded as blobs of a container
first, then `topn run az://benchlogs/texts/`; storage requests include the listing's, from
`inputs.listed`). Figures of 2026-12-06 15:40-15:57 on a heavily shared machine (loadavg 15-20 from
other sessions' benchmarks and suites: wall times and the node tasks are inflated, per-file CPU less so):
| blobs | wall s | CPU ms/file | storage req/file | list requests | RSS | 1st task | tasks | GET |
|---|---|---|---|---|---|---|---|---|
| 1,000 | 48.5 | 2.28 | 0.0410 | 1 | 85 MB | 0.59 s | 19 | 10.4 ms |
| 10,000 | 730.8 (running 700.9) | 1.56 | 0.0044 | 2 | 196 MB | 2.74 s | 20 | 9.2 ms |
Storage requests per run: the listing (one per 5,000 blobs), one manifest upload and one result
download per task, two container creations; no request per blob. `1st task` counts from the run's
start, after the listing.

100,000-file blocks: Azurite's default metadata store (LokiJS) finds a blob by scanning every
blob of the account, twice per SAS-signed upload, so each request costs more as Azurite holds more
(a 100,000-file run needs hours of Azurite CPU). `--azurite-sql` starts a MariaDB for this process
and gives each block's Azurite an empty database of its own (bench/sql_azurite.py), where a lookup
costs the same at any count. The report names the store used; docs/performance.md has the figures.

    .venv/bin/python -m bench.scale_run --scale 100000 --seed-files 0 --azurite-sql
    .venv/bin/python -m bench.scale_run --blob-resident 100000 --azurite-sql
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from bench import sql_azurite
from bench.exactness import check_exact
from bench.profile_map import process_cpu_s, profiler_launcher, summary_of
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
# `--code DIR`: the checkout whose topn the child runs (a worktree of an older commit: before/after).
CODE_ROOT_VARIABLE = "TOPN_BENCH_CODE_ROOT"
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


def topn_child(
    files_dir: Path | str,
    out_dir: Path,
    batch: str,
    blob: str,
    state_dir: Path,
    timeout_s: float,
    launcher: Sequence[str] = (),
) -> tuple[float, subprocess.CompletedProcess[str], resource.struct_rusage]:
    """`topn run --json` as a child process against the given services: wall time, output, own rusage.

    `launcher` replaces the plain interpreter (e.g. a profiler's command line ending in it). The
    child is waited with `os.wait4`, so its CPU and peak RSS are its own (RUSAGE_CHILDREN would also
    hold every other process this one waited for: a MariaDB set-up, an earlier block's services).
    """
    child_root = Path(os.environ.get(CODE_ROOT_VARIABLE) or ROOT)
    env = {name: value for name, value in os.environ.items() if not name.startswith("TOPN_")}
    env.update(
        {
            "TOPN_BATCH_ENDPOINT": batch,
            "TOPN_STORAGE_BLOB_ENDPOINT": blob,
            "TOPN_LOCAL_STATE_DIR": str(state_dir),
            "TOPN_POOL_ID": "topn-scale",
            "PYTHONPATH": str(child_root),
        }
    )
    command = [
        *(launcher or [sys.executable]),
        *("-m", "orchestrator", "run", str(files_dir), "--out", str(out_dir), "--json"),
    ]
    started = time.monotonic()
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        # `python -m` imports from the working folder first.
        child = subprocess.Popen(command, env=env, cwd=child_root, stdout=stdout, stderr=stderr)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            child.kill()

        deadline = threading.Timer(timeout_s, kill)
        deadline.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            deadline.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)  # waited here, not by Popen
        wall = time.monotonic() - started
        stdout.seek(0)
        stderr.seek(0)
        output, errors = stdout.read().decode("utf-8"), stderr.read().decode("utf-8")
    if timed_out.is_set():
        raise SystemExit(f"topn run did not finish in {timeout_s:.0f} s:\n{errors[-3000:]}")
    if child.returncode != 0:
        raise SystemExit(f"topn run failed ({child.returncode}):\n{errors[-3000:]}")
    return wall, subprocess.CompletedProcess(command, child.returncode, output, errors), usage


def run_topn(
    files_dir: Path, out_dir: Path, batch: str, blob: str, state_dir: Path
) -> tuple[float, dict[str, Any]]:
    wall, completed, _ = topn_child(files_dir, out_dir, batch, blob, state_dir, timeout_s=3600)
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


@dataclass(frozen=True)
class ScaleFigures:
    """One `topn run` of a scale block."""

    files: int
    wall_s: float
    cpu_s: float  # user + system of the topn process
    cpu_system_s: float  # the system (kernel) part of it
    peak_rss_mb: float
    storage_requests: int
    storage_by_operation: dict[str, int]
    batch_requests: int
    tasks: int
    first_task_s: float | None
    stages_s: dict[str, float]
    azurite_get_ms: float
    azurite_cpu_s: float = 0.0  # Azurite's CPU over the block (one Node process)
    emulator_cpu_s: float = 0.0  # the emulator's, with its finished task processes (the nodes' work)


def loadavg() -> str:
    return Path("/proc/loadavg").read_text(encoding="utf-8").strip()


def run_topn_measured(
    files_dir: Path | str,
    out_dir: Path,
    batch: str,
    blob: str,
    state_dir: Path,
    profile_dir: Path | None = None,
) -> ScaleFigures:
    """`topn run` as a child process; its CPU and peak RSS from its own rusage (os.wait4)."""
    label = str(sum(1 for _ in files_dir.rglob("*.txt"))) if isinstance(files_dir, Path) else "blobs"
    launcher = profiler_launcher(profile_dir, label)
    wall, completed, usage = topn_child(files_dir, out_dir, batch, blob, state_dir, 7200, launcher)
    summary = summary_of(completed.stdout)
    totals = summary["totals"]
    if totals["succeeded"] != totals["files"]:
        raise SystemExit(f"topn run: {totals['failed']} of {totals['files']} files failed")
    events = [json.loads(line) for line in completed.stderr.splitlines() if line.startswith("{")]
    submitted = [event for event in events if event.get("event") == "tasks.submitted"]
    storage = {operation: int(count) for operation, count in totals["requests"].get("storage", {}).items()}
    listed = [event for event in events if event.get("event") == "inputs.listed"]  # az:// inputs
    if listed:  # listed before the run is created: not in the run's own count
        storage["list_blobs (inputs)"] = sum(int(event["storage_requests"]) for event in listed)
    batch_counts = totals["requests"].get("batch", {})
    return ScaleFigures(
        files=int(totals["files"]),
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        cpu_system_s=usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,  # kilobytes on Linux
        storage_requests=sum(storage.values()),
        storage_by_operation=storage,
        batch_requests=sum(int(count) for count in batch_counts.values()),
        tasks=len({entry["task_id"] for entry in summary["files"]}),
        first_task_s=submitted[0].get("first_task_s") if submitted else None,
        stages_s=dict(totals["stages_s"]),
        azurite_get_ms=0.0,
    )


async def azurite_get_latency_ms(
    blob_endpoint: str, container: str, blob_name: str, count: int = 200
) -> float:
    """Mean time of one small GET at the blob count Azurite holds now (it slows as it holds more)."""
    from azure.storage.blob.aio import BlobServiceClient

    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={local.AZURITE_ACCOUNT_NAME};"
        f"AccountKey={local.AZURITE_ACCOUNT_KEY};BlobEndpoint={blob_endpoint};"
    )
    async with BlobServiceClient.from_connection_string(connection) as service:
        blob = service.get_blob_client(container, blob_name)
        await (await blob.download_blob()).readall()
        started = time.monotonic()
        for _ in range(count):
            await (await blob.download_blob()).readall()
        return (time.monotonic() - started) / count * 1000


async def scale_block(count: int, base: Path, profile_dir: Path | None = None) -> ScaleFigures:
    """Fresh Azurite and emulator, `count` files, one `topn run` (under py-spy with `profile_dir`)."""
    folder = base / f"block-{count}"
    generate_files(folder / "texts", count)
    azurite = await sql_azurite.start_azurite(folder / "azurite", folder / "logs")
    try:
        emulator = await local.start_emulator(folder / "emulator", folder / "logs")
        try:
            figures = await anyio.to_thread.run_sync(
                run_topn_measured,
                folder / "texts",
                folder / "out",
                emulator.endpoint,
                azurite.endpoint,
                folder / "state",
                profile_dir,
            )
            check_exact(folder / "texts", folder / "out")
            # Read before the latency probe below, which would add its own requests to Azurite's.
            azurite_cpu_s, emulator_cpu_s = process_cpu_s(azurite.pid), process_cpu_s(emulator.pid)
            run_id = json.loads((folder / "out" / "summary.json").read_text(encoding="utf-8"))["run_id"]
            latency = await azurite_get_latency_ms(  # a small blob of every run (inputs go in packs)
                azurite.endpoint, f"topn-out-{run_id}", "part0/doc00000_OUTPUT.txt"
            )
            return dataclasses.replace(
                figures,
                azurite_get_ms=latency,
                azurite_cpu_s=azurite_cpu_s,
                emulator_cpu_s=emulator_cpu_s,
            )
        finally:
            await local.stop_service(emulator)
    finally:
        await local.stop_service(azurite)


async def seed_block(count: int, base: Path) -> float:
    """Fresh Azurite and emulator, `count` files the seed tutorial's way; its wall time."""
    folder = base / f"seed-{count}"
    generate_files(folder / "texts", count)
    azurite = await sql_azurite.start_azurite(folder / "azurite", folder / "logs")
    try:
        emulator = await local.start_emulator(folder / "emulator", folder / "logs")
        try:
            endpoints = SeedEndpoints(
                emulator.endpoint,
                local.EMULATOR_ACCOUNT_NAME,
                local.EMULATOR_ACCOUNT_KEY,
                azurite.endpoint,
                local.AZURITE_ACCOUNT_NAME,
                local.AZURITE_ACCOUNT_KEY,
            )
            node_script = await anyio.to_thread.run_sync(build_node_script)
            files = sorted((folder / "texts").rglob("*.txt"))
            seed = await run_seed_baseline(
                endpoints, files, node_script, folder / "out", pool_id="seed-scale"
            )
            print(
                f"seed way: {seed.succeeded}/{seed.tasks} tasks succeeded in {seed.wall_s:.1f} s", flush=True
            )
            return seed.wall_s
        finally:
            await local.stop_service(emulator)
    finally:
        await local.stop_service(azurite)


async def measure_scale(
    counts: list[int], seed_files: int, base: Path, profile_dir: Path | None = None
) -> None:
    """Each count's topn block, then the seed once; one report with ratios and the machine's load."""
    load_before = loadavg()
    results = []
    for count in counts:
        figures = await scale_block(count, base, profile_dir)
        print(f"topn {count}: {figures}  loadavg {loadavg()}", flush=True)
        results.append(figures)
    seed_wall = await seed_block(seed_files, base) if seed_files else None
    print(f"\n/proc/loadavg before: {load_before}; after: {loadavg()}")
    print(f"Azurite metadata: {sql_azurite.store_name()}")
    header = (
        f"{'files':>7} {'wall s':>8} {'seed s (scaled)':>16} {'speed-up':>9} {'CPU ms/file':>12} "
        f"{'storage req/file':>17} {'peak RSS MB':>12} {'tasks':>6} {'1st task s':>11} {'Azurite GET ms':>15}"
    )
    print(header)
    for figures in results:
        scaled = seed_wall * figures.files / seed_files if seed_wall is not None else None
        scaled_text = f"{scaled:.0f}" if scaled else "-"
        ratio_text = f"{scaled / figures.wall_s:.1f}x" if scaled else "-"
        cpu_ms = figures.cpu_s / figures.files * 1000
        per_file = figures.storage_requests / figures.files
        print(
            f"{figures.files:>7} {figures.wall_s:>8.1f} {scaled_text:>16} {ratio_text:>9} "
            f"{cpu_ms:>12.2f} {per_file:>17.3f} "
            f"{figures.peak_rss_mb:>12.0f} {figures.tasks:>6} {figures.first_task_s!s:>11} "
            f"{figures.azurite_get_ms:>15.1f}"
        )
        print(
            f"        CPU system (kernel) part {figures.cpu_system_s / figures.files * 1000:.2f} ms/file; "
            f"Azurite CPU {figures.azurite_cpu_s:.1f} s, "
            f"emulator + nodes CPU {figures.emulator_cpu_s:.1f} s; "
            f"storage by operation: {figures.storage_by_operation}; stages {figures.stages_s}"
        )
    if seed_wall is not None:
        print(f"seed way measured at {seed_files} files: {seed_wall:.1f} s, scaled linearly to each count")


BLOB_CONTAINER = "benchlogs"
BLOB_PREFIX = "texts/"


async def seed_blobs(blob_endpoint: str, folder: Path, concurrency: int = 32) -> int:
    """Upload the generated files under `folder` as blobs of BLOB_CONTAINER (the user's data); how many."""
    from azure.storage.blob.aio import BlobServiceClient

    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={local.AZURITE_ACCOUNT_NAME};"
        f"AccountKey={local.AZURITE_ACCOUNT_KEY};BlobEndpoint={blob_endpoint};"
    )
    files = iter(await anyio.to_thread.run_sync(lambda: sorted(folder.rglob("*.txt"))))
    uploaded = 0
    async with BlobServiceClient.from_connection_string(connection) as service:
        await service.create_container(BLOB_CONTAINER)

        async def worker() -> None:
            nonlocal uploaded
            for path in files:
                name = BLOB_PREFIX + path.relative_to(folder).as_posix()
                data = await anyio.Path(path).read_bytes()
                await service.get_blob_client(BLOB_CONTAINER, name).upload_blob(data)
                uploaded += 1

        async with anyio.create_task_group() as group:
            for _ in range(concurrency):
                group.start_soon(worker)
    return uploaded


async def blob_block(count: int, base: Path) -> ScaleFigures:
    """Fresh Azurite and emulator, `count` blobs already in Storage, one `topn run az://…` (issue 13, 7)."""
    folder = base / f"blobs-{count}"
    generate_files(folder / "texts", count)
    azurite = await sql_azurite.start_azurite(folder / "azurite", folder / "logs")
    try:
        emulator = await local.start_emulator(folder / "emulator", folder / "logs")
        try:
            seeded_at = time.monotonic()
            await seed_blobs(azurite.endpoint, folder / "texts")
            print(f"seeded {count} blobs in {time.monotonic() - seeded_at:.1f} s", flush=True)
            figures = await anyio.to_thread.run_sync(
                run_topn_measured,
                f"az://{BLOB_CONTAINER}/{BLOB_PREFIX}",
                folder / "out",
                emulator.endpoint,
                azurite.endpoint,
                folder / "state",
            )
            check_exact(folder / "texts", folder / "out")
            latency = await azurite_get_latency_ms(
                azurite.endpoint, BLOB_CONTAINER, f"{BLOB_PREFIX}part0/doc00000.txt"
            )
            return dataclasses.replace(figures, azurite_get_ms=latency)
        finally:
            await local.stop_service(emulator)
    finally:
        await local.stop_service(azurite)


async def measure_blob_resident(counts: list[int], base: Path) -> None:
    """Each count's blob-resident block: CPU and storage requests per file, the listing included."""
    print(f"/proc/loadavg before: {loadavg()}; Azurite metadata: {sql_azurite.store_name()}", flush=True)
    results = [await blob_block(count, base) for count in counts]
    print(f"/proc/loadavg after: {loadavg()}")
    print(
        f"{'blobs':>7} {'wall s':>8} {'CPU ms/file':>12} {'storage req/file':>17} {'list requests':>14} "
        f"{'peak RSS MB':>12} {'tasks':>6} {'1st task s':>11} {'Azurite GET ms':>15}"
    )
    for figures in results:
        print(
            f"{figures.files:>7} {figures.wall_s:>8.1f} {figures.cpu_s / figures.files * 1000:>12.2f} "
            f"{figures.storage_requests / figures.files:>17.4f} "
            f"{figures.storage_by_operation.get('list_blobs (inputs)', 0):>14} {figures.peak_rss_mb:>12.0f} "
            f"{figures.tasks:>6} {figures.first_task_s!s:>11} {figures.azurite_get_ms:>15.1f}"
        )
        print(
            f"        CPU system (kernel) part {figures.cpu_system_s / figures.files * 1000:.2f} ms/file; "
            f"storage by operation: {figures.storage_by_operation}; stages {figures.stages_s}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument(
        "--scale", type=int, nargs="+", help="issue 13's figures: these file counts, each on fresh services"
    )
    parser.add_argument(
        "--seed-files", type=int, default=2000, help="with --scale: the seed way's count (0: none)"
    )
    parser.add_argument(
        "--blob-resident", type=int, nargs="+", help="these blob counts, already in Storage: topn run az://…"
    )
    parser.add_argument("--skip-seed", action="store_true", help="no seed-way run")
    parser.add_argument(
        "--one-task-per-file",
        action="store_true",
        help="also run topn with packing off (orchestration alone)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="with --scale: run each topn child under py-spy, its stacks in this folder "
        "(bench/profile_map.py turns them into CPU ms per file and stage)",
    )
    parser.add_argument(
        "--code",
        type=Path,
        help="run the topn child from this checkout instead (a worktree of main: before/after side by side)",
    )
    parser.add_argument(
        "--azurite-sql",
        action="store_true",
        help="Azurite keeps its metadata in a MariaDB started here (bench/sql_azurite.py)",
    )
    args = parser.parse_args()
    if args.code:
        os.environ[CODE_ROOT_VARIABLE] = str(args.code.resolve())
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="topn-scale-"))
        if args.azurite_sql:
            stack.enter_context(sql_azurite.mariadb_server(Path(folder)))
        if args.blob_resident:
            anyio.run(measure_blob_resident, args.blob_resident, Path(folder))
        elif args.scale:
            profile_dir = args.profile.absolute() if args.profile else None
            anyio.run(measure_scale, args.scale, args.seed_files, Path(folder), profile_dir)
        else:
            anyio.run(measure, args.files, args.skip_seed, args.one_task_per_file, Path(folder))


if __name__ == "__main__":
    main()
