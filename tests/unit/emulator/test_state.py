"""Pool, node, job and task state machines, task counts and the scheduler's choices (no processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.model import (
    AllocationState,
    AttemptOutcome,
    FailureInfo,
    JobState,
    Node,
    NodeState,
    TaskResult,
    TaskState,
    exit_job_action,
    outcome_of_exit,
    retries_left,
)
from emulator.scheduler import choose_node, pick_next
from emulator.state import Account
from emulator.wire import ServiceError

POOL_SPEC: dict[str, Any] = {"id": "p", "vmSize": "x", "taskSlotsPerNode": 2, "targetDedicatedNodes": 2}


def account_with_nodes(tmp_path: Path, nodes: int = 2, slots: int = 2, fill: str = "spread") -> Account:
    account = Account("acct", tmp_path)
    pool = account.add_pool(
        {**POOL_SPEC, "taskSlotsPerNode": slots, "taskSchedulingPolicy": {"nodeFillType": fill}}
    )
    for index in range(nodes):
        node = Node(f"n{index}", "p", index, True, tmp_path / f"n{index}", slots, pool.created)
        pool.nodes[node.id] = node
        account.set_node_state(node, NodeState.IDLE)
    return account


def add_job(account: Account, job_id: str = "j", **spec: Any) -> Any:
    return account.add_job({"id": job_id, "poolInfo": {"poolId": "p"}, **spec})


def add_tasks(account: Account, job: Any, count: int, **spec: Any) -> list[Any]:
    return [
        account.add_task(job, {"id": f"t{index:03d}", "commandLine": "x", **spec}) for index in range(count)
    ]


def recount(job: Any) -> dict[str, int]:
    counts = {"active": 0, "running": 0, "completed": 0, "succeeded": 0, "failed": 0}
    for task in job.tasks_in_order:
        bucket = {"active": "active", "preparing": "running", "running": "running", "completed": "completed"}
        counts[bucket[task.state.value]] += 1
        if task.state == TaskState.COMPLETED:
            counts["succeeded" if task.result == TaskResult.SUCCESS else "failed"] += 1
    return counts


def test_retry_rules() -> None:
    assert retries_left(0, 1) and not retries_left(1, 1)
    assert not retries_left(0, 0)
    assert retries_left(1000, -1)


def test_task_retries_then_completes_with_failure(tmp_path: Path) -> None:
    account = account_with_nodes(tmp_path)
    job = add_job(account)
    (task,) = add_tasks(account, job, 1, constraints={"maxTaskRetryCount": 1})
    task.max_task_retry_count = 1
    node = account.pools["p"].nodes["n0"]
    attempt = account.assign(task, node)
    assert (task.state, node.state, node.used_slots) == (TaskState.RUNNING, NodeState.RUNNING, 1)
    account.finish_attempt(task, attempt, outcome_of_exit(3))
    assert (task.state, task.retry_count, node.state) == (TaskState.ACTIVE, 1, NodeState.IDLE)
    assert pick_next(account) == (task, node)
    attempt = account.assign(task, node)
    assert task.last_retry_time is not None
    account.finish_attempt(task, attempt, outcome_of_exit(3))
    assert (task.state, task.result, task.exit_code) == (TaskState.COMPLETED, TaskResult.FAILURE, 3)
    assert task.failure is not None and task.failure.code == "FailureExitCode"
    assert job.counts.to_wire() == {"active": 0, "running": 0, "completed": 1, "succeeded": 0, "failed": 1}


def test_stale_attempt_reports_are_ignored(tmp_path: Path) -> None:
    account = account_with_nodes(tmp_path)
    job = add_job(account)
    (task,) = add_tasks(account, job, 1)
    node = account.pools["p"].nodes["n0"]
    first = account.assign(task, node)
    account.requeue(task)
    assert (task.state, task.requeue_count) == (TaskState.ACTIVE, 1)
    account.finish_attempt(task, first, outcome_of_exit(0))
    assert task.state == TaskState.ACTIVE
    second = account.assign(task, node)
    account.finish_attempt(task, second, outcome_of_exit(0))
    assert (task.state, task.result) == (TaskState.COMPLETED, TaskResult.SUCCESS)


def test_non_retryable_failures_complete_at_once(tmp_path: Path) -> None:
    account = account_with_nodes(tmp_path)
    job = add_job(account)
    (task,) = add_tasks(account, job, 1)
    task.max_task_retry_count = 5
    attempt = account.assign(task, account.pools["p"].nodes["n0"])
    failure = FailureInfo("usererror", "BlobNotFound", "missing")
    account.finish_attempt(task, attempt, AttemptOutcome(None, failure, retryable=False))
    assert (task.state, task.retry_count, task.exit_code) == (TaskState.COMPLETED, 0, None)


def test_terminatejob_ends_an_empty_job_and_rejects_new_tasks(tmp_path: Path) -> None:
    account = Account("acct", tmp_path)
    job = add_job(account, onAllTasksComplete="terminatejob")
    assert (job.state, job.terminate_reason) == (JobState.COMPLETED, "AllTasksComplete")
    with pytest.raises(ServiceError) as error:
        account.require_job_open(job)
    assert error.value.code == "JobCompleted"


def test_terminatejob_waits_for_every_task(tmp_path: Path) -> None:
    account = account_with_nodes(tmp_path)
    job = add_job(account)
    first, second = add_tasks(account, job, 2)
    account.update_job(job, {"onAllTasksComplete": "terminatejob"}, replace=False)
    assert job.state == JobState.ACTIVE
    for task in (first, second):
        attempt = account.assign(task, account.pools["p"].nodes["n0"])
        assert job.state == JobState.ACTIVE
        account.finish_attempt(task, attempt, outcome_of_exit(0))
    assert (job.state, job.terminate_reason) == (JobState.COMPLETED, "AllTasksComplete")


def test_terminate_job_ends_running_tasks_and_leaves_active_ones(tmp_path: Path) -> None:
    account = account_with_nodes(tmp_path)
    job = add_job(account)
    running, waiting = add_tasks(account, job, 2)
    account.assign(running, account.pools["p"].nodes["n0"])
    account.terminate_job(job, "UserTerminate")
    assert job.state == JobState.COMPLETED
    assert running.state == TaskState.COMPLETED and running.failure is not None
    assert running.failure.code == "TaskEnded"
    assert waiting.state == TaskState.ACTIVE
    assert pick_next(account) is None


def test_task_failure_can_terminate_the_job(tmp_path: Path) -> None:
    account = account_with_nodes(tmp_path)
    job = add_job(account, onTaskFailure="performexitoptionsjobaction")
    failing, other = add_tasks(account, job, 2)
    attempt = account.assign(failing, account.pools["p"].nodes["n0"])
    account.finish_attempt(failing, attempt, outcome_of_exit(1))
    assert (job.state, job.terminate_reason) == (JobState.COMPLETED, "TaskFailed")
    assert other.state == TaskState.ACTIVE


def test_exit_conditions_choose_the_job_action() -> None:
    spec = {
        "exitConditions": {
            "exitCodes": [{"code": 4, "exitOptions": {"jobAction": "none"}}],
            "exitCodeRanges": [{"start": 10, "end": 20, "exitOptions": {"jobAction": "disable"}}],
            "preProcessingError": {"jobAction": "none"},
        }
    }
    assert exit_job_action(spec, outcome_of_exit(4)) == "none"
    assert exit_job_action(spec, outcome_of_exit(15)) == "disable"
    assert exit_job_action(spec, outcome_of_exit(5)) == "terminate"
    assert exit_job_action(spec, outcome_of_exit(0)) == "none"
    blob = AttemptOutcome(None, FailureInfo("usererror", "BlobNotFound", "m"), retryable=False)
    assert exit_job_action(spec, blob) == "none"
    assert exit_job_action({}, blob) == "terminate"


def test_duplicate_ids_are_case_insensitive(tmp_path: Path) -> None:
    account = Account("acct", tmp_path)
    job = add_job(account)
    account.add_task(job, {"id": "Task1", "commandLine": "x"})
    with pytest.raises(ServiceError) as error:
        account.add_task(job, {"id": "task1", "commandLine": "x"})
    assert error.value.code == "TaskExists"
    with pytest.raises(ServiceError) as pool_error:
        account.add_pool(dict(POOL_SPEC))
        account.add_pool(dict(POOL_SPEC))
    assert pool_error.value.code == "PoolExists"


def test_pool_delete_requeues_running_tasks(tmp_path: Path) -> None:
    account = account_with_nodes(tmp_path)
    job = add_job(account)
    (task,) = add_tasks(account, job, 1)
    account.assign(task, account.pools["p"].nodes["n1"])
    account.begin_delete_pool(account.pools["p"])
    assert (task.state, task.requeue_count) == (TaskState.ACTIVE, 1)
    assert all(node.state == NodeState.LEAVING_POOL for node in account.pools["p"].nodes.values())
    assert pick_next(account) is None
    with pytest.raises(ServiceError) as error:
        account.add_pool(dict(POOL_SPEC))
    assert error.value.code == "PoolBeingDeleted"


def test_scheduler_respects_slots_node_states_and_order(tmp_path: Path) -> None:
    account = account_with_nodes(tmp_path, nodes=2, slots=2)
    nodes = account.pools["p"].nodes
    account.set_node_state(nodes["n1"], NodeState.START_TASK_FAILED)
    job = add_job(account)
    tasks = add_tasks(account, job, 3)
    started = []
    while (chosen := pick_next(account)) is not None:
        task, node = chosen
        account.assign(task, node)
        started.append((task.id, node.id))
    assert started == [("t000", "n0"), ("t001", "n0")]
    assert tasks[2].state == TaskState.ACTIVE


def test_higher_priority_jobs_go_first_and_max_parallel_tasks_holds(tmp_path: Path) -> None:
    account = account_with_nodes(tmp_path, nodes=1, slots=4)
    low = add_job(account, "low")
    high = add_job(account, "high", priority=10, maxParallelTasks=1)
    add_tasks(account, low, 2)
    add_tasks(account, high, 2)
    order = []
    while (chosen := pick_next(account)) is not None:
        task, node = chosen
        account.assign(task, node)
        order.append(task.job_id)
    assert order == ["high", "low", "low"]


def test_fill_types() -> None:
    def node(index: int, used: int) -> Node:
        made = Node(f"n{index}", "p", index, True, Path("/nonexistent"), 4, None)  # type: ignore[arg-type]
        made.state, made.used_slots = NodeState.IDLE, used
        return made

    nodes = [node(0, 1), node(1, 0), node(2, 3)]
    chosen_spread = choose_node(nodes, 1, "spread")
    chosen_pack = choose_node(nodes, 1, "pack")
    assert chosen_spread is not None and chosen_spread.id == "n1"
    assert chosen_pack is not None and chosen_pack.id == "n2"
    assert choose_node(nodes, 5, "spread") is None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["dispatch", "finish", "requeue", "terminate"]), st.integers(0, 30)),
        max_size=60,
    )
)
def test_counts_always_match_a_recount(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]]
) -> None:
    account = account_with_nodes(tmp_path_factory.mktemp("counts"), nodes=2, slots=2)
    job = add_job(account)
    tasks = add_tasks(account, job, 8)
    for task in tasks:
        task.max_task_retry_count = 1
    attempts: dict[str, int] = {}
    for action, pick in steps:
        if action == "dispatch":
            chosen = pick_next(account)
            if chosen is not None:
                attempts[chosen[0].id] = account.assign(*chosen)
            continue
        task = tasks[pick % len(tasks)]
        if action == "finish" and task.state == TaskState.RUNNING:
            account.finish_attempt(task, attempts[task.id], outcome_of_exit(pick % 3))
        elif action == "requeue":
            account.requeue(task)
        elif action == "terminate" and task.state != TaskState.COMPLETED:
            account.terminate_task(job, task)
        assert job.counts.to_wire() == recount(job)
        used = sum(node.used_slots for node in account.pools["p"].nodes.values())
        assert used == sum(1 for t in tasks if t.state == TaskState.RUNNING)
    assert account.tasks_running == sum(1 for t in tasks if t.state == TaskState.RUNNING)


def test_active_job_index_follows_state_and_pool(tmp_path: Path) -> None:
    account = Account("acct", tmp_path)
    first = add_job(account, "first")
    second = add_job(account, "second")
    assert list(account.active_jobs_for_pool("P")) == [first, second]
    account.update_job(second, {"poolInfo": {"poolId": "other"}}, replace=False)
    assert list(account.active_jobs_for_pool("p")) == [first]
    assert list(account.active_jobs_for_pool("other")) == [second]
    account.terminate_job(first, "UserTerminate")
    assert list(account.active_jobs_for_pool("p")) == []
    account.begin_delete_job(second)
    account.forget_job(second)
    assert list(account.active_jobs_for_pool("other")) == []


def test_deleting_a_job_stops_its_running_tasks_and_keeps_counters_right(tmp_path: Path) -> None:
    account = account_with_nodes(tmp_path)
    job = add_job(account)
    running, waiting = add_tasks(account, job, 2)
    node = account.pools["p"].nodes["n0"]
    attempt = account.assign(running, node)
    stopped: list[str] = []
    account.task_stoppers[running] = lambda: stopped.append(running.id)
    account.begin_delete_job(job)
    assert stopped == ["t000"]
    assert (node.used_slots, node.state, account.tasks_running) == (0, NodeState.IDLE, 0)
    account.finish_attempt(running, attempt, outcome_of_exit(0))  # a late report changes nothing
    assert running.state == TaskState.COMPLETED and running.result == TaskResult.FAILURE
    assert waiting.state == TaskState.ACTIVE and pick_next(account) is None
    account.forget_job(job)
    assert "j" not in account.jobs


def test_resize_needs_a_steady_pool_and_removing_a_node_requeues_its_tasks(tmp_path: Path) -> None:
    account = account_with_nodes(tmp_path)
    pool = account.pools["p"]
    job = add_job(account)
    (task,) = add_tasks(account, job, 1)
    node = pool.nodes["n0"]
    account.assign(task, node)
    pool.allocation_state = AllocationState.STEADY
    account.begin_resize_pool(pool, 5, 1)
    assert (pool.allocation_state, pool.spec["targetDedicatedNodes"]) == (AllocationState.RESIZING, 5)
    with pytest.raises(ServiceError) as error:
        account.begin_resize_pool(pool, 1, 0)
    assert (error.value.status, error.value.code) == (409, "OperationInvalidForCurrentState")
    account.remove_node(node)
    assert (task.state, task.requeue_count, node.state) == (TaskState.ACTIVE, 1, NodeState.LEAVING_POOL)
    assert pick_next(account) == (task, pool.nodes["n1"])


def test_a_task_that_can_never_fit_fails_instead_of_blocking_its_job(tmp_path: Path) -> None:
    account = account_with_nodes(tmp_path, nodes=1, slots=2)
    job = add_job(account)
    too_big = account.add_task(job, {"id": "big", "commandLine": "x", "requiredSlots": 3})
    small = account.add_task(job, {"id": "small", "commandLine": "x"})
    assert pick_next(account) == (small, account.pools["p"].nodes["n0"])
    assert (too_big.state, too_big.result) == (TaskState.COMPLETED, TaskResult.FAILURE)
    assert too_big.failure is not None and too_big.failure.code == "TaskSchedulingConstraintFailed"
