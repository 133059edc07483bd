"""Pool autoscale: the 30-second sampler, the evaluation schedule, and the three autoscale operations.

Each autoscale pool has one background loop. It samples the pool's task and node counts every 30 s
(a sample becomes visible to formulas 30 s later; the service has a similar delay), evaluates the formula when
autoscale is enabled and then every `autoScaleEvaluationInterval`, writes `autoScaleRun`, and resizes
the pool to the new targets once it is steady, with the formula's `$NodeDeallocationOption`.
`--time-scale F` runs every one of those periods F times as fast; the wire values stay the service's.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from aiohttp import web
from anyio.abc import TaskGroup

from emulator.autoscale_settings import (
    ENABLE_THROTTLE_S,
    SAMPLE_DELAY_S,
    SAMPLE_PERIOD_S,
    validate_enable,
    validate_evaluate,
)
from emulator.formula_eval import Evaluation, PoolMetrics, Sample, evaluate
from emulator.model import AllocationState, Pool, PoolState
from emulator.rest import base_url, entity_headers, json_response, read_body, route, services
from emulator.runner import Runner
from emulator.state import Account
from emulator.wire import ServiceError, format_time, parse_duration, utc_now

log = structlog.get_logger("emulator")

# A day of samples: more history than any formula of the supported subset can ask for usefully.
MAX_SAMPLES = 2880
# How often a loop with targets to apply checks whether the pool became steady (real seconds).
APPLY_POLL_S = 0.05
RUN_METADATA = "$metadata#Microsoft.Azure.Batch.Protocol.Entities.AutoScaleRun"


@dataclass(eq=False)
class PoolAutoScale:
    """A pool's sample history and schedule; it outlives a disable, so history is kept."""

    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    last_enable: float | None = None  # monotonic time of the last accepted enableautoscale
    scope: anyio.CancelScope | None = None


def pool_sample(account: Account, pool: Pool) -> dict[str, float]:
    """The metric values of one sample: task counts of the pool's active jobs and its node counts."""
    active = running = succeeded = failed = 0
    for job in account.active_jobs_for_pool(pool.id):
        active += job.counts.active
        running += job.counts.running
        succeeded += job.counts.succeeded
        failed += job.counts.failed
    dedicated = sum(1 for node in pool.nodes.values() if node.is_dedicated)
    return {
        "$ActiveTasks": float(active),
        "$RunningTasks": float(running),
        "$PendingTasks": float(active + running),
        "$SucceededTasks": float(succeeded),
        "$FailedTasks": float(failed),
        "$CurrentDedicatedNodes": float(dedicated),
        "$CurrentLowPriorityNodes": float(len(pool.nodes) - dedicated),
        "$PreemptedNodeCount": 0.0,  # the emulator never preempts a node (only task attempts)
    }


def run_json(evaluation: Evaluation) -> dict[str, Any]:
    """An `autoScaleRun` as the service returns it."""
    run: dict[str, Any] = {"timestamp": format_time(utc_now()), "results": evaluation.results}
    if evaluation.error is not None:
        run["error"] = evaluation.error.to_wire()
    return run


def refuse_manual_resize(pool: Pool) -> None:
    """A pool under autoscale is sized by its formula; the service answers a resize with 409."""
    if pool.spec.get("enableAutoScale"):
        raise ServiceError(
            409,
            "OperationInvalidForCurrentState",
            "The pool has autoscale enabled; disable autoscale before resizing it.",
        )


class Autoscaler:
    """Runs every autoscale pool's loop in the emulator's task group."""

    def __init__(self, account: Account, runner: Runner, group: TaskGroup, time_scale: float = 1.0) -> None:
        self.account = account
        self.runner = runner
        self.group = group
        self.time_scale = time_scale
        self.pools: dict[Pool, PoolAutoScale] = {}

    def service_now(self) -> float:
        """The service's clock in seconds: real time divided by the time scale."""
        return anyio.current_time() / self.time_scale

    # -- operations ---------------------------------------------------------------------------
    def start(self, pool: Pool) -> None:
        """(Re)start the pool's schedule: it evaluates now, then every interval."""
        state = self.pools.setdefault(pool, PoolAutoScale())
        if state.scope is not None:
            state.scope.cancel()
        # The scope exists before the loop starts, so a second start always stops the first loop.
        state.scope = anyio.CancelScope()
        self.group.start_soon(self._loop, pool, state, state.scope, name=f"autoscale {pool.id}")

    def enable(self, pool: Pool, body: dict[str, Any]) -> None:
        _require_not_deleting(pool)
        enabled = bool(pool.spec.get("enableAutoScale"))
        if not enabled and pool.allocation_state != AllocationState.STEADY:
            raise ServiceError(
                409,
                "PoolBeingResized",
                "The pool is resizing; autoscale can be enabled once it is steady.",
            )
        changes = validate_enable(body, enabled)
        state = self.pools.setdefault(pool, PoolAutoScale())
        now = anyio.current_time()
        if state.last_enable is not None and now - state.last_enable < ENABLE_THROTTLE_S * self.time_scale:
            # The code Microsoft's SDKs name for this limit (BatchErrorCodeStrings / BatchErrorCode), as a
            # 409 so no SDK retries it: the caller waits the 30 s (docs/emulator.md, "Choices").
            raise ServiceError(
                409,
                "AutoScaleTooManyRequestsToEnable",
                "Too many enable autoscale requests were issued on the pool; wait 30 seconds between them.",
            )
        state.last_enable = now
        pool.spec = {**pool.spec, "enableAutoScale": True, **changes}
        pool.touch(utc_now())
        log.info("pool.autoscale_enabled", pool_id=pool.id, interval=pool.spec["autoScaleEvaluationInterval"])
        # A new interval (or autoscale turned on) starts a new schedule; a new formula alone keeps it.
        if not enabled or "autoScaleEvaluationInterval" in changes:
            self.start(pool)

    def disable(self, pool: Pool) -> None:
        _require_not_deleting(pool)
        state = self.pools.get(pool)
        if state is not None and state.scope is not None:
            state.scope.cancel()
            state.scope = None
        spec = {key: value for key, value in pool.spec.items() if not key.startswith("autoScale")}
        pool.spec = {**spec, "enableAutoScale": False}
        pool.touch(utc_now())
        log.info("pool.autoscale_disabled", pool_id=pool.id)

    def evaluate(self, pool: Pool, formula: str) -> dict[str, Any]:
        """Evaluate a formula on the pool's current samples without applying it."""
        if not pool.spec.get("enableAutoScale"):
            raise ServiceError(
                409,
                "OperationInvalidForCurrentState",
                "Autoscale is not enabled on the pool; enable it before evaluating a formula.",
            )
        return run_json(evaluate(formula, self.metrics(pool)))

    # -- the loop -----------------------------------------------------------------------------
    def metrics(self, pool: Pool) -> PoolMetrics:
        """What a formula sees now: samples at least one period old, the pool's counts and targets."""
        state = self.pools.setdefault(pool, PoolAutoScale())
        now = self.service_now()
        visible = [sample for sample in state.samples if sample.time_s <= now - SAMPLE_DELAY_S]
        return PoolMetrics(
            now_s=now,
            samples=visible,
            sample_period_s=SAMPLE_PERIOD_S,
            current=pool_sample(self.account, pool),
            target_dedicated=int(pool.spec.get("targetDedicatedNodes", 0)),
            target_low_priority=int(pool.spec.get("targetLowPriorityNodes", 0)),
        )

    def _alive(self, pool: Pool) -> bool:
        return (
            pool.state == PoolState.ACTIVE
            and self.account.pools.get(pool.id.lower()) is pool
            and bool(pool.spec.get("enableAutoScale"))
        )

    async def _loop(self, pool: Pool, state: PoolAutoScale, scope: anyio.CancelScope) -> None:
        with scope:
            next_sample = next_evaluation = self.service_now()
            pending: Evaluation | None = None
            while self._alive(pool):
                now = self.service_now()
                if now >= next_sample:
                    state.samples.append(Sample(now, pool_sample(self.account, pool)))
                    while next_sample <= now:
                        next_sample += SAMPLE_PERIOD_S
                if now >= next_evaluation:
                    outcome = self._run_formula(pool)
                    pending = outcome if outcome.error is None else pending
                    next_evaluation = now + parse_duration(str(pool.spec["autoScaleEvaluationInterval"]))
                if pending is not None and pool.allocation_state == AllocationState.STEADY:
                    self._apply(pool, pending)
                    pending = None
                wait_s = max((min(next_sample, next_evaluation) - self.service_now()) * self.time_scale, 0.0)
                await anyio.sleep(min(wait_s, APPLY_POLL_S) if pending is not None else wait_s)
        if self.pools.get(pool) is state and state.scope is scope:
            state.scope = None
        if self.account.pools.get(pool.id.lower()) is not pool:
            self.pools.pop(pool, None)  # the pool is gone: forget its history

    def _run_formula(self, pool: Pool) -> Evaluation:
        outcome = evaluate(str(pool.spec["autoScaleFormula"]), self.metrics(pool))
        pool.spec = {**pool.spec, "autoScaleRun": run_json(outcome)}
        log.info(
            "pool.autoscale_evaluated",
            pool_id=pool.id,
            target_dedicated=outcome.target_dedicated,
            target_low_priority=outcome.target_low_priority,
            deallocation=outcome.deallocation,
            error_code=outcome.error.code if outcome.error else None,
        )
        return outcome

    def _apply(self, pool: Pool, outcome: Evaluation) -> None:
        """Resize to the formula's targets unless the pool already has them."""
        dedicated = sum(1 for node in pool.nodes.values() if node.is_dedicated)
        wanted = (outcome.target_dedicated, outcome.target_low_priority)
        targets = (
            int(pool.spec.get("targetDedicatedNodes", 0)),
            int(pool.spec.get("targetLowPriorityNodes", 0)),
        )
        if wanted == targets == (dedicated, len(pool.nodes) - dedicated):
            return
        try:
            self.account.begin_resize_pool(pool, *wanted, outcome.deallocation)
        except ServiceError:
            return  # deleted or resizing after all: the next evaluation tries again
        self.group.start_soon(self.runner.resize_pool, pool)


AUTOSCALER = web.AppKey("autoscaler", Autoscaler)


def _require_not_deleting(pool: Pool) -> None:
    if pool.state == PoolState.DELETING:
        raise ServiceError(409, "PoolBeingDeleted", "The specified pool has been marked for deletion.")


def start_if_enabled(request: web.Request, pool: Pool) -> None:
    """A pool created with autoscale runs its formula from the start."""
    if pool.spec.get("enableAutoScale"):
        request.app[AUTOSCALER].start(pool)


# -- routes -------------------------------------------------------------------------------------
@route("POST", "/pools/{pool_id}/enableautoscale", "enable_pool_auto_scale")
async def enable_pool_auto_scale(request: web.Request) -> web.StreamResponse:
    pool = services(request).account.get_pool(request.match_info["pool_id"])
    request.app[AUTOSCALER].enable(pool, await read_body(request))
    return _pool_answer(request, pool)


@route("POST", "/pools/{pool_id}/disableautoscale", "disable_pool_auto_scale")
async def disable_pool_auto_scale(request: web.Request) -> web.StreamResponse:
    pool = services(request).account.get_pool(request.match_info["pool_id"])
    request.app[AUTOSCALER].disable(pool)
    return _pool_answer(request, pool)


@route("POST", "/pools/{pool_id}/evaluateautoscale", "evaluate_pool_auto_scale")
async def evaluate_pool_auto_scale(request: web.Request) -> web.StreamResponse:
    pool = services(request).account.get_pool(request.match_info["pool_id"])
    formula = validate_evaluate(await read_body(request))
    run = request.app[AUTOSCALER].evaluate(pool, formula)
    body = {"odata.metadata": f"{base_url(request)}/{RUN_METADATA}", **run}
    return json_response(
        body, headers={"DataServiceId": f"{base_url(request)}/pools/{pool.id}/evaluateautoscale"}
    )


def _pool_answer(request: web.Request, pool: Pool) -> web.Response:
    url = f"{base_url(request)}/pools/{pool.id}"
    return web.Response(
        status=200, headers={**entity_headers(pool.etag, pool.last_modified), "DataServiceId": url}
    )
