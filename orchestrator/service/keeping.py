"""The daemon's side of the kept pool: autoscale, the script SAS timer, the pool view, the runs' supply.

The pool keeper (service/poolkeeper.py) still owns the pool: it creates or adopts it and renews its
start task. For the daemon, the pool is created with (or switched to) an autoscale formula driven by
pending tasks, with `taskcompletion` deallocation (the default `requeue` kills running tasks), up to
`max_nodes`, down to zero when idle. Every formula is checked with `evaluateAutoScale` before the
daemon takes work, and its error shown (exit 2); Batch evaluates only on a pool that autoscales, so a
fixed-size pool is switched over first and switched back on an error (docs/daemon.md, "The pool").
The pool view reports a failing autoscale run later on. The daemon never deletes the pool (`topn pool
delete` is explicit).

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
from azure.batch.models import (
    AutoScaleRunError,
    BatchNodeDeallocationOption,
    BatchPool,
    BatchPoolEnableAutoScaleOptions,
    BatchPoolEvaluateAutoScaleOptions,
    BatchPoolResizeOptions,
)
from azure.core.exceptions import HttpResponseError

from orchestrator.azure.clients import Clients, unattributed_requests
from orchestrator.azure.pool import AutoscaleRefused, Capacity, PoolHandle, batch_error_text
from orchestrator.azure.retry import error_code_of, retry_call
from orchestrator.azure.sas import utc_now
from orchestrator.azure.states import allocation_steady, wire_text
from orchestrator.errors import ConfigError, PoolError
from orchestrator.service.poolkeeper import PoolKeeper
from orchestrator.settings import Settings, env_var_name

log = structlog.get_logger()

# The keeper renews the start task's script SAS when less than this is left (well before it ends;
# the keeper mints it for 24 h, poolkeeper.SCRIPT_SAS_LIFETIME), checking this often.
SAS_RENEW_MARGIN = timedelta(hours=12)
SAS_CHECK_EVERY_S = 600.0
# The evaluation intervals Batch accepts (enableAutoScale and pool creation refuse others).
AUTOSCALE_INTERVAL_MIN_S = 5 * 60.0
AUTOSCALE_INTERVAL_MAX_S = 168 * 3600.0
STEADY_POLL_MIN_S = 0.25
STEADY_POLL_MAX_S = 5.0


@dataclass(frozen=True)
class SasTimer:
    """When the keeper renews the script SAS: checked every `check_every_s`, renewed within `margin`."""

    margin: timedelta = SAS_RENEW_MARGIN  # below the keeper's SAS lifetime, or it renews every check
    check_every_s: float = SAS_CHECK_EVERY_S


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
    if not AUTOSCALE_INTERVAL_MIN_S <= daemon.autoscale_interval_s <= AUTOSCALE_INTERVAL_MAX_S:
        raise ConfigError(
            f"[daemon] autoscale_interval_s in {settings.source} (or "
            f"{env_var_name('daemon', 'autoscale_interval_s')}): {daemon.autoscale_interval_s:g} s is not "
            "an interval Batch accepts: from 300 s (5 minutes) to 604800 s (168 hours)."
        )
    formula = daemon.autoscale_formula or default_formula(
        daemon.max_nodes, settings.pool.task_slots_per_node, daemon.low_priority
    )
    return dataclasses.replace(settings, pool=dataclasses.replace(settings.pool, autoscale_formula=formula))


# Batch answers a second enableAutoScale on a pool within 30 s with this 409.
ENABLE_THROTTLED = "AutoScaleTooManyRequestsToEnable"
ENABLE_THROTTLE_WAIT_S = 31.0


async def apply_autoscale(settings: Settings, clients: Clients) -> None:
    """Make sure the pool runs the daemon's formula, checked with `evaluateAutoScale`; its error is exit 2.

    Batch evaluates a formula only on a pool that autoscales. On such a pool (one this process just
    created with the formula, or one adopted) the formula is checked before it is enabled. A
    fixed-size pool is switched over and checked at once; on an error it is switched back (autoscale
    off, its former targets) before the error is raised.
    """
    formula = settings.pool.autoscale_formula
    if formula is None:
        return
    interval = timedelta(seconds=settings.daemon.autoscale_interval_s)
    async with unattributed_requests():
        pool = await _get_pool(settings, clients)
        if pool.enable_auto_scale:
            await check_formula(settings, clients, formula)
            if pool.auto_scale_formula == formula and pool.auto_scale_evaluation_interval == interval:
                return
            await _enable(settings, clients, formula, interval)
        else:
            await _switch_fixed_pool(settings, clients, formula, interval)
    log.info("pool.autoscale_applied", pool_id=settings.pool.id, interval_s=interval.total_seconds())


def formula_key(settings: Settings) -> str:
    """The setting a formula error names: the user's formula, or the keys the default one is built from."""
    if settings.daemon.autoscale_formula is not None:
        return "[daemon] autoscale_formula"
    return "[daemon] autoscale (the default formula, from max_nodes and low_priority)"


async def check_formula(settings: Settings, clients: Clients, formula: str) -> None:
    """Evaluate `formula` on the (autoscaling) pool without applying it; ConfigError with its error."""
    pool_id = settings.pool.id
    try:
        run = await retry_call(
            settings.retry,
            "evaluate_pool_auto_scale",
            lambda: clients.batch.evaluate_pool_auto_scale(
                pool_id, BatchPoolEvaluateAutoScaleOptions(auto_scale_formula=formula)
            ),
        )
    except HttpResponseError as error:
        if error.status_code == 400:
            raise ConfigError(
                f"{formula_key(settings)} was refused by Batch for pool {pool_id}: {batch_error_text(error)}"
            ) from None
        raise
    if run.error is not None:
        raise ConfigError(
            f"{formula_key(settings)} does not evaluate on pool {pool_id}: {autoscale_error_text(run.error)}"
        )


def autoscale_error_text(error: AutoScaleRunError) -> str:
    """`code: message (name: value; ...)` of an autoscale run's error."""
    values = "; ".join(f"{item.name}: {item.value}" for item in error.error_values or [] if item.value)
    text = f"{error.code}: {str(error.message or '').strip()}"[:300]
    return f"{text} ({values[:500]})" if values else text


async def _get_pool(settings: Settings, clients: Clients) -> BatchPool:
    pool_id = settings.pool.id
    return await retry_call(settings.retry, "get_pool", lambda: clients.batch.get_pool(pool_id))


async def _enable(settings: Settings, clients: Clients, formula: str, interval: timedelta) -> None:
    pool_id = settings.pool.id
    options = BatchPoolEnableAutoScaleOptions(
        auto_scale_formula=formula, auto_scale_evaluation_interval=interval
    )

    async def enable() -> None:
        await retry_call(
            settings.retry,
            "enable_pool_auto_scale",
            lambda: clients.batch.enable_pool_auto_scale(pool_id, options),
        )

    try:
        try:
            await enable()
        except HttpResponseError as error:
            if error_code_of(error) != ENABLE_THROTTLED:
                raise
            # A restart within 30 s of the last enable (e.g. systemd restarting after a crash): Batch
            # takes one enable per 30 s per pool, so wait that out once rather than fail the start.
            log.info("pool.autoscale_enable_throttled", pool_id=pool_id, wait_s=ENABLE_THROTTLE_WAIT_S)
            await anyio.sleep(ENABLE_THROTTLE_WAIT_S)
            await enable()
    except HttpResponseError as error:
        if error.status_code == 400:  # a formula that does not parse; nothing was changed
            raise ConfigError(
                f"{formula_key(settings)} was refused by Batch for pool {pool_id}: {batch_error_text(error)}"
            ) from None
        raise


async def _switch_fixed_pool(settings: Settings, clients: Clients, formula: str, interval: timedelta) -> None:
    """Enable autoscale on a fixed-size pool, then check the formula; switch back on an error."""
    # Batch refuses enableAutoScale while a pool resizes; its steady targets are what to go back to.
    steady = await wait_steady(settings, clients)
    targets = (int(steady.target_dedicated_nodes or 0), int(steady.target_low_priority_nodes or 0))
    await _enable(settings, clients, formula, interval)
    try:
        await check_formula(settings, clients, formula)
    except ConfigError as refused:
        await _switch_back(settings, clients, targets, str(refused))
        raise


async def _switch_back(settings: Settings, clients: Clients, targets: tuple[int, int], reason: str) -> None:
    """Autoscale off again and the pool's former targets back (a failed evaluation changes none)."""
    pool_id = settings.pool.id
    try:
        await retry_call(
            settings.retry,
            "disable_pool_auto_scale",
            lambda: clients.batch.disable_pool_auto_scale(pool_id),
        )
        pool = await wait_steady(settings, clients)
        if (int(pool.target_dedicated_nodes or 0), int(pool.target_low_priority_nodes or 0)) != targets:
            options = BatchPoolResizeOptions(
                target_dedicated_nodes=targets[0],
                target_low_priority_nodes=targets[1],
                node_deallocation_option=BatchNodeDeallocationOption.TASK_COMPLETION,
            )
            await retry_call(
                settings.retry, "resize_pool", lambda: clients.batch.begin_resize_pool(pool_id, options)
            )
    except (HttpResponseError, PoolError) as error:
        log.error(
            "pool.autoscale_revert_failed",
            pool_id=pool_id,
            error_type=type(error).__name__,
            error_code=error_code_of(error),
        )
        return
    log.warning(
        "pool.autoscale_reverted",
        pool_id=pool_id,
        target_dedicated=targets[0],
        target_low_priority=targets[1],
        reason=reason[:300],
    )


async def wait_steady(settings: Settings, clients: Clients) -> BatchPool:
    """The pool once it is not resizing, within `[pool] ready_timeout_s` (PoolError after)."""
    delay = STEADY_POLL_MIN_S
    try:
        with anyio.fail_after(settings.pool.ready_timeout_s):
            while not allocation_steady(pool := await _get_pool(settings, clients)):
                await anyio.sleep(delay)
                delay = min(delay * 2, STEADY_POLL_MAX_S)
    except TimeoutError:
        raise PoolError(
            f"pool {settings.pool.id} was still resizing after {settings.pool.ready_timeout_s:.0f} s; "
            "autoscale can be enabled once it is steady"
        ) from None
    return pool


@dataclass(frozen=True)
class PoolView:
    nodes_by_state: dict[str, int]
    target_nodes: int
    # Resize errors, plus one while the pool's last autoscale evaluation failed: either way the pool
    # cannot follow the work, so readiness (/readyz) is false.
    resize_errors: int
    autoscale_error: str | None  # `code: message` of the failing autoscale run
    sas_expires_at: datetime | None


async def read_pool_view(settings: Settings, clients: Clients, keeper: PoolKeeper) -> PoolView:
    """Node states, target, resize and autoscale errors (one get_pool, one node listing)."""
    pool_id = settings.pool.id
    async with unattributed_requests():
        pool = await retry_call(settings.retry, "get_pool", lambda: clients.batch.get_pool(pool_id))

        async def listing() -> Counter[str]:
            return Counter(
                [wire_text(node.state) or "unknown" async for node in clients.batch.list_nodes(pool_id)]
            )

        states = await retry_call(settings.retry, "list_nodes", listing)
    target = int(pool.target_dedicated_nodes or 0) + int(pool.target_low_priority_nodes or 0)
    autoscale_error = failing_autoscale_run(pool)
    report_autoscale_error(keeper, pool_id, autoscale_error)
    return PoolView(
        nodes_by_state=dict(states),
        target_nodes=target,
        resize_errors=len(pool.resize_errors or []) + (autoscale_error is not None),
        autoscale_error=autoscale_error,
        sas_expires_at=keeper.script_sas_expires_at,
    )


def failing_autoscale_run(pool: BatchPool) -> str | None:
    """The error of the pool's last autoscale evaluation, if autoscale is on and that evaluation failed."""
    run = pool.auto_scale_run
    if not pool.enable_auto_scale or run is None or run.error is None:
        return None
    return autoscale_error_text(run.error)


def report_autoscale_error(keeper: PoolKeeper, pool_id: str, error: str | None) -> None:
    """An event when the pool's autoscale starts failing (or fails otherwise), and when it recovers."""
    if error == keeper.autoscale_error:
        return
    if error is not None:
        log.warning("pool.autoscale_error", pool_id=pool_id, error=error)
    else:
        log.info("pool.autoscale_error_cleared", pool_id=pool_id)
    keeper.autoscale_error = error


async def keep_pool(
    settings: Settings,
    clients: Clients,
    keeper: PoolKeeper,
    *,
    timer: SasTimer = SasTimer(),
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Ensure the pool (and its formula) at start; then renew the script SAS on the keeper's own timer."""
    # A pool this keeper creates evaluates its formula as configured: no enableAutoScale right after.
    keeper.autoscale_interval = timedelta(seconds=settings.daemon.autoscale_interval_s)
    try:
        await keeper.ensure(utc_now() + timer.margin)
    except AutoscaleRefused as refused:  # creating the pool with the formula was refused (400)
        raise ConfigError(
            f"{formula_key(settings)} was refused by Batch for pool {settings.pool.id}: {refused.detail}"
        ) from None
    await apply_autoscale(settings, clients)
    task_status.started()
    while True:
        await anyio.sleep(timer.check_every_s)
        # ensure() renews only when the SAS would end before this; a run asking for longer extends it.
        await keeper.ensure(utc_now() + timer.margin)


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
