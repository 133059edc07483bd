"""Emulator throughput: add N no-op tasks through the real SDK's create_tasks and wait for all of them.

Prints tasks/s for submission and for completion, the emulator's requests by operation, and the
ratio against a baseline measured in the same run: spawning `/bin/true` directly from asyncio with
the same process limit (the floor the emulator's scheduling, bookkeeping and HTTP sit on top of).

    .venv/bin/python bench/emulator_throughput.py [--tasks 10000] [--processes 2] [--nodes 2 --slots 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from azure.batch import models
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from orchestrator.local import processes as local


async def baseline_spawns(count: int, concurrency: int) -> float:
    """Processes per second when `/bin/true` is spawned and waited for directly, `concurrency` at a time.

    Worker threads do the fork/exec, as in the emulator, so the ratio isolates the emulator's own
    cost: HTTP, bookkeeping, folders, log files and events.
    """
    limiter = anyio.CapacityLimiter(concurrency)

    def one() -> None:
        subprocess.run(["/bin/true"], stdin=subprocess.DEVNULL, check=True)

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(partial(anyio.to_thread.run_sync, one, limiter=limiter))
    return count / (time.perf_counter() - started)


def read_stats(endpoint: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{endpoint}/_emulator/stats", timeout=10) as response:  # noqa: S310 (loopback)
        stats: dict[str, Any] = json.load(response)
        return stats


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="emulator-bench-") as scratch:
        root = Path(scratch)
        service = await local.start_emulator(
            root / "nodes", root / "logs", extra_args=["--nodes-max-processes", str(args.processes)]
        )
        try:
            credential = AzureNamedKeyCredential(local.EMULATOR_ACCOUNT_NAME, local.EMULATOR_ACCOUNT_KEY)
            async with BatchClient(service.endpoint, credential) as client:
                await client.create_pool(
                    models.BatchPoolCreateOptions(
                        id="bench",
                        vm_size="standard_d2s_v3",
                        target_dedicated_nodes=args.nodes,
                        task_slots_per_node=args.slots,
                        virtual_machine_configuration=models.VirtualMachineConfiguration(
                            image_reference=models.BatchVmImageReference(
                                publisher="canonical", offer="ubuntu-24_04-lts", sku="server"
                            ),
                            node_agent_sku_id="batch.node.ubuntu 24.04",
                        ),
                    )
                )
                await client.create_job(
                    models.BatchJobCreateOptions(id="bench", pool_info=models.BatchPoolInfo(pool_id="bench"))
                )
                tasks = [
                    models.BatchTaskCreateOptions(id=f"t{index:06d}", command_line="/bin/true")
                    for index in range(args.tasks)
                ]
                started = time.perf_counter()
                await client.create_tasks("bench", tasks, max_concurrency=4)
                submitted = time.perf_counter()
                while True:
                    counts = (await client.get_job_task_counts("bench")).task_counts
                    if counts.completed >= args.tasks:
                        break
                    await asyncio.sleep(0.25)
                finished = time.perf_counter()
                assert counts.succeeded == args.tasks, (
                    f"only {counts.succeeded} of {args.tasks} tasks succeeded"
                )
            stats = read_stats(service.endpoint)
        finally:
            await local.stop_service(service)
    baseline = await baseline_spawns(args.baseline_tasks, args.processes)
    emulator_rate = args.tasks / (finished - started)
    return {
        "tasks": args.tasks,
        "processes": args.processes,
        "submit_tasks_per_s": round(args.tasks / (submitted - started), 1),
        "complete_tasks_per_s": round(emulator_rate, 1),
        "baseline_spawns_per_s": round(baseline, 1),
        "ratio_to_baseline": round(emulator_rate / baseline, 3),
        "requests": stats["requests"],
        "requests_total": stats["requests_total"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="--nodes-max-processes")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--baseline-tasks", type=int, default=2000)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(
        f"emulator: {result['tasks']} no-op tasks, submitted at {result['submit_tasks_per_s']} tasks/s, "
        f"completed at {result['complete_tasks_per_s']} tasks/s "
        f"({result['ratio_to_baseline']}x of direct spawning at {result['baseline_spawns_per_s']}/s)"
    )
    print(
        "requests by operation:", ", ".join(f"{name}={count}" for name, count in result["requests"].items())
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
