"""Make sure the pool exists and can run tasks; a failed start task ends the wait at once, with its stderr."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from datetime import timedelta
from typing import Any, Protocol

import anyio
import structlog
from azure.batch.models import (
    AutoUserSpecification,
    BatchNode,
    BatchPool,
    BatchPoolCreateOptions,
    BatchStartTask,
    BatchVmImageReference,
    ResourceFile,
    UserIdentity,
    VirtualMachineConfiguration,
)
from azure.core.exceptions import HttpResponseError, ResourceExistsError

from orchestrator.errors import PoolError
from orchestrator.monitor import next_poll_interval, wire_value
from orchestrator.retry import RetryPolicy, error_code_of, retry_call
from orchestrator.settings import PoolSettings

log = structlog.get_logger()

USABLE_STATES = frozenset({"idle", "running"})
START_TASK_STDERR = "startup/stderr.txt"
STDERR_TAIL_BYTES = 2048
POOL_POLL_MIN_S = 0.25
POOL_POLL_MAX_S = 5.0


class PoolClient(Protocol):
    """The Batch operations pool provisioning needs (azure.batch.aio.BatchClient has them)."""

    def create_pool(self, pool: BatchPoolCreateOptions, **kwargs: Any) -> Awaitable[None]: ...

    def get_pool(self, pool_id: str, **kwargs: Any) -> Awaitable[BatchPool]: ...

    def list_nodes(self, pool_id: str, **kwargs: Any) -> AsyncIterator[BatchNode]: ...

    async def download_node_file(
        self, pool_id: str, node_id: str, file_path: str, **kwargs: Any
    ) -> AsyncIterator[bytes]: ...


def pool_create_options(
    settings: PoolSettings, node_script_url: str, start_command: str
) -> BatchPoolCreateOptions:
    """The pool as configured; the start task gets the node script as a resource file."""
    start_task = BatchStartTask(
        command_line=start_command,
        resource_files=[ResourceFile(http_url=node_script_url, file_path="node.pyz", file_mode="0644")],
        wait_for_success=True,
        max_task_retry_count=1,
        # Pool-wide admin: the start task installs into the node's shared folder (DESIGN §9).
        user_identity=UserIdentity(auto_user=AutoUserSpecification(scope="pool", elevation_level="admin")),
    )
    sizing: dict[str, Any]
    if settings.autoscale_formula:
        sizing = {
            "enable_auto_scale": True,
            "auto_scale_formula": settings.autoscale_formula,
            "auto_scale_evaluation_interval": timedelta(minutes=5),
        }
    else:
        sizing = {
            "target_dedicated_nodes": settings.dedicated_nodes,
            "target_low_priority_nodes": settings.low_priority_nodes,
        }
    return BatchPoolCreateOptions(
        id=settings.id,
        vm_size=settings.vm_size,
        virtual_machine_configuration=VirtualMachineConfiguration(
            image_reference=BatchVmImageReference(
                publisher=settings.image_publisher,
                offer=settings.image_offer,
                sku=settings.image_sku,
                version="latest",
            ),
            node_agent_sku_id=settings.node_agent_sku_id,
        ),
        task_slots_per_node=settings.task_slots_per_node,
        start_task=start_task,
        **sizing,
    )


async def ensure_pool(
    batch: PoolClient, settings: PoolSettings, node_script_url: str, start_command: str, retry: RetryPolicy
) -> bool:
    """Create the pool unless it exists; True when this call created it."""
    options = pool_create_options(settings, node_script_url, start_command)
    try:
        await retry_call(retry, "create_pool", lambda: batch.create_pool(options))
    except ResourceExistsError as error:
        if error_code_of(error) == "PoolBeingDeleted":
            raise PoolError(
                f"pool {settings.id} is being deleted; wait until it is gone or set [pool] id to another name"
            ) from None
        return False
    except HttpResponseError as error:
        raise PoolError(
            f"cannot create pool {settings.id}: {error_code_of(error)} ({error.status_code})"
        ) from None
    return True


async def pool_stages_script(batch: PoolClient, pool_id: str, blob_name: str, retry: RetryPolicy) -> bool:
    """True when the pool's start task stages this very node script blob (names hold its hash)."""
    existing = await retry_call(
        retry, "get_pool", lambda: batch.get_pool(pool_id, select=["id", "startTask"])
    )
    start_task = existing.start_task
    files = start_task.resource_files if start_task is not None and start_task.resource_files else []
    return any(blob_name in (resource.http_url or "") for resource in files)


def classify_nodes(nodes: Sequence[BatchNode]) -> tuple[list[BatchNode], list[BatchNode], list[BatchNode]]:
    """(usable, start task failed, unusable) nodes of a listing."""
    usable = [node for node in nodes if wire_value(node.state) in USABLE_STATES]
    start_failed = [node for node in nodes if wire_value(node.state) == "starttaskfailed"]
    unusable = [node for node in nodes if wire_value(node.state) == "unusable"]
    return usable, start_failed, unusable


async def wait_until_usable(
    batch: PoolClient,
    pool_id: str,
    *,
    timeout_s: float,
    retry: RetryPolicy,
    created: bool,
    needed: int = 1,
) -> int:
    """Wait until `needed` nodes are idle or running; returns how many are. PoolError on failure."""
    started = time.monotonic()
    interval = POOL_POLL_MIN_S
    last_states: tuple[str, ...] = ()
    try:
        with anyio.fail_after(timeout_s):
            while True:

                async def listing() -> list[BatchNode]:
                    return [
                        node
                        async for node in batch.list_nodes(
                            pool_id, select=["id", "state", "startTaskInfo", "errors"]
                        )
                    ]

                nodes = await retry_call(retry, "list_nodes", listing)
                usable, start_failed, unusable = classify_nodes(nodes)
                if len(usable) >= needed:
                    log.info(
                        "pool.ready",
                        pool_id=pool_id,
                        nodes_usable=len(usable),
                        created=created,
                        waited_s=round(time.monotonic() - started, 3),
                    )
                    return len(usable)
                if start_failed and not usable:
                    raise await _start_task_error(batch, pool_id, start_failed[0], retry, created)
                if unusable and len(unusable) == len(nodes):
                    raise PoolError(
                        f"every node of pool {pool_id} is unusable; check the pool in the Batch account"
                    )
                if not nodes:
                    await _check_allocation(batch, pool_id, retry)
                states = tuple(sorted(str(wire_value(node.state)) for node in nodes))
                interval = next_poll_interval(
                    interval, states != last_states, POOL_POLL_MIN_S, POOL_POLL_MAX_S
                )
                last_states = states
                await anyio.sleep(interval)
    except TimeoutError:
        raise PoolError(
            f"pool {pool_id} had no usable node after {timeout_s:.0f} s; check its allocation and quota, "
            "or raise [pool] ready_timeout_s"
        ) from None


async def _check_allocation(batch: PoolClient, pool_id: str, retry: RetryPolicy) -> None:
    """A pool with no nodes and a resize error will never get any: say why instead of waiting."""
    pool = await retry_call(retry, "get_pool", lambda: batch.get_pool(pool_id))
    if pool.resize_errors and wire_value(pool.allocation_state) == "steady":
        error = pool.resize_errors[0]
        raise PoolError(f"pool {pool_id} could not allocate nodes: {error.code}: {error.message}")
    if (
        wire_value(pool.allocation_state) == "steady"
        and not pool.enable_auto_scale
        and (pool.target_dedicated_nodes or 0) + (pool.target_low_priority_nodes or 0) == 0
    ):
        raise PoolError(
            f"pool {pool_id} exists with zero target nodes; resize it or set [pool] dedicated_nodes"
        )


async def _start_task_error(
    batch: PoolClient, pool_id: str, node: BatchNode, retry: RetryPolicy, created: bool
) -> PoolError:
    """PoolError quoting the tail of the failed start task's stderr."""
    info = node.start_task_info
    exit_code = info.exit_code if info is not None else None
    tail = ""
    try:

        async def read() -> bytes:
            stream = await batch.download_node_file(pool_id, str(node.id), START_TASK_STDERR)
            return b"".join([chunk async for chunk in stream])

        tail = stderr_tail(await retry_call(retry, "get_node_file", read))
    except HttpResponseError:
        tail = "(the node's start task stderr could not be read)"
    quoted = "\n".join(f"  | {line}" for line in tail.splitlines()) or "  | (empty)"
    return PoolError(
        f"the start task failed on node {node.id} of pool {pool_id} (exit code {exit_code}); "
        f"the end of its stderr:\n{quoted}\n"
        + (
            "Fix the start task ([pool] start_task_command); topn deletes the pool it created for this run."
            if created
            else "Fix the start task ([pool] start_task_command), then delete the pool so its nodes restart."
        )
    )


def stderr_tail(data: bytes, max_bytes: int = STDERR_TAIL_BYTES, max_lines: int = 20) -> str:
    """The last lines of a log, decoded leniently, at most `max_bytes` and `max_lines`."""
    text = data[-max_bytes:].decode("utf-8", errors="replace")
    return "\n".join(text.rstrip("\n").splitlines()[-max_lines:])
