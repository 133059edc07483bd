"""What one autoscale sample reads from the account: every task and node variable a formula can use."""

from __future__ import annotations

from pathlib import Path

from emulator.autoscale import pool_sample
from emulator.state import Account
from tests.unit.emulator.test_quota_and_scaling import account_with_nodes


def job_on(account: Account, job_id: str, pool_id: str, **counts: int) -> None:
    job = account.add_job({"id": job_id, "poolInfo": {"poolId": pool_id}})
    for bucket, number in counts.items():
        setattr(job.counts, bucket, number)


def test_a_sample_sums_the_pools_active_jobs_and_counts_its_nodes_by_kind(tmp_path: Path) -> None:
    account = account_with_nodes(tmp_path, dedicated=2, low_priority=3)
    job_on(account, "a", "p", active=4, running=1, completed=7, succeeded=5, failed=2)
    job_on(account, "b", "p", active=1, running=2, completed=3, succeeded=3, failed=0)
    account.add_pool({"id": "other", "vmSize": "Standard_D2s_v3"})
    job_on(account, "elsewhere", "other", active=100, running=100, succeeded=100, failed=100)
    job_on(account, "done", "p", active=0, running=0, completed=9, succeeded=1, failed=8)
    account.terminate_job(account.jobs["done"], "UserTerminate")  # a completed job is not sampled

    assert pool_sample(account, account.pools["p"]) == {
        "$ActiveTasks": 5.0,
        "$RunningTasks": 3.0,
        "$PendingTasks": 8.0,
        "$SucceededTasks": 8.0,
        "$FailedTasks": 2.0,
        "$CurrentDedicatedNodes": 2.0,
        "$CurrentLowPriorityNodes": 3.0,
        "$PreemptedNodeCount": 0.0,
    }
