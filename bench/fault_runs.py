"""Fault figures (issue 5, point 5): the same N-file run, clean and under each kind of fault.

Four scenarios, each against its own freshly started emulator (so its request counters belong to
that scenario alone) and one Azurite that keeps its data in a folder:

* clean:      no faults;
* 5xx+429:    10 % 503, 10 % 500 and 5 % 429 (Retry-After: 1 s) on every Batch request;
* preempt:    30 % of task attempts preempted (Batch requeues them);
* azurite:    Azurite stopped for 3 s right after the first input is uploaded, then restarted on the
              same port and data folder.

Each scenario first runs a small warm-up run so that the measured run finds its pool ready, as
every run after the first does; the figures are the measured run's only. Every measured run is
checked against an independent reference (tests/e2e/run_cli.reference_top). Printed: wall time
and its ratio to the clean run, requests per Batch operation (GET /_emulator/stats), topn's own
request counts and stage times (the `run.completed` event), retries and the faults injected.
Nothing is asserted: benchmarks report.

    .venv/bin/python -m bench.fault_runs --files 500
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from orchestrator.local import processes as local
from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.fault_support import (
    check_summary,
    emulator_stats,
    run_topn_live,
    stats_delta,
    write_corpus,
)
from tests.e2e.run_cli import topn_environment

SCENARIOS: dict[str, list[str]] = {
    "clean": [],
    "5xx+429": [
        "--fault-seed",
        "11",
        "--fault-503",
        "0.10",
        "--fault-500",
        "0.10",
        "--fault-429",
        "0.05",
        "--fault-retry-after-s",
        "1",
    ],
    "preempt": ["--fault-seed", "22", "--fault-preempt", "0.3"],
    "azurite": [],
}
AZURITE_DOWN_S = 3.0


@dataclass
class Figures:
    """What one measured run cost."""

    name: str
    wall_s: float = 0.0
    exit_code: int = -1
    correct: bool = False
    problems: list[str] = field(default_factory=list)
    batch_by_operation: dict[str, int] = field(default_factory=dict)
    batch_total: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    completed: dict[str, Any] = field(default_factory=dict)
    retries_by_status: Counter[str] = field(default_factory=Counter)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def measure(
    name: str,
    extra_args: list[str],
    workdir: Path,
    storage: StorageEndpoint,
    azurite: local.ServiceProcess,
    files: int,
) -> tuple[Figures, local.ServiceProcess]:
    """One scenario; returns its figures and the Azurite now running (restarted in `azurite`)."""
    base = workdir / name
    emulator = await local.start_emulator(base / "nodes", base / "logs", extra_args=extra_args)
    batch = BatchEndpoint(
        emulator.endpoint,
        local.EMULATOR_ACCOUNT_NAME,
        local.EMULATOR_ACCOUNT_KEY,
        base / "nodes",
        base / "logs",
        emulator.pid,
    )
    env = topn_environment(
        batch,
        storage,
        base / ".topn",
        TOPN_POOL_ID=f"faults-bench-{name.replace('+', '-')}",
        TOPN_RETRY_MAX_ATTEMPTS="12",
        TOPN_RETRY_DEADLINE_S="120",
    )
    figures = Figures(name)
    try:
        write_corpus(base / "warmup", 4, seed=1)
        warmup = await run_topn_live(["run", "warmup", "--out", "warmup-out", "--json"], base, env)
        if warmup.exit_code != 0:
            figures.problems.append(f"warm-up run failed: {warmup.stderr[-500:]}")
            return figures, azurite
        texts = write_corpus(base / "in", files, seed=files)
        current = azurite
        first_upload = anyio.Event()

        async def watch(event: dict[str, Any]) -> None:
            # An input's own blob or a unit's pack (small inputs go up packed: naming.unit_pack_blob).
            blob = str(event.get("blob", ""))
            if event["event"] == "blob.uploaded" and (
                blob.startswith("runs/") or (blob.startswith("units/") and blob.endswith(".pack"))
            ):
                first_upload.set()

        async def restart_azurite() -> None:
            nonlocal current
            await first_upload.wait()
            port = int(current.endpoint.rsplit(":", 1)[1].split("/", 1)[0])
            await local.stop_service(current)
            await anyio.sleep(AZURITE_DOWN_S)
            current = await local.start_azurite(workdir / "azurite-data", workdir / "azurite-logs", port=port)

        before = await emulator_stats(batch.endpoint)
        started = time.monotonic()
        args = ["run", "in", "--out", "out", "--json", "--log-level", "debug"]
        async with anyio.create_task_group() as group:
            if name == "azurite":
                group.start_soon(restart_azurite)
            run = await run_topn_live(args, base, env, on_event=watch)
            first_upload.set()
        figures.wall_s = time.monotonic() - started
        delta = stats_delta(before, await emulator_stats(batch.endpoint))
        figures.exit_code = run.exit_code
        figures.batch_by_operation = delta["requests"]
        figures.batch_total = delta["requests_total"]
        figures.faults = delta["faults_injected"]
        events = run.events()
        for event in events:
            if event["event"] == "request.retried":
                figures.retries_by_status[str(event["status_code"] or event["error_type"])] += 1
            if event["event"] == "run.completed":
                figures.completed = event
        if run.exit_code == 0:
            figures.problems = check_summary(run.summary(), texts)
        else:
            figures.problems = [f"exit {run.exit_code}: {run.stderr[-500:]}"]
        figures.correct = not figures.problems
        return figures, current
    finally:
        await local.stop_service(emulator)


def print_report(results: list[Figures], files: int) -> None:
    clean = results[0].wall_s or 1.0
    print(f"\nfault runs: {files} files each (warm pool), same corpus, one scenario per emulator\n")
    header = (
        f"{'scenario':<9} {'wall s':>7} {'x clean':>7} {'exit':>4} {'correct':>7} {'batch req':>9} "
        f"{'storage req':>11} {'retries':>7}  faults injected"
    )
    print(header)
    print("-" * len(header))
    for figures in results:
        retries = sum(figures.retries_by_status.values())
        print(
            f"{figures.name:<9} {figures.wall_s:>7.1f} {figures.wall_s / clean:>7.2f} {figures.exit_code:>4} "
            f"{'yes' if figures.correct else 'NO':>7} {figures.batch_total:>9} "
            f"{figures.completed.get('storage_requests', '-'):>11} {retries:>7}  "
            f"{dict(sorted(figures.faults.items())) or '-'}"
        )
    operations = sorted({operation for figures in results for operation in figures.batch_by_operation})
    print("\nBatch requests per operation (emulator stats; retries included)\n")
    print(f"{'operation':<24}" + "".join(f"{figures.name:>9}" for figures in results))
    for operation in operations:
        print(
            f"{operation:<24}"
            + "".join(f"{figures.batch_by_operation.get(operation, 0):>9}" for figures in results)
        )
    print("\nstage times from run.completed (s) and retries by cause\n")
    for figures in results:
        stages = {
            key: figures.completed.get(key)
            for key in ("staging_s", "provisioning_s", "submitting_s", "running_s", "collecting_s")
        }
        print(f"{figures.name:<9} {stages}  retries {dict(figures.retries_by_status) or '-'}")
    for figures in results:
        for problem in figures.problems[:5]:
            print(f"PROBLEM {figures.name}: {problem}")


async def main(files: int) -> None:
    with tempfile.TemporaryDirectory(prefix="topn-fault-bench-") as folder:
        workdir = Path(folder)
        azurite = await local.start_azurite(
            workdir / "azurite-data", workdir / "azurite-logs", port=free_port()
        )
        storage = StorageEndpoint(azurite.endpoint, local.AZURITE_ACCOUNT_NAME, local.AZURITE_ACCOUNT_KEY)
        results: list[Figures] = []
        try:
            for name, extra_args in SCENARIOS.items():
                figures, azurite = await measure(name, extra_args, workdir, storage, azurite, files)
                results.append(figures)
                print(f"{name}: {figures.wall_s:.1f} s, exit {figures.exit_code}", flush=True)
        finally:
            await local.stop_service(azurite)
        print_report(results, files)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=500, help="input files per run (default 500)")
    anyio.run(main, parser.parse_args().files)
