"""Account quotas, the autoscale request properties and nodes leaving a pool (no processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulator.autoscale_settings import validate_enable, validate_pool_autoscale
from emulator.model import AttemptOutcome, JobState, Node, NodeState, PoolState, TaskResult, TaskState
from emulator.quota import Quotas, admit_nodes, check_pool_count, check_vm_size, cores_per_node
from emulator.scaling import release_nodes
from emulator.state import Account
from emulator.wire import ServiceError

POOL_SPEC: dict[str, Any] = {"id": "p", "vmSize": "Standard_D4s_v3", "taskSlotsPerNode": 1}


def account_with_nodes(tmp_path: Path, dedicated: int = 0, low_priority: int = 0, **quotas: int) -> Account:
    account = Account("acct", tmp_path)
    account.quota = Quotas(**quotas)
    pool = account.add_pool(dict(POOL_SPEC))
    for index, is_dedicated in enumerate([True] * dedicated + [False] * low_priority):
        node = Node(f"n{index}", "p", index, is_dedicated, tmp_path / f"n{index}", 1, pool.created)
        pool.nodes[node.id] = node
        account.set_node_state(node, NodeState.IDLE)
    return account


@pytest.mark.parametrize(
    ("vm_size", "cores"),
    [
        ("Standard_D2s_v3", 2),
        ("standard_d16ds_v5", 16),
        ("Standard_F4s_v2", 4),
        ("Standard_HB120rs_v3", 120),
        ("Standard_NC24ads_A100_v4", 24),
        ("Standard_D11_v2", 2),
        ("Standard_DS14", 16),
        ("Standard_D5_v2", 16),
        ("Standard_A0", 1),
        ("Standard_G5", 32),
        ("small", 1),
        ("extralarge", 8),
        ("a-made-up-size", None),
    ],
)
def test_cores_per_node(vm_size: str, cores: int | None) -> None:
    assert cores_per_node(vm_size) == cores


def test_an_unknown_size_is_refused_only_under_a_core_quota() -> None:
    check_vm_size(Quotas(), {"vmSize": "a-made-up-size"})
    with pytest.raises(ServiceError) as refused:
        check_vm_size(Quotas(max_dedicated_cores=8), {"vmSize": "a-made-up-size"})
    assert (refused.value.status, refused.value.values["PropertyName"]) == (400, "vmSize")


def test_nodes_beyond_the_core_quota_become_a_resize_error(tmp_path: Path) -> None:
    # 4-core nodes: one dedicated node exists, the quota of 12 leaves room for two more.
    account = account_with_nodes(tmp_path, dedicated=1, max_dedicated_cores=12, max_low_priority_cores=4)
    pool = account.pools["p"]
    admitted = admit_nodes(account.quota, account.pools.values(), pool, [True, True, True, False, False])
    assert admitted == [True, True, False]
    assert [error["code"] for error in pool.resize_errors] == [
        "AccountCoreQuotaReached",
        "AccountLowPriorityCoreQuotaReached",
    ]
    assert "dedicated core quota of 12" in pool.resize_errors[0]["message"]
    assert pool.resize_errors[0]["values"][1] == {"name": "NodesNotAllocated", "value": "1"}


def test_pools_being_deleted_and_unlimited_kinds_do_not_count(tmp_path: Path) -> None:
    account = account_with_nodes(tmp_path, dedicated=2, max_low_priority_cores=0)
    other = account.add_pool({**POOL_SPEC, "id": "q"})
    other.state = PoolState.DELETING
    pool = account.pools["p"]
    assert admit_nodes(account.quota, account.pools.values(), pool, [True] * 5 + [False]) == [True] * 5
    assert len(pool.resize_errors) == 1


@given(
    existing=st.integers(0, 5),
    wanted=st.lists(st.booleans(), max_size=12),
    dedicated_quota=st.integers(0, 40),
    low_quota=st.integers(0, 40),
)
def test_admitted_nodes_never_pass_either_quota(
    tmp_path_factory: pytest.TempPathFactory,
    existing: int,
    wanted: list[bool],
    dedicated_quota: int,
    low_quota: int,
) -> None:
    account = account_with_nodes(
        tmp_path_factory.mktemp("quota"),
        dedicated=existing,
        max_dedicated_cores=dedicated_quota,
        max_low_priority_cores=low_quota,
    )
    pool = account.pools["p"]
    admitted = admit_nodes(account.quota, account.pools.values(), pool, wanted)
    dedicated_cores = 4 * (existing + admitted.count(True))
    assert 4 * admitted.count(False) <= low_quota
    assert dedicated_cores <= max(dedicated_quota, 4 * existing)
    # Nothing that fitted was refused: one more node of the refused kind would not have fitted.
    if admitted.count(True) < wanted.count(True):
        assert dedicated_cores + 4 > dedicated_quota
    assert bool(pool.resize_errors) == (
        admitted.count(True) < wanted.count(True) or admitted.count(False) < wanted.count(False)
    )


def test_active_job_quota_counts_jobs_not_yet_completed(tmp_path: Path) -> None:
    account = account_with_nodes(tmp_path, max_active_jobs=2)
    first = account.add_job({"id": "a", "poolInfo": {"poolId": "p"}})
    account.add_job({"id": "b", "poolInfo": {"poolId": "p"}})
    with pytest.raises(ServiceError) as refused:
        account.add_job({"id": "c", "poolInfo": {"poolId": "p"}})
    assert (refused.value.status, refused.value.code) == (409, "ActiveJobAndScheduleQuotaReached")
    with pytest.raises(ServiceError) as exists:
        account.add_job({"id": "A", "poolInfo": {"poolId": "p"}})
    assert exists.value.code == "JobExists", "an existing id is JobExists even at the quota"
    account.terminate_job(first, "UserTerminate")
    assert first.state == JobState.COMPLETED
    account.add_job({"id": "c", "poolInfo": {"poolId": "p"}})


def test_pool_autoscale_properties() -> None:
    assert validate_pool_autoscale({}) == {"enableAutoScale": False}
    assert validate_pool_autoscale(
        {"enableAutoScale": True, "autoScaleFormula": "$TargetDedicatedNodes=1"}
    ) == {
        "enableAutoScale": True,
        "autoScaleFormula": "$TargetDedicatedNodes=1",
        "autoScaleEvaluationInterval": "PT15M",
    }
    for body, name in [
        ({"autoScaleFormula": "x=1"}, "autoScaleFormula"),
        ({"enableAutoScale": "yes"}, "enableAutoScale"),
        (
            {"enableAutoScale": True, "autoScaleFormula": "x=1", "targetLowPriorityNodes": 0},
            "targetLowPriorityNodes",
        ),
        (
            {"enableAutoScale": True, "autoScaleFormula": "x=1", "autoScaleEvaluationInterval": "PT169H"},
            "autoScaleEvaluationInterval",
        ),
        (
            {"enableAutoScale": True, "autoScaleFormula": "x=1", "autoScaleEvaluationInterval": 300},
            "autoScaleEvaluationInterval",
        ),
        ({"enableAutoScale": True}, "autoScaleFormula"),
        ({"enableAutoScale": True, "autoScaleFormula": "x = = 1"}, "autoScaleFormula"),
    ]:
        with pytest.raises(ServiceError) as refused:
            validate_pool_autoscale(body)
        assert refused.value.status == 400 and refused.value.values["PropertyName"] == name, body


def test_enable_bodies() -> None:
    assert validate_enable({"autoScaleFormula": "x=1"}, currently_enabled=False) == {
        "autoScaleFormula": "x=1",
        "autoScaleEvaluationInterval": "PT15M",
    }
    assert validate_enable(
        {"autoScaleFormula": None, "autoScaleEvaluationInterval": "PT5M"}, currently_enabled=True
    ) == {"autoScaleEvaluationInterval": "PT5M"}
    for body, enabled in [({}, True), ({"autoScaleEvaluationInterval": "PT5M"}, False), ({"other": 1}, True)]:
        with pytest.raises(ServiceError):
            validate_enable(body, currently_enabled=enabled)


def run_on(account: Account, node: Node, task_id: str) -> Any:
    job = account.jobs.get("j") or account.add_job({"id": "j", "poolInfo": {"poolId": "p"}})
    task = account.add_task(job, {"id": task_id, "commandLine": "x"})
    account.assign(task, node)
    return task


@pytest.mark.parametrize("option", ["requeue", "terminate"])
async def test_requeue_and_terminate_release_busy_nodes_at_once(tmp_path: Path, option: str) -> None:
    account = account_with_nodes(tmp_path, dedicated=2)
    pool = account.pools["p"]
    busy, idle = pool.nodes["n0"], pool.nodes["n1"]
    task = run_on(account, busy, "t")
    with anyio.fail_after(5):
        await release_nodes(account, pool, [busy, idle], option)
    assert pool.nodes == {}
    if option == "requeue":
        assert (task.state, task.requeue_count) == (TaskState.ACTIVE, 1)
    else:
        assert (task.state, task.result, task.requeue_count) == (TaskState.COMPLETED, TaskResult.FAILURE, 0)
        assert task.failure is not None and task.failure.code == "TaskEnded"


@pytest.mark.parametrize("option", ["taskcompletion", "retaineddata"])
async def test_draining_waits_for_running_tasks_and_schedules_nothing_new(
    tmp_path: Path, option: str
) -> None:
    account = account_with_nodes(tmp_path, dedicated=2)
    pool = account.pools["p"]
    busy, idle = pool.nodes["n0"], pool.nodes["n1"]
    task = run_on(account, busy, "t")
    async with anyio.create_task_group() as group:
        group.start_soon(release_nodes, account, pool, [busy, idle], option)
        await anyio.sleep(0.05)
        assert idle.state == NodeState.LEAVING_POOL, "an idle node leaves at once"
        assert busy.state == NodeState.RUNNING and not busy.accepts_tasks()
        assert task.state == TaskState.RUNNING
        account.finish_attempt(task, task.attempt, AttemptOutcome(0, None))
    assert (task.state, task.result, task.requeue_count) == (TaskState.COMPLETED, TaskResult.SUCCESS, 0)
    assert busy.state == NodeState.LEAVING_POOL and pool.nodes == {}


def test_pool_quota_refuses_one_pool_too_many_but_an_existing_id_is_pool_exists(tmp_path: Path) -> None:
    account = account_with_nodes(tmp_path, max_pools=1)  # pool "p" is the one
    with pytest.raises(ServiceError) as refused:
        check_pool_count(account.quota, account.pools, "q")
    assert (refused.value.status, refused.value.code) == (409, "PoolQuotaReached")
    check_pool_count(account.quota, account.pools, "P")  # the same id: add_pool says PoolExists
    with pytest.raises(ServiceError) as exists:
        account.add_pool({**POOL_SPEC, "id": "P"})
    assert exists.value.code == "PoolExists"
    check_pool_count(Quotas(), account.pools, "q")  # no quota, no limit
