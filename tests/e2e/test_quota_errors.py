"""Quota errors say which quota and what to ask for (issue 14, point 4): `topn run` against an
emulator started with an account quota (or a failing allocation) stops with exit 2 and a message
naming the quota, the account and how to raise it, instead of reading a 409 as "already exists" and
failing later on a 404. One case per message: pools, active jobs, dedicated, low-priority and spot
cores, and AllocationFailed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import StartEmulator, StorageEndpoint
from tests.e2e.fault_support import run_topn_live, write_corpus
from tests.e2e.run_cli import topn_environment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

HOW_TO_RAISE = "Batch account > Quotas > Request quota increase"

CASES = {
    "pools": (
        ["--max-pools", "0"],
        {},
        ["PoolQuotaReached", "'Pools' quota", "the Batch account topnlocal", HOW_TO_RAISE],
    ),
    "active_jobs": (
        ["--max-active-jobs", "0"],
        {},
        [
            "ActiveJobAndScheduleQuotaReached",
            "'Active jobs and job schedules' quota",
            "the Batch account topnlocal",
            "[run] delete_job = true",
            HOW_TO_RAISE,
        ],
    ),
    "dedicated_cores": (
        ["--max-dedicated-cores", "1"],
        {"TOPN_POOL_VM_SIZE": "standard_d2s_v3", "TOPN_POOL_DEDICATED_NODES": "1"},
        [
            "AccountCoreQuotaReached",
            "'Standard DSv3 Family vCPUs' quota",
            "the Batch account topnlocal",
            "[pool] dedicated_nodes",
            HOW_TO_RAISE,
        ],
    ),
    "low_priority_cores": (
        ["--max-low-priority-cores", "0"],
        {"TOPN_POOL_DEDICATED_NODES": "0", "TOPN_POOL_LOW_PRIORITY_NODES": "1"},
        [
            "AccountLowPriorityCoreQuotaReached",
            "spot/low-priority vCPUs quota",
            "the Batch account topnlocal",
            "[pool] low_priority_nodes",
            HOW_TO_RAISE,
        ],
    ),
    # A user-subscription account: its low-priority nodes are Spot VMs under the subscription's quota.
    "spot_cores": (
        ["--max-spot-cores", "0"],
        {
            "TOPN_POOL_VM_SIZE": "standard_d2s_v3",
            "TOPN_POOL_DEDICATED_NODES": "0",
            "TOPN_POOL_LOW_PRIORITY_NODES": "1",
        },
        [
            "AccountSpotCoreQuotaReached",
            "'Total Regional Spot vCPUs' quota",
            "'Standard DSv3 Family vCPUs' does not limit Spot VMs",
            "the Batch account topnlocal",
            "[pool] low_priority_nodes",
            "Subscriptions > the subscription > Usage + quotas",
        ],
    ),
    # Capacity, not a quota: the message says what to change and still names the family's quota.
    "allocation_failed": (
        ["--fault-allocation-failed", "1"],
        {"TOPN_POOL_VM_SIZE": "standard_d2s_v3", "TOPN_POOL_DEDICATED_NODES": "1"},
        [
            "AllocationFailed: Desired number of dedicated nodes could not be allocated",
            "the Batch account topnlocal",
            "another [pool] vm_size",
            "'Standard DSv3 Family vCPUs' quota",
            HOW_TO_RAISE,
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_quota_stops_the_run_at_once_naming_the_quota_and_the_fix(
    case: str, start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    flags, overrides, expected = CASES[case]
    batch = await start_emulator(flags)
    write_corpus(tmp_path / "in", 2)
    env = topn_environment(
        batch,
        azurite,
        tmp_path / ".topn",
        TOPN_POOL_ID=f"quota-{case.replace('_', '-')}",
        TOPN_STORAGE_CONTAINER_PREFIX="quota",
        TOPN_POOL_READY_TIMEOUT_S="60",
        **overrides,
    )
    run = await run_topn_live(["run", "in", "--out", "out", "--json"], tmp_path, env)
    failures = [event for event in run.events() if event["event"] in ("run.failed", "command.failed")]
    assert run.exit_code == 2, run.stderr[-3000:]
    assert failures, run.stderr[-3000:]
    message = failures[-1]["error"]
    assert failures[-1]["error_type"] == "QuotaError"
    for part in expected:
        assert part in message, (part, message)
