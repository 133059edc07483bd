"""The scheduler with a stand-in runner: every task completes exactly once, within the limits."""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import anyio.lowlevel
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.model import Node, NodeState, Task, TaskResult, TaskState, outcome_of_exit
from emulator.scheduler import Scheduler
from emulator.state import Account


def build(tmp: Path, nodes: int, slots: int) -> Account:
    account = Account("acct", tmp)
    pool = account.add_pool({"id": "p", "taskSlotsPerNode": slots})
    for index in range(nodes):
        node = Node(f"n{index}", "p", index, True, tmp / f"n{index}", slots, pool.created)
        pool.nodes[node.id] = node
        account.set_node_state(node, NodeState.IDLE)
    return account


@settings(max_examples=40, deadline=None)
@given(
    nodes=st.integers(1, 3),
    slots=st.integers(1, 3),
    limit=st.integers(1, 4),
    tasks=st.integers(1, 25),
    seed=st.integers(0, 1000),
)
def test_every_task_completes_once_within_slots_and_process_limit(
    nodes: int, slots: int, limit: int, tasks: int, seed: int
) -> None:
    account = build(Path("/nonexistent"), nodes, slots)
    job = account.add_job({"id": "j", "poolInfo": {"poolId": "p"}})
    chooser = random.Random(seed)
    attempts: dict[str, int] = {}
    requeues: dict[str, int] = {}
    running = 0
    peak = 0

    async def fake_attempt(task: Task, node: Node, attempt: int) -> None:
        """Exits 0 or 1 at random; sometimes the node is 'preempted' instead (once per task)."""
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        assert node.used_slots <= node.slots
        attempts[task.id] = attempts.get(task.id, 0) + 1
        await anyio.sleep(chooser.random() / 1000)
        running -= 1
        if task.id not in requeues and chooser.random() < 0.2:
            requeues[task.id] = 1
            account.requeue(task)
            return
        account.finish_attempt(task, attempt, outcome_of_exit(chooser.choice([0, 0, 1])))

    async def main() -> None:
        scheduler = Scheduler(account, fake_attempt, limit)
        async with anyio.create_task_group() as group:
            group.start_soon(scheduler.run)
            for index in range(tasks):
                account.add_task(
                    job, {"id": f"t{index:02d}", "commandLine": "x", "constraints": {"maxTaskRetryCount": 2}}
                )
                job.tasks[f"t{index:02d}"].max_task_retry_count = 2
                account.notify()
                await anyio.lowlevel.checkpoint()
            with anyio.fail_after(10):
                while True:
                    if job.counts.completed == tasks:
                        break
                    await anyio.sleep(0.001)
            group.cancel_scope.cancel()

    anyio.run(main)
    assert job.counts.completed == tasks and job.counts.active == job.counts.running == 0
    assert account.tasks_completed == tasks
    assert peak <= min(limit, nodes * slots)
    for task in job.tasks_in_order:
        assert task.state == TaskState.COMPLETED
        expected = 1 + task.retry_count + task.requeue_count
        assert attempts[task.id] == expected
        if task.result == TaskResult.FAILURE:
            assert task.retry_count == 2
    assert all(node.used_slots == 0 for node in account.pools["p"].nodes.values())
