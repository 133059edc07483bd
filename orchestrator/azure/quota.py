"""Batch's 409s and resize errors told apart by their error code, and what to ask for (pure).

The SDK maps every 409 to ResourceExistsError, so "exists" and "quota reached" look alike until the
code is read. The active-jobs quota is a normal condition to wait out where a run is already under
way (the daemon's batches, a resumed run's job): `quota_backoff_s` paces those tries. Elsewhere a
quota stops the run with exit 2 (nothing a retry can fix) naming the quota, the account and how to
raise it: Azure portal > the Batch account > Quotas > Request quota increase,
or, for the Spot VMs of a user-subscription account, the subscription's Usage + quotas (docs/azure.md,
"Quotas", cites the Microsoft pages).
"""

from __future__ import annotations

import re
from enum import StrEnum

from orchestrator.errors import UsageError


class QuotaError(UsageError):
    """A Batch account quota stops the run (exit 2): the message names the quota and how to raise it."""


class Conflict(StrEnum):
    """What a 409 from Batch means, by its error code."""

    EXISTS = "exists"  # PoolExists, JobExists, TaskExists: the resource is there already
    BEING_DELETED = "being_deleted"  # PoolBeingDeleted, JobBeingDeleted: it will be gone soon
    QUOTA = "quota"  # PoolQuotaReached, ActiveJobAndScheduleQuotaReached
    OTHER = "other"  # any other conflict (a state the operation needs, e.g. a node that cannot reboot)


# The active-jobs quota: jobs free up as other runs end, so where a run is under way it waits.
ACTIVE_JOBS_QUOTA_CODE = "ActiveJobAndScheduleQuotaReached"
FIRST_QUOTA_BACKOFF_S = 1.0

_EXISTS = frozenset({"PoolExists", "JobExists", "TaskExists", "JobScheduleExists"})
_BEING_DELETED = frozenset({"PoolBeingDeleted", "JobBeingDeleted", "JobScheduleBeingDeleted"})
_ACCOUNT_QUOTAS = {
    "PoolQuotaReached": "Pools",
    "ActiveJobAndScheduleQuotaReached": "Active jobs and job schedules",
}
# Resize (allocation) error codes that mean a core quota, and which kind of cores.
_CORE_QUOTAS = {
    "AccountCoreQuotaReached": "dedicated",
    "AccountVMSeriesCoreQuotaReached": "dedicated",
    "AccountLowPriorityCoreQuotaReached": "spot/low-priority",
    "AccountSpotCoreQuotaReached": "spot",
}
_HOW_TO_RAISE = (
    "Request more in the Azure portal: the Batch account > Quotas > Request quota increase "
    "(a support request; new accounts often start low or at zero)"
)
# A user-subscription account's Spot VMs count against the subscription's quota, not a Batch one.
_HOW_TO_RAISE_SPOT = (
    "Request more in the Azure portal: Subscriptions > the subscription > Usage + quotas, "
    "the Batch account's region (a user-subscription account's nodes use the subscription's quotas)"
)
_SIZE = re.compile(r"^(?:standard|basic)_([a-z]+?)(\d+)([a-z]*)(?:_v(\d+))?", re.IGNORECASE)


def _account(name: str) -> str:
    return f"the Batch account {name}" if name else "the Batch account"


def classify_conflict(code: str | None) -> Conflict:
    """What a 409 with this error code means."""
    if code in _EXISTS:
        return Conflict.EXISTS
    if code in _BEING_DELETED:
        return Conflict.BEING_DELETED
    if code in _ACCOUNT_QUOTAS:
        return Conflict.QUOTA
    return Conflict.OTHER


def quota_backoff_s(refusals: int, max_s: float) -> float:
    """Wait before the next try after `refusals` refusals in a row: 1 s, 2 s, 4 s, ... capped at `max_s`."""
    if refusals <= 0:
        return 0.0
    return min(max_s, FIRST_QUOTA_BACKOFF_S * float(2 ** min(refusals - 1, 30)))


def account_quota_error(code: str, account: str, *, advice: str) -> QuotaError:
    """The exit-2 error for a pool or job refused by an account quota."""
    quota = _ACCOUNT_QUOTAS.get(code, code)
    return QuotaError(
        f"{_account(account)} has reached its {quota!r} quota ({code}). {advice}, or raise "
        f"the quota. {_HOW_TO_RAISE}"
    )


def vm_family_quota(vm_size: str) -> str:
    """The portal's name of a VM size's family core quota: standard_d2s_v3 -> 'Standard DSv3 Family vCPUs'."""
    match = _SIZE.match(vm_size.strip())
    if match is None:
        return f"the VM family of {vm_size}"
    letters, _, suffix, version = match.groups()
    # The family is the size's letters without its core count: D2s_v3 -> DSv3, E4ds_v5 -> EDSv5.
    return f"Standard {(letters + suffix).upper()}{f'v{version}' if version else ''} Family vCPUs"


def is_core_quota(code: str | None) -> bool:
    """Whether a resize error code means a core quota (rather than capacity or a bad setting)."""
    return code in _CORE_QUOTAS


def resize_error(pool_id: str, account: str, vm_size: str, code: str, message: str) -> QuotaError:
    """The exit-2 error for a pool that got no nodes because of a core quota or a failed allocation."""
    kind = _CORE_QUOTAS.get(code)
    if kind is None:  # AllocationFailed and its kin: capacity, not a quota
        return QuotaError(
            f"pool {pool_id} could not allocate nodes: {code}: {message}. Azure had no {vm_size} "
            f"capacity for {_account(account)} in its region: try another [pool] vm_size, fewer "
            "nodes, or later; if the message names a quota, request it for the "
            f"{vm_family_quota(vm_size)!r} quota. {_HOW_TO_RAISE}"
        )
    family = vm_family_quota(vm_size)
    if kind == "spot":
        return QuotaError(
            f"pool {pool_id} got no nodes: {_account(account)} allocates Spot VMs in its subscription, "
            f"whose spot core quota is used up ({code}: {message}). Ask for enough cores for {vm_size} "
            "nodes in the subscription's 'Total Regional Spot vCPUs' quota (one quota across VM "
            f"families: {family!r} does not limit Spot VMs), or lower [pool] low_priority_nodes. "
            f"{_HOW_TO_RAISE_SPOT}"
        )
    what = (
        f"the {family!r} quota (and the total dedicated vCPUs)"
        if kind == "dedicated"
        else "the spot/low-priority vCPUs quota"
    )
    return QuotaError(
        f"pool {pool_id} got no nodes: {_account(account)} has reached its {kind} core quota "
        f"({code}: {message}). Ask for enough cores for {vm_size} nodes in {what}, or lower [pool] "
        f"{'dedicated_nodes' if kind == 'dedicated' else 'low_priority_nodes'}. {_HOW_TO_RAISE}"
    )
