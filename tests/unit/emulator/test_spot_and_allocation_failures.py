"""Spot core quotas of user-subscription accounts and injected allocation failures (no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulator.__main__ import fault_settings, parse_args, usage_problems
from emulator.faults import FaultInjector, FaultSettings
from emulator.model import Node, NodeState
from emulator.quota import Quotas, admit_nodes, allocation_failed_error
from emulator.state import Account


def account_with_low_priority_nodes(tmp_path: Path, low_priority: int, quotas: Quotas) -> Account:
    account = Account("acct", tmp_path)
    account.quota = quotas
    pool = account.add_pool({"id": "p", "vmSize": "Standard_D2s_v3", "taskSlotsPerNode": 1})
    for index in range(low_priority):
        node = Node(f"n{index}", "p", index, False, tmp_path / f"n{index}", 1, pool.created)
        pool.nodes[node.id] = node
        account.set_node_state(node, NodeState.IDLE)
    return account


def test_spot_nodes_over_the_spot_quota_get_the_spot_code(tmp_path: Path) -> None:
    # 2-core nodes: one Spot node exists, a quota of 4 leaves room for one more of the three asked for.
    account = account_with_low_priority_nodes(tmp_path, 1, Quotas(max_spot_cores=4))
    pool = account.pools["p"]
    admitted = admit_nodes(account.quota, account.pools.values(), pool, [False, False, False, True])
    assert admitted == [False, True]  # dedicated cores are not limited here
    assert len(pool.resize_errors) == 1
    error = pool.resize_errors[0]
    assert error["code"] == "AccountSpotCoreQuotaReached"
    assert error["message"].startswith("The account's spot core quota of 4 was reached: 2 spot node(s)")
    assert error["values"] == [
        {"name": "CoreQuota", "value": "4"},
        {"name": "NodesNotAllocated", "value": "2"},
    ]


def test_a_batch_managed_account_keeps_the_low_priority_code(tmp_path: Path) -> None:
    account = account_with_low_priority_nodes(tmp_path, 0, Quotas(max_low_priority_cores=0))
    pool = account.pools["p"]
    assert admit_nodes(account.quota, account.pools.values(), pool, [False]) == []
    assert [error["code"] for error in pool.resize_errors] == ["AccountLowPriorityCoreQuotaReached"]


@given(existing=st.integers(0, 4), wanted=st.integers(0, 10), quota=st.integers(0, 20))
def test_admitted_spot_nodes_never_pass_the_spot_quota(
    tmp_path_factory: pytest.TempPathFactory, existing: int, wanted: int, quota: int
) -> None:
    account = account_with_low_priority_nodes(
        tmp_path_factory.mktemp("spot"), existing, Quotas(max_spot_cores=quota)
    )
    pool = account.pools["p"]
    admitted = admit_nodes(account.quota, account.pools.values(), pool, [False] * wanted)
    used = 2 * (existing + len(admitted))
    assert used <= max(quota, 2 * existing)
    if len(admitted) < wanted:  # refused only what did not fit
        assert used + 2 > quota
        assert [error["code"] for error in pool.resize_errors] == ["AccountSpotCoreQuotaReached"]
    else:
        assert pool.resize_errors == []


def test_the_first_n_allocations_fail_then_allocations_succeed() -> None:
    faults = FaultInjector(FaultSettings(allocation_failures=2))
    assert [faults.allocation_fails() for _ in range(4)] == [True, True, False, False]
    assert not FaultInjector(FaultSettings()).allocation_fails()


def test_allocation_failed_is_worded_like_the_service() -> None:
    error = allocation_failed_error([True, True])
    assert error["code"] == "AllocationFailed"
    assert error["message"] == "Desired number of dedicated nodes could not be allocated"
    assert [value["name"] for value in error["values"]] == ["Reason"]
    both = allocation_failed_error([True, False])["message"]
    assert both == "Desired number of dedicated and low-priority nodes could not be allocated"


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (
            ["--max-spot-cores", "4", "--max-low-priority-cores", "4"],
            "--max-spot-cores (a user-subscription account) and --max-low-priority-cores exclude each other",
        ),
        (["--max-spot-cores", "-1"], "--max-spot-cores must be 0 or more, got -1"),
        (["--fault-allocation-failed", "-1"], "--fault-allocation-failed must not be negative"),
    ],
)
def test_unusable_flags_are_refused(argv: list[str], problem: str) -> None:
    args = parse_args(argv)
    assert problem in usage_problems(args, fault_settings(args))


def test_the_flags_reach_the_settings() -> None:
    args = parse_args(["--max-spot-cores", "6", "--fault-allocation-failed", "3"])
    assert usage_problems(args, fault_settings(args)) == []
    assert args.max_spot_cores == 6 and fault_settings(args).allocation_failures == 3
