"""Assigns active tasks to free node slots: event-driven, bounded by the process limit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import anyio
from anyio.abc import TaskGroup

from emulator.model import Job, JobState, Node, Pool, PoolState, Task, TaskState
from emulator.state import Account

RunAttempt = Callable[[Task, Node, int], Awaitable[None]]


def choose_node(nodes: Iterable[Node], required_slots: int, fill_type: str) -> Node | None:
    """The node a task goes to: `spread` prefers the emptiest node, `pack` the fullest that still fits."""
    fitting = [node for node in nodes if node.accepts_tasks() and node.free_slots >= required_slots]
    if not fitting:
        return None
    if fill_type == "pack":
        return min(fitting, key=lambda node: (node.free_slots, node.index))
    return max(fitting, key=lambda node: (node.free_slots, -node.index))


def runnable_jobs(jobs: Iterable[Job]) -> list[Job]:
    """Active jobs in the order they get slots: higher priority first, then older first."""
    return sorted(
        (job for job in jobs if job.state == JobState.ACTIVE), key=lambda job: (-job.priority, job.sequence)
    )


def pick_next(account: Account) -> tuple[Task, Node] | None:
    """The next (task, node) pair to start, or None when nothing can run now."""
    for pool in account.pools.values():
        if pool.state != PoolState.ACTIVE or not _has_free_slot(pool):
            continue
        for job in runnable_jobs(account.active_jobs_for_pool(pool.id)):
            if 0 <= job.max_parallel_tasks <= job.counts.running:
                continue
            task = job.next_ready()
            while task is not None and task.required_slots > pool.task_slots_per_node:
                # It could never fit on any node of this pool; failing it keeps the queue moving.
                account.fail_unschedulable(task, pool.task_slots_per_node)
                task = job.next_ready()
            if task is None:
                continue
            node = choose_node(pool.nodes.values(), task.required_slots, pool.fill_type)
            if node is not None:
                return task, node
    return None


def _has_free_slot(pool: Pool) -> bool:
    return any(node.accepts_tasks() and node.free_slots > 0 for node in pool.nodes.values())


class Scheduler:
    """Starts attempts whenever a task and a slot meet, never more than `max_processes` at once."""

    def __init__(self, account: Account, run_attempt: RunAttempt, max_processes: int) -> None:
        self.account = account
        self.run_attempt = run_attempt
        self.max_processes = max_processes
        self.in_flight = 0

    async def run(self) -> None:
        """Dispatch until cancelled; wakes on task adds, completions and nodes becoming idle."""
        async with anyio.create_task_group() as group:
            while True:
                wake = self.account.wake_event()
                self.dispatch(group)
                await wake.wait()

    def dispatch(self, group: TaskGroup) -> int:
        started = 0
        while self.in_flight < self.max_processes:
            chosen = pick_next(self.account)
            if chosen is None:
                break
            task, node = chosen
            attempt = self.account.assign(task, node)
            self.in_flight += 1
            started += 1
            group.start_soon(self._run_one, task, node, attempt, name=f"task {task.job_id}/{task.id}")
        return started

    async def _run_one(self, task: Task, node: Node, attempt: int) -> None:
        try:
            await self.run_attempt(task, node, attempt)
        finally:
            self.in_flight -= 1
            self.account.notify()
            if task.state == TaskState.RUNNING and self.account.is_current(task, attempt):
                # The runner must always report; this guards against a task stuck in running.
                self.account.requeue(task)
