"""Account quotas: pools, active jobs (and job schedules), dedicated, low-priority and spot cores (pure).

Unset limits (the default) mean no quota. A job add over the active-jobs quota is refused with 409
`ActiveJobAndScheduleQuotaReached`, a pool add over the pools quota with 409 `PoolQuotaReached`; a
pool that would go over a core quota gets the nodes that fit and a `resizeErrors` entry
`AccountCoreQuotaReached` (dedicated), `AccountLowPriorityCoreQuotaReached` (preemptible nodes of a
Batch-managed account) or `AccountSpotCoreQuotaReached` (preemptible nodes of a user-subscription
account, which are Spot VMs), as the service allocates.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from emulator.model import Job, JobState, NodeState, Pool, PoolState
from emulator.wire import ServiceError, invalid_property

# Sizes whose core count is not the number in their name (older D, DS, A, G and GS series,
# and the Cloud Services names). Every other `Standard_<family><cores>...` size carries its
# vCPU count in its name (Standard_D2s_v3: 2, Standard_F16s_v2: 16, Standard_HB120rs_v3: 120).
_CORES_NOT_IN_NAME: dict[str, int] = {
    "extrasmall": 1,
    "small": 1,
    "medium": 2,
    "large": 4,
    "extralarge": 8,
    "standard_a0": 1,
    "standard_a5": 2,
    "standard_a6": 4,
    "standard_a7": 8,
    "standard_a9": 16,
    "standard_a10": 8,
    "standard_a11": 16,
    **{f"standard_{family}{n}": cores for family in ("d", "ds") for n, cores in ((3, 4), (4, 8))},
    **{
        f"standard_{family}{n}{suffix}": cores
        for family in ("d", "ds")
        for suffix in ("", "_v2")
        for n, cores in ((11, 2), (12, 4), (13, 8), (14, 16), (15, 20))
    },
    **{
        f"standard_{family}{n}_v2": cores
        for family in ("d", "ds")
        for n, cores in ((1, 1), (2, 2), (3, 4), (4, 8), (5, 16))
    },
    **{
        f"standard_{family}{n}": cores
        for family in ("g", "gs")
        for n, cores in ((1, 2), (2, 4), (3, 8), (4, 16), (5, 32))
    },
}
_CORES_IN_NAME = re.compile(r"^(?:standard|basic)_[a-z]+(\d+)")


@dataclass(frozen=True)
class Quotas:
    max_active_jobs: int | None = None
    max_dedicated_cores: int | None = None
    max_low_priority_cores: int | None = None
    max_pools: int | None = None
    # A user-subscription account: its preemptible nodes are Spot VMs, limited by the subscription's
    # regional Spot vCPU quota instead of a Batch low-priority core quota (never both at once).
    max_spot_cores: int | None = None

    @property
    def limits_cores(self) -> bool:
        return any(
            limit is not None
            for limit in (self.max_dedicated_cores, self.max_low_priority_cores, self.max_spot_cores)
        )

    @property
    def max_preemptible_cores(self) -> int | None:
        """The limit on the cores of the nodes a pool asks for with targetLowPriorityNodes."""
        return self.max_spot_cores if self.max_spot_cores is not None else self.max_low_priority_cores


def cores_per_node(vm_size: str) -> int | None:
    """The cores one node of `vm_size` counts against the quota, or None for a size the table lacks."""
    name = vm_size.strip().lower()
    if name in _CORES_NOT_IN_NAME:
        return _CORES_NOT_IN_NAME[name]
    match = _CORES_IN_NAME.match(name)
    return max(int(match.group(1)), 1) if match else None


def check_vm_size(quotas: Quotas, spec: Mapping[str, Any]) -> None:
    """With a core quota, a pool's vmSize must be one whose cores are known (400 otherwise)."""
    if quotas.limits_cores and cores_per_node(str(spec.get("vmSize", ""))) is None:
        raise invalid_property(
            "vmSize",
            f"{spec.get('vmSize')!r} is not a VM size the emulator knows the cores of, "
            "so the core quota cannot be checked; use a Standard_<family><cores>... size",
        )


def count_active_jobs(jobs: Iterable[Job]) -> int:
    """Jobs that count against the quota: not yet completed and not being deleted."""
    return sum(1 for job in jobs if job.state in (JobState.ACTIVE, JobState.TERMINATING))


def check_active_jobs(quotas: Quotas, jobs: Iterable[Job]) -> None:
    """409 ActiveJobAndScheduleQuotaReached when one more job would pass the quota."""
    limit = quotas.max_active_jobs
    if limit is not None and count_active_jobs(jobs) >= limit:
        raise ServiceError(
            409,
            "ActiveJobAndScheduleQuotaReached",
            f"The account has reached its quota of {limit} active jobs and job schedules. "
            "Terminate or delete jobs, or ask for a higher quota.",
        )


def check_pool_count(quotas: Quotas, pools: Mapping[str, Pool], pool_id: str) -> None:
    """409 PoolQuotaReached when one more pool would pass the quota (an existing id is PoolExists)."""
    limit = quotas.max_pools
    if limit is not None and pool_id.lower() not in pools and len(pools) >= limit:
        raise ServiceError(
            409,
            "PoolQuotaReached",
            f"The account has reached its quota of {limit} pools. Delete pools, or ask for a higher quota.",
        )


def _cores_in_use(pools: Iterable[Pool]) -> dict[bool, int]:
    used = {True: 0, False: 0}
    for pool in pools:
        if pool.state != PoolState.ACTIVE:
            continue
        cores = cores_per_node(str(pool.spec.get("vmSize", ""))) or 1
        for node in pool.nodes.values():
            if node.state != NodeState.LEAVING_POOL:
                used[node.is_dedicated] += cores
    return used


def admit_nodes(quotas: Quotas, pools: Iterable[Pool], pool: Pool, wanted: list[bool]) -> list[bool]:
    """The new nodes (True: dedicated) that fit the core quotas; the rest become a resize error."""
    if not quotas.limits_cores or not wanted:
        return wanted
    vm_size = str(pool.spec.get("vmSize", ""))
    cores = cores_per_node(vm_size)
    if cores is None:
        pool.resize_errors.append(
            {
                "code": "AllocationFailed",
                "message": f"The core quota cannot be checked: the cores of {vm_size} are not known.",
            }
        )
        return []
    used = _cores_in_use(pools)
    limits = {True: quotas.max_dedicated_cores, False: quotas.max_preemptible_cores}
    admitted: list[bool] = []
    refused = {True: 0, False: 0}
    for dedicated in wanted:
        limit = limits[dedicated]
        if limit is None or used[dedicated] + cores <= limit:
            admitted.append(dedicated)
            used[dedicated] += cores
        else:
            refused[dedicated] += 1
    for dedicated, count in refused.items():
        if count:
            pool.resize_errors.append(
                _core_quota_error(quotas, dedicated, limits[dedicated], count, vm_size, cores)
            )
    return admitted


def _core_quota_error(
    quotas: Quotas, dedicated: bool, limit: int | None, count: int, vm_size: str, cores: int
) -> dict[str, Any]:
    """The resize error for nodes a core quota refused, with the service's code for their kind."""
    if dedicated:
        code, kind = "AccountCoreQuotaReached", "dedicated"
    elif quotas.max_spot_cores is not None:
        code, kind = "AccountSpotCoreQuotaReached", "spot"
    else:
        code, kind = "AccountLowPriorityCoreQuotaReached", "low-priority"
    return {
        "code": code,
        "message": (
            f"The account's {kind} core quota of {limit} was reached: "
            f"{count} {kind} node(s) of {vm_size} ({cores} cores each) were not allocated."
        ),
        "values": [
            {"name": "CoreQuota", "value": str(limit)},
            {"name": "NodesNotAllocated", "value": str(count)},
        ],
    }


def allocation_failed_error(wanted: list[bool]) -> dict[str, Any]:
    """The resize error of an allocation Azure could not serve (capacity, not a quota): no node at all."""
    kinds = " and ".join(
        kind
        for kind, present in (("dedicated", True in wanted), ("low-priority", False in wanted))
        if present
    )
    return {
        "code": "AllocationFailed",
        # The SDKs describe the code as "Desired number of nodes could not be allocated"; the service's
        # allocation messages name the kind of nodes ("... dedicated nodes could not be allocated ...").
        "message": f"Desired number of {kinds} nodes could not be allocated",
        "values": [
            {
                "name": "Reason",
                "value": "Allocation failed: the region has no capacity left for the requested VM size.",
            }
        ],
    }
