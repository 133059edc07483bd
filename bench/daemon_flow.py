"""Daemon end to end on the local emulators: a burst of files dropped at once, or a trickle.

    .venv/bin/python bench/daemon_flow.py burst [--files 10000] [--max-active-runs 4]
    .venv/bin/python bench/daemon_flow.py trickle [--duration 300] [--rate 1]

Local mode (Azurite and the emulator started for the run, the real node script). `burst` reports
the time until every file has its result, that every file is exactly once in done/ with exactly one
`_OUTPUT` file, the most active jobs seen (never above `max_active_runs`), and Batch requests per
minute per active run. `trickle` reports p50/p95 from a file complete to its result on disk, against
issue 12's goal of `batch_max_wait_s` + 10 s. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from orchestrator.azure.clients import BATCH
from orchestrator.events import configure_events
from orchestrator.service.claims import DaemonFolders
from orchestrator.service.daemon import Daemon, run_daemon
from orchestrator.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]


def settings_for(state: Path, **daemon: Any) -> Any:
    settings = load_settings(ROOT / "config" / "local.toml", {"TOPN_LOCAL_STATE_DIR": str(state)})
    return dataclasses.replace(settings, daemon=dataclasses.replace(settings.daemon, **daemon))


def _ready(ready: list[Daemon], event: anyio.Event) -> Any:
    def on_ready(daemon: Daemon) -> None:
        ready.append(daemon)
        event.set()

    return on_ready


def count_results(folders: DaemonFolders) -> tuple[int, dict[str, int]]:
    done = sum(1 for path in folders.done.rglob("*") if path.is_file())
    outputs: dict[str, int] = {}
    for path in folders.outbox.rglob("*_OUTPUT*"):
        outputs[path.name] = outputs.get(path.name, 0) + 1
    return done, outputs


async def burst(root: Path, files: int, max_active_runs: int) -> None:
    folders = DaemonFolders(root / "inbox", root / "done", root / "failed", root / "outbox")
    folders.create()
    settings = settings_for(
        root / "state", max_active_runs=max_active_runs, batch_max_wait_s=2.0, settle_s=0.3, min_age_s=0.5
    )
    ready: list[Daemon] = []
    is_ready = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(
            lambda: run_daemon(settings, folders, listen="127.0.0.1:0", on_ready=_ready(ready, is_ready))
        )
        await is_ready.wait()
        daemon = ready[0]
        resolved = daemon.services.settings.batch
        credential = AzureNamedKeyCredential(resolved.account_name, resolved.account_key or "")
        started = time.monotonic()
        for index in range(files):
            (folders.inbox / f"b{index:05d}.txt").write_text(f"burst{index} words words\n", encoding="utf-8")
        written = time.monotonic()
        requests_before = daemon.services.clients.requests.total(BATCH)
        most_active, active_samples = 0, []
        async with BatchClient(resolved.endpoint, credential) as observer:
            while True:
                active = [job async for job in observer.list_jobs() if job.state in ("active", "terminating")]
                most_active = max(most_active, len(active))
                active_samples.append(len(daemon.state.in_flight))
                done, outputs = await anyio.to_thread.run_sync(count_results, folders)
                if done >= files:
                    break
                await anyio.sleep(1.0)
        elapsed = time.monotonic() - started
        requests = daemon.services.clients.requests.total(BATCH) - requests_before
        daemon.policy.on_signal(signal.SIGTERM, time.monotonic())
    mean_active = (
        statistics.fmean(sample for sample in active_samples if sample) if any(active_samples) else 0
    )
    print(f"burst: {files} files written in {written - started:.1f} s, all results in {elapsed:.1f} s")
    print(f"  throughput: {files / elapsed:.1f} files/s end to end")
    most = max(outputs.values())
    print(f"  exactly once: done={done} distinct outputs={len(outputs)} max outputs per input={most}")
    print(f"  most active jobs seen: {most_active} (cap max_active_runs={max_active_runs})")
    per_minute = requests / (elapsed / 60) / max(mean_active, 1)
    print(
        f"  Batch requests: {requests} total, {per_minute:.0f}/min per active run ({mean_active:.1f} active)"
    )


async def trickle(root: Path, duration_s: float, rate: float) -> None:
    folders = DaemonFolders(root / "inbox", root / "done", root / "failed", root / "outbox")
    folders.create()
    # The defaults (config/local.toml closes batches after 5 s for trying things out).
    settings = settings_for(root / "state", batch_max_wait_s=30.0, settle_s=1.0, min_age_s=2.0)
    ready: list[Daemon] = []
    is_ready = anyio.Event()
    latencies: list[float] = []
    async with anyio.create_task_group() as group:
        group.start_soon(
            lambda: run_daemon(settings, folders, listen="127.0.0.1:0", on_ready=_ready(ready, is_ready))
        )
        await is_ready.wait()
        written: dict[str, float] = {}
        count = int(duration_s * rate)
        for index in range(count):
            name = f"t{index:05d}.txt"
            (folders.inbox / name).write_text(f"trickle{index} words\n", encoding="utf-8")
            written[name] = time.time()
            await anyio.sleep(1 / rate)
        deadline = time.monotonic() + 120
        while len(latencies) < count and time.monotonic() < deadline:
            latencies = []
            for path in folders.outbox.rglob("*_OUTPUT*"):
                name = path.name.replace("_OUTPUT", "")
                if name in written:
                    latencies.append(path.stat().st_mtime - written[name])
            await anyio.sleep(1.0)
        ready[0].policy.on_signal(signal.SIGTERM, time.monotonic())
    ordered = sorted(latencies)
    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
    goal = settings.daemon.batch_max_wait_s + 10
    print(f"trickle: {len(ordered)} of {count} files at {rate}/s over {duration_s:.0f} s")
    median = statistics.median(ordered)
    print(f"  written -> result on disk: p50 {median:.1f} s, p95 {p95:.1f} s, max {ordered[-1]:.1f} s")
    print(f"  (includes settle_s + min_age_s before a file counts as complete); goal p95 <= {goal:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    burst_parser = sub.add_parser("burst")
    burst_parser.add_argument("--files", type=int, default=10000)
    burst_parser.add_argument("--max-active-runs", type=int, default=4)
    trickle_parser = sub.add_parser("trickle")
    trickle_parser.add_argument("--duration", type=float, default=300.0)
    trickle_parser.add_argument("--rate", type=float, default=1.0)
    args = parser.parse_args()
    configure_events("json", Path(os.devnull).open("w"), "warning")  # noqa: SIM115 - lives with the process
    with tempfile.TemporaryDirectory(prefix="topn-daemon-bench-") as folder:
        if args.mode == "burst":
            anyio.run(burst, Path(folder), args.files, args.max_active_runs)
        else:
            anyio.run(trickle, Path(folder), args.duration, args.rate)


if __name__ == "__main__":
    main()
