"""How Batch's 409s and resize errors are told apart, and what each message asks for."""

from __future__ import annotations

import pytest

from orchestrator.azure import quota


@pytest.mark.parametrize(
    ("code", "conflict"),
    [
        ("PoolExists", quota.Conflict.EXISTS),
        ("JobExists", quota.Conflict.EXISTS),
        ("PoolBeingDeleted", quota.Conflict.BEING_DELETED),
        ("JobBeingDeleted", quota.Conflict.BEING_DELETED),
        ("PoolQuotaReached", quota.Conflict.QUOTA),
        ("ActiveJobAndScheduleQuotaReached", quota.Conflict.QUOTA),
        ("OperationInvalidForCurrentState", quota.Conflict.OTHER),
        (None, quota.Conflict.OTHER),
    ],
)
def test_a_409_is_read_by_its_code(code: str | None, conflict: quota.Conflict) -> None:
    assert quota.classify_conflict(code) == conflict


@pytest.mark.parametrize(
    ("vm_size", "family"),
    [
        ("standard_d2s_v3", "Standard DSv3 Family vCPUs"),
        ("Standard_F16s_v2", "Standard FSv2 Family vCPUs"),
        ("standard_d2as_v5", "Standard DASv5 Family vCPUs"),
        ("Standard_E4ds_v5", "Standard EDSv5 Family vCPUs"),
        ("standard_d2_v3", "Standard Dv3 Family vCPUs"),
        ("Standard_A1", "Standard A Family vCPUs"),
        ("large", "the VM family of large"),
    ],
)
def test_the_vm_family_quota_has_the_portals_name(vm_size: str, family: str) -> None:
    assert quota.vm_family_quota(vm_size) == family


def test_spot_and_allocation_failures_name_what_to_do() -> None:
    spot = str(quota.resize_error("p", "acct", "standard_d2s_v3", "AccountSpotCoreQuotaReached", "no"))
    assert "'Total Regional Spot vCPUs' quota" in spot and "[pool] low_priority_nodes" in spot
    assert "Subscriptions > the subscription > Usage + quotas" in spot
    assert "the Batch account acct" in spot and "Batch account > Quotas" not in spot
    low = str(quota.resize_error("p", "acct", "standard_d2s_v3", "AccountLowPriorityCoreQuotaReached", "no"))
    assert "spot/low-priority vCPUs quota" in low and "Batch account > Quotas" in low
    failed = str(quota.resize_error("p", "acct", "standard_d2s_v3", "AllocationFailed", "no capacity"))
    assert "another [pool] vm_size" in failed and "Standard DSv3 Family vCPUs" in failed
    assert isinstance(quota.resize_error("p", "", "x", "AllocationFailed", ""), quota.QuotaError)
    assert quota.QuotaError("x").exit_code == 2


@pytest.mark.parametrize(
    "code",
    [
        "AccountCoreQuotaReached",
        "AccountLowPriorityCoreQuotaReached",
        "AccountSpotCoreQuotaReached",
        "AllocationFailed",
    ],
)
def test_every_resize_error_names_the_pool_size_account_and_the_way_to_more(code: str) -> None:
    message = str(quota.resize_error("pool-7", "acct", "Standard_F4s_v2", code, "text"))
    for part in (
        "pool-7",
        "Standard_F4s_v2",
        "the Batch account acct",
        code,
        "Request more in the Azure portal",
    ):
        assert part in message, (part, message)
