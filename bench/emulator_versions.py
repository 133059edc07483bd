"""The api-version adapters' own cost per task: the oldest version's translation against the current one.

bench/emulator_throughput.py drives the current SDK, whose adapter has no steps, so it shows the
layer costs nothing on that path but says nothing of an old client's. This times what an old
client adds on the two paths a task takes through the emulator: its add-collection request
translated up, and a task listing (100 tasks of the shape the emulator answers) translated down.
Figures are microseconds per task, to set beside the emulator's per-task time that
emulator_throughput reports (about 3 ms at 330 tasks/s on the development machine).

    .venv/bin/python bench/emulator_versions.py [--tasks 100] [--repeat 200] [--version 2016-07-01.3.1]
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from typing import Any

from emulator.versions import SUPPORTED_VERSIONS, adapter_for

CURRENT = SUPPORTED_VERSIONS[-1]


def old_task_request(index: int) -> dict[str, Any]:
    """One task of an add-collection body as a tutorial-era client sends it."""
    return {
        "id": f"task{index:05d}",
        "commandLine": "/bin/sh -c 'python3 $AZ_BATCH_NODE_SHARED_DIR/node.pyz unit'",
        "runElevated": False,
        "resourceFiles": [{"blobSource": f"http://127.0.0.1/in/doc{index}.txt?sv=x", "filePath": "doc.txt"}],
        "constraints": {"maxTaskRetryCount": 1},
    }


def current_task_answer(index: int) -> dict[str, Any]:
    """One task of a task listing in the current shape, as the emulator builds it before translation."""
    return {
        "id": f"task{index:05d}",
        "url": f"http://127.0.0.1/jobs/j/tasks/task{index:05d}",
        "state": "completed",
        "commandLine": "/bin/sh -c 'python3 node.pyz unit'",
        "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}},
        "resourceFiles": [{"httpUrl": f"http://127.0.0.1/in/doc{index}.txt?sv=x", "filePath": "doc.txt"}],
        "constraints": {"maxTaskRetryCount": 1, "retentionTime": "P1D"},
        "requiredSlots": 1,
        "executionInfo": {"retryCount": 0, "requeueCount": 0, "exitCode": 0, "result": "success"},
        "nodeInfo": {"poolId": "p", "nodeId": "n1"},
    }


def per_task_us(
    translate: Callable[[dict[str, Any]], object], body: dict[str, Any], tasks: int, repeat: int
) -> float:
    """Microseconds per task of `translate`, each call on a copy of `body` made before timing."""
    copies = [copy.deepcopy(body) for _ in range(repeat)]
    started = time.perf_counter()
    for each in copies:
        translate(each)
    spent = time.perf_counter() - started
    return spent / (repeat * tasks) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=100, help="tasks per body (the service takes 100)")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--version", default=SUPPORTED_VERSIONS[0], help="the old api-version to time")
    args = parser.parse_args()

    old, current = adapter_for(args.version), adapter_for(CURRENT)
    request = {"value": [old_task_request(i) for i in range(args.tasks)]}
    answer = {"value": [current_task_answer(i) for i in range(args.tasks)]}
    figures = {
        "add collection, up": (
            per_task_us(lambda b: old.request("create_task_collection", b), request, args.tasks, args.repeat),
            per_task_us(
                lambda b: current.request("create_task_collection", b), request, args.tasks, args.repeat
            ),
        ),
        "task list, down": (
            per_task_us(lambda b: old.answer("list_tasks", b), answer, args.tasks, args.repeat),
            per_task_us(lambda b: current.answer("list_tasks", b), answer, args.tasks, args.repeat),
        ),
    }
    steps = len(old.steps)
    print(f"adapters: {args.tasks} tasks per body, {args.repeat} bodies, {steps} steps for {args.version}")
    for name, (old_us, current_us) in figures.items():
        print(f"  {name:<20} {args.version}: {old_us:6.2f} us/task   {CURRENT}: {current_us:6.2f} us/task")
    total = sum(old_us for old_us, _ in figures.values())
    print(f"  an old client adds {total:.1f} us per task added and listed once")


if __name__ == "__main__":
    main()
