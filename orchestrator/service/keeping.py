"""The daemon's side of the kept pool: autoscale, the script SAS timer, the pool view, the runs' supply.

The pool keeper (service/poolkeeper.py) still owns the pool: it creates or adopts it and renews its
start task. For the daemon, the pool is created with (or switched to) an autoscale formula driven by
pending tasks, with `taskcompletion` deallocation (the default `requeue` kills running tasks), up to
`max_nodes`, down to zero when idle. A user formula is checked with `evaluateAutoScale` before it is
applied, and its error shown. The daemon never deletes the pool (`topn pool delete` is explicit).

Runs get `DaemonPoolSupply`: with autoscale, a run does not wait for a usable node before adding its
tasks (a pool at zero grows *because* tasks are pending), and work units are sized from `max_nodes`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio
import structlog
from anyio.abc import TaskStatus
from azure.batch.models import BatchPoolEnableAutoScaleOptions, BatchPoolEvaluateAutoScaleOptions
from azure.core.exceptions import HttpResponseError

from orchestrator.azure.clients import Clients, unattributed_requests
from orchestrator.azure.pool import Capacity, PoolHandle
from orchestrator.azure.retry import error_code_of, retry_call
from orchestrator.azure.sas import utc_now
from orchestrator.azure.states import wire_text
from orchestrator.errors import ConfigError
from orchestrator.service.poolkeeper import SCRIPT_SAS_LIFETIME, PoolKeeper
from orchestrator.settings import Settings

log = structlog.get_logger()

# The keeper renews the start task's script SAS when less than this is left (well before it ends).
SAS_RENEW_MARGIN = timedelta(hours=12)
SAS_CHECK_EVERY_S = 600.0


def default_formula(max_nodes: int, slots_per_node: int, low_priority: bool) -> str:
    """Nodes for the tasks pending over the last 3 minutes; none when nothing was pending."""
    target = "$TargetLowPriorityNodes" if low_priority else "$TargetDedicatedNodes"
    other = "$TargetDedicatedNodes" if low_priority else "$TargetLowPriorityNodes"
    return (
        "// topn daemon: enough nodes for the pending tasks, none when idle\n"
        "$seen = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 3);\n"
        "$pending = $seen < 1 ? 0 : max($PendingTasks.GetSample(TimeInterval_Minute * 3, 1));\n"
        f"{target} = min({max_nodes}, ceil($pending / {slots_per_node}));\n"
        f"{other} = 0;\n"
        "$NodeDeallocationOption = taskcompletion;"
    )


def daemon_settings(settings: Settings) -> Settings:
    """The settings the daemon opens its services with: the pool created with its autoscale formula."""
    daemon = settings.daemon
    if not daemon.autoscale:
        return settings
    formula = daemon.autoscale_formula or default_formula(
        daemon.max_nodes, settings.pool.task_slots_per_node, daemon.low_priority
    )
    return dataclasses.replace(settings, pool=dataclasses.replace(settings.pool, autoscale_formula=formula))


async def apply_autoscale(settings: Settings, clients: Clients) -> None:
    """Make sure the pool runs the daemon's formula; a formula that does not evaluate is a ConfigError."""
    formula = settings.pool.autoscale_formula
    if formula is None:
        return
    pool_id = settings.pool.id
    interval = timedelta(seconds=settings.daemon.autoscale_interval_s)
    async with unattributed_requests():
        pool = await retry_call(settings.retry, "get_pool", lambda: clients.batch.get_pool(pool_id))
        if pool.enable_auto_scale:
            run = await retry_call(
                settings.retry,
                "evaluate_pool_auto_scale",
                lambda: clients.batch.evaluate_pool_auto_scale(
                    pool_id, BatchPoolEvaluateAutoScaleOptions(auto_scale_formula=formula)
                ),
            )
            if run.error is not None:
                raise ConfigError(
                    f"[daemon] autoscale_formula does not evaluate on pool {pool_id}: "
                    f"{run.error.code}: {run.error.message} {_details(run.error)}".strip()
                )
            if pool.auto_scale_formula == formula and pool.auto_scale_evaluation_interval == interval:
                return
        options = BatchPoolEnableAutoScaleOptions(
            auto_scale_formula=formula, auto_scale_evaluation_interval=interval
        )
        try:
            await retry_call(
                settings.retry,
                "enable_pool_auto_scale",
                lambda: clients.batch.enable_pool_auto_scale(pool_id, options),
            )
        except HttpResponseError as error:
            if error.status_code == 400:
                raise ConfigError(
                    f"[daemon] autoscale_formula was refused for pool {pool_id}: {error_code_of(error)}: "
                    f"{str(error.message or error).splitlines()[0][:300]}"
                ) from None
            raise
    log.info("pool.autoscale_applied", pool_id=pool_id, interval_s=interval.total_seconds())


def _details(error: object) -> str:
    values = getattr(error, "error_values", None) or []
    return "; ".join(f"{item.name}: {item.value}" for item in values if getattr(item, "value", None))


@dataclass(frozen=True)
class PoolView:
    nodes_by_state: dict[str, int]
    target_nodes: int
    resize_errors: int
    sas_expires_at: datetime | None


async def read_pool_view(settings: Settings, clients: Clients, keeper: PoolKeeper) -> PoolView:
    """Node states, target and resize errors (one get_pool, one node listing)."""
    pool_id = settings.pool.id
    async with unattributed_requests():
        pool = await retry_call(settings.retry, "get_pool", lambda: clients.batch.get_pool(pool_id))

        async def listing() -> Counter[str]:
            return Counter(
                [wire_text(node.state) or "unknown" async for node in clients.batch.list_nodes(pool_id)]
            )

        states = await retry_call(settings.retry, "list_nodes", listing)
    target = int(pool.target_dedicated_nodes or 0) + int(pool.target_low_priority_nodes or 0)
    return PoolView(
        nodes_by_state=dict(states),
        target_nodes=target,
        resize_errors=len(pool.resize_errors or []),
        sas_expires_at=keeper.script_sas_expires_at,
    )


async def keep_pool(
    settings: Settings,
    clients: Clients,
    keeper: PoolKeeper,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Ensure the pool (and its formula) at start; then renew the script SAS on the keeper's own timer."""
    lifetime = max(SAS_RENEW_MARGIN * 2, SCRIPT_SAS_LIFETIME)
    await keeper.ensure(utc_now() + lifetime - SAS_RENEW_MARGIN)
    await apply_autoscale(settings, clients)
    task_status.started()
    while True:
        await anyio.sleep(SAS_CHECK_EVERY_S)
        # ensure() renews only when the SAS would end before this; a run asking for longer extends it.
        await keeper.ensure(utc_now() + SAS_RENEW_MARGIN)


class DaemonPoolSupply:
    """The pool as the daemon's runs use it (run/context.PoolSupply)."""

    def __init__(self, keeper: PoolKeeper, settings: Settings) -> None:
        self._keeper = keeper
        self._settings = settings

    @property
    def pool_id(self) -> str:
        return self._keeper.pool_id

    async def ensure(self, needed_until: datetime) -> PoolHandle:
        return await self._keeper.ensure(needed_until)

    async def wait_usable(self) -> Capacity:
        if not self._settings.daemon.autoscale:
            return await self._keeper.wait_usable()
        # An autoscaled pool grows because tasks are pending: they are added without waiting for nodes.
        return Capacity(usable_nodes=0, slots=self.planned_slots())

    def planned_slots(self) -> int:
        if not self._settings.daemon.autoscale:
            return self._keeper.planned_slots()
        return self._settings.daemon.max_nodes * self._settings.pool.task_slots_per_node
