"""Make sure the pool exists and can run tasks; a failed start task ends the wait at once, with its stderr.

A pool kept from an earlier run (`[pool] delete_after_run = false`) has a start task whose node
script SAS was minted by the run that created or last renewed it, and that SAS expires with that
run: any node that joins or reboots later would fail its start task (403 from Storage). So a run
that reuses a pool renews the start task's SAS (`renew_start_task`), and reboots, once, the nodes
whose start task failed (`wait_until_usable(..., reboot_failed_nodes=True)`).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import anyio
import structlog
from azure.batch.models import (
    AutoUserSpecification,
    BatchMetadataItem,
    BatchNode,
    BatchPool,
    BatchPoolCreateOptions,
    BatchPoolUpdateOptions,
    BatchStartTask,
    BatchVmImageReference,
    ResourceFile,
    UserIdentity,
    VirtualMachineConfiguration,
)
from azure.batch.models._models import BatchNodeRebootOptions  # not exported (SDK quirk)
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.core.polling import AsyncLROPoller

from orchestrator.azure import quota
from orchestrator.azure.nodefiles import stderr_tail
from orchestrator.azure.retry import RetryPolicy, error_code_of, next_poll_interval, retry_call
from orchestrator.azure.sas import CLOCK_SKEW, utc_now
from orchestrator.azure.states import NodeState, allocation_steady, node_state
from orchestrator.errors import ConfigError, PoolError
from orchestrator.settings import PoolSettings

log = structlog.get_logger()

START_TASK_STDERR = "startup/stderr.txt"
POOL_POLL_MIN_S = 0.25
POOL_POLL_MAX_S = 5.0
# Where the start task puts the node script it downloads (its resource file's filePath).
NODE_SCRIPT_FILE = "node.pyz"
# Pool metadata topn writes when it points a kept pool's start task at another node script: which
# blob, and since when (UTC). Nodes whose start task began earlier may still hold an older script.
SCRIPT_METADATA = "topn-node-script"
SCRIPT_SINCE_METADATA = "topn-node-script-since"
RenewalReason = Literal["expiring", "other_script"]
AUTOSCALE_INTERVAL = timedelta(minutes=5)  # evaluation interval unless a caller names one (Batch's minimum)


@dataclass(frozen=True)
class Capacity:
    """What a pool can run at once, as last seen: usable nodes and their task slots."""

    usable_nodes: int
    slots: int


@dataclass(frozen=True)
class PoolHandle:
    """What a run needs of the kept pool: its id, and the node script URL a task must bring, if any."""

    pool_id: str
    # Set when the pool's nodes may hold another node script: each task then downloads this one.
    task_script_url: str | None


class PoolDeleter(Protocol):
    def begin_delete_pool(self, pool_id: str, **kwargs: Any) -> Awaitable[AsyncLROPoller[None]]: ...


class PoolClient(Protocol):
    """The Batch operations pool provisioning needs (azure.batch.aio.BatchClient has them)."""

    def create_pool(self, pool: BatchPoolCreateOptions, **kwargs: Any) -> Awaitable[None]: ...

    def get_pool(self, pool_id: str, **kwargs: Any) -> Awaitable[BatchPool]: ...

    def list_nodes(self, pool_id: str, **kwargs: Any) -> AsyncIterator[BatchNode]: ...

    def update_pool(self, pool_id: str, pool: BatchPoolUpdateOptions, **kwargs: Any) -> Awaitable[None]: ...

    def begin_reboot_node(
        self, pool_id: str, node_id: str, options: BatchNodeRebootOptions | None = None, **kwargs: Any
    ) -> Awaitable[AsyncLROPoller[None]]: ...

    def get_node(self, pool_id: str, node_id: str, **kwargs: Any) -> Awaitable[BatchNode]: ...

    async def download_node_file(
        self, pool_id: str, node_id: str, file_path: str, **kwargs: Any
    ) -> AsyncIterator[bytes]: ...


class AutoscaleRefused(ConfigError):
    """Batch refused the pool's autoscale formula or interval (400); `detail` is what it said."""

    def __init__(self, pool_id: str, detail: str) -> None:
        super().__init__(f"[pool] autoscale_formula was refused by Batch for pool {pool_id}: {detail}")
        self.detail = detail


def batch_error_text(error: HttpResponseError) -> str:
    """`code: message (key: value; ...)` of a Batch error answer: what a user needs to fix a request."""
    model = getattr(error, "model", None)
    values = "; ".join(f"{item.key}: {item.value}" for item in getattr(model, "error_values", None) or [])
    message = getattr(getattr(model, "message", None), "value", None) or str(error.message or error)
    text = f"{error_code_of(error) or error.status_code}: {message.splitlines()[0][:300]}"
    return f"{text} ({values[:500]})" if values else text


def pool_create_options(
    settings: PoolSettings, node_script_url: str, start_command: str, interval: timedelta = AUTOSCALE_INTERVAL
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
            "auto_scale_evaluation_interval": interval,
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
    batch: PoolClient,
    settings: PoolSettings,
    node_script_url: str,
    start_command: str,
    retry: RetryPolicy,
    *,
    account: str = "",
    autoscale_interval: timedelta = AUTOSCALE_INTERVAL,
) -> bool:
    """Create the pool unless it exists; True when this call created it.

    A 409 is read by its code: PoolExists means reuse; PoolBeingDeleted and PoolQuotaReached stop
    the run (exit 2 for the quota, naming it and how to raise it); any other conflict is an error.
    """
    options = pool_create_options(settings, node_script_url, start_command, autoscale_interval)
    try:
        await retry_call(retry, "create_pool", lambda: batch.create_pool(options))
    except ResourceExistsError as error:
        code = error_code_of(error)
        conflict = quota.classify_conflict(code)
        if conflict == quota.Conflict.EXISTS:
            return False
        if conflict == quota.Conflict.BEING_DELETED:
            raise PoolError(
                f"pool {settings.id} is being deleted; wait until it is gone or set [pool] id to another name"
            ) from None
        if conflict == quota.Conflict.QUOTA and code is not None:
            raise quota.account_quota_error(
                code,
                account,
                advice="Delete a pool you no longer need, or set [pool] id to an existing pool",
            ) from None
        raise PoolError(f"cannot create pool {settings.id}: {code} (409): {error.message}") from None
    except HttpResponseError as error:
        if error.status_code == 400 and settings.autoscale_formula:
            raise AutoscaleRefused(settings.id, batch_error_text(error)) from None
        raise PoolError(
            f"cannot create pool {settings.id}: {error_code_of(error)} ({error.status_code})"
        ) from None
    return True


async def delete_pool(batch: PoolDeleter, pool_id: str, retry: RetryPolicy) -> None:
    """Start deleting a pool and move on: the service finishes it; a pool already gone is fine."""
    with contextlib.suppress(HttpResponseError):
        await retry_call(retry, "delete_pool", lambda: batch.begin_delete_pool(pool_id))


# -- a kept pool's start task ---------------------------------------------------------------------
def sas_expiry(url: str) -> datetime | None:
    """When a SAS URL stops working (its `se=`, UTC), or None when it has no expiry that parses."""
    values = parse_qs(urlsplit(url).query).get("se")
    if not values:
        return None
    try:
        moment = datetime.fromisoformat(values[0])
    except ValueError:
        return None
    # A SAS expiry without an offset is UTC (Storage reads it so).
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def staged_script_url(start_task: BatchStartTask | None) -> str | None:
    """The URL the start task downloads the node script from, or None when it stages none."""
    if start_task is None:
        return None
    for resource in start_task.resource_files or []:
        if resource.file_path == NODE_SCRIPT_FILE and resource.http_url:
            return str(resource.http_url)
    return None


def same_blob(url: str, other: str) -> bool:
    """Whether two blob URLs (SAS or not, percent-encoded or not) name the same blob of the same account."""

    def location(address: str) -> tuple[str, str, str]:
        parts = urlsplit(address)
        return parts.scheme.lower(), parts.netloc.lower(), unquote(parts.path)

    return location(url) == location(other)


def start_task_renewal_reason(
    script_url: str | None, node_script_url: str, needed_until: datetime
) -> RenewalReason | None:
    """Why a reused pool's start task must be renewed for this run, or None when it will work as it is.

    `script_url` is what the start task stages now, `node_script_url` this run's node script, and
    `needed_until` this run's deadline plus `[run] sas_margin_s`: a node that joins or reboots until
    then runs the start task. A start task that stages no node script has no SAS to renew.
    """
    if script_url is None:
        return None
    if not same_blob(script_url, node_script_url):
        return "other_script"
    expiry = sas_expiry(script_url)
    if expiry is None or expiry < needed_until:
        return "expiring"
    return None


def renewed_start_task(start_task: BatchStartTask, node_script_url: str) -> BatchStartTask:
    """The same start task (command line, identity, retries, other files) staging `node_script_url`."""
    renewed = BatchStartTask(copy.deepcopy(start_task.as_dict()))
    renewed.resource_files = [
        ResourceFile(http_url=node_script_url, file_path=resource.file_path, file_mode=resource.file_mode)
        if resource.file_path == NODE_SCRIPT_FILE
        else resource
        for resource in start_task.resource_files or []
    ]
    return renewed


def script_metadata(
    metadata: Sequence[BatchMetadataItem] | None, blob_name: str, since: datetime
) -> list[BatchMetadataItem]:
    """The pool's metadata with topn's record of which node script its start task stages, since when."""
    ours = {SCRIPT_METADATA, SCRIPT_SINCE_METADATA}
    kept = [item for item in metadata or [] if item.name not in ours]
    return [
        *kept,
        BatchMetadataItem(name=SCRIPT_METADATA, value=blob_name),
        BatchMetadataItem(name=SCRIPT_SINCE_METADATA, value=since.astimezone(UTC).isoformat()),
    ]


def script_since(metadata: Sequence[BatchMetadataItem] | None, blob_name: str) -> datetime | None:
    """Since when the start task stages `blob_name`, if topn recorded a change to it (else None)."""
    values = {item.name: item.value for item in metadata or []}
    if values.get(SCRIPT_METADATA) != blob_name:
        return None
    try:
        since = datetime.fromisoformat(str(values.get(SCRIPT_SINCE_METADATA)))
    except ValueError:
        return None
    return since.replace(tzinfo=UTC) if since.tzinfo is None else since


def may_hold_older_script(nodes: Sequence[BatchNode], since: datetime) -> bool:
    """Whether a node may hold a node script from before `since`: its start task began before then.

    The node's times are the service's clock and `since` is ours, so a start within CLOCK_SKEW
    after it counts as before. A node that has not begun its start task will run the current one.
    """
    for node in nodes:
        info = node.start_task_info
        began = info.start_time if info is not None else None
        if began is not None and began < since + CLOCK_SKEW:
            return True
    return False


@dataclass(frozen=True)
class ReusedPool:
    """What a run learned and did about a pool an earlier run created."""

    tasks_bring_script: bool  # its nodes may hold another node script: each task downloads this run's
    renewal: RenewalReason | None  # why the start task was renewed, or None when it was kept
    kept_sas_expires_at: datetime | None = None  # when a kept start task's script SAS ends


async def refresh_reused_pool(
    batch: PoolClient,
    pool_id: str,
    *,
    blob_name: str,
    node_script_url: str,
    needed_until: datetime,
    retry: RetryPolicy,
) -> ReusedPool:
    """Make a reused pool's start task work for this run, and say whether tasks must bring the script.

    The start task is renewed (PATCH, only `startTask`, plus topn's metadata when the script
    changes) when its node script SAS ends before `needed_until` or it stages another script.
    """
    existing = await retry_call(
        retry, "get_pool", lambda: batch.get_pool(pool_id, select=["id", "startTask", "metadata"])
    )
    current_url = staged_script_url(existing.start_task)
    reason = start_task_renewal_reason(current_url, node_script_url, needed_until)
    if reason is not None and existing.start_task is not None and current_url is not None:
        await _renew_start_task(
            batch,
            existing,
            current_url,
            reason,
            blob_name=blob_name,
            node_script_url=node_script_url,
            retry=retry,
        )
    if current_url is None or reason == "other_script":
        return ReusedPool(tasks_bring_script=True, renewal=reason)
    kept = sas_expiry(current_url) if reason is None else None
    since = script_since(existing.metadata, blob_name)
    if since is None:
        return ReusedPool(tasks_bring_script=False, renewal=reason, kept_sas_expires_at=kept)

    async def listing() -> list[BatchNode]:
        return [node async for node in batch.list_nodes(pool_id, select=["id", "state", "startTaskInfo"])]

    nodes = await retry_call(retry, "list_nodes", listing)
    return ReusedPool(may_hold_older_script(nodes, since), renewal=reason, kept_sas_expires_at=kept)


async def _renew_start_task(
    batch: PoolClient,
    existing: BatchPool,
    current_url: str,
    reason: RenewalReason,
    *,
    blob_name: str,
    node_script_url: str,
    retry: RetryPolicy,
) -> None:
    assert existing.start_task is not None
    pool_id = str(existing.id)
    update = BatchPoolUpdateOptions(start_task=renewed_start_task(existing.start_task, node_script_url))
    if reason == "other_script":
        update.metadata = script_metadata(existing.metadata, blob_name, utc_now())
    try:
        await retry_call(retry, "update_pool", lambda: batch.update_pool(pool_id, update))
    except HttpResponseError as error:
        raise PoolError(
            f"cannot renew the start task of pool {pool_id}: {error_code_of(error)} ({error.status_code}); "
            "delete the pool or set [pool] id to another name"
        ) from None
    expiry = sas_expiry(current_url)
    log.info(
        "pool.start_task_renewed",
        pool_id=pool_id,
        reason=reason,
        sas_expires_in_s=round((expiry - utc_now()).total_seconds(), 1) if expiry is not None else None,
    )


async def reboot_node(
    batch: PoolClient, pool_id: str, node_id: str, reason: str, retry: RetryPolicy
) -> str | None:
    """Reboot a node so it runs the pool's current start task (its running tasks are requeued).

    Returns None when the node reboots (or left the pool), else the error code Batch refused the
    reboot with: a node whose start task failed may be refused (reboot is for idle or running nodes).
    """
    # With no options the SDK fails before sending (reference gotcha 5): say requeue, the default.
    options = BatchNodeRebootOptions(node_reboot_kind="requeue")
    try:
        await retry_call(retry, "reboot_node", lambda: batch.begin_reboot_node(pool_id, node_id, options))
    except ResourceNotFoundError:
        return None  # it left the pool: the wait that follows sees what the pool does next
    except ResourceExistsError as error:
        # 409: rebooting already (a retried request that did arrive), or refused. The node's state
        # tells them apart: still `starttaskfailed` means the reboot will never happen.
        try:
            node = await retry_call(
                retry, "get_node", lambda: batch.get_node(pool_id, node_id, select=["id", "state"])
            )
        except ResourceNotFoundError:
            return None
        if node_state(node) != NodeState.START_TASK_FAILED:
            return None
        code = error_code_of(error) or "Conflict"
        log.warning("node.reboot_refused", pool_id=pool_id, node_id=node_id, reason=reason, error_code=code)
        return code
    log.info("node.rebooted", pool_id=pool_id, node_id=node_id, reason=reason)
    return None


def classify_nodes(nodes: Sequence[BatchNode]) -> tuple[list[BatchNode], list[BatchNode], list[BatchNode]]:
    """(usable, start task failed, unusable) nodes of a listing."""
    usable = [node for node in nodes if node_state(node).usable]
    start_failed = [node for node in nodes if node_state(node) == NodeState.START_TASK_FAILED]
    unusable = [node for node in nodes if node_state(node) == NodeState.UNUSABLE]
    return usable, start_failed, unusable


async def wait_until_usable(
    batch: PoolClient,
    pool_id: str,
    *,
    timeout_s: float,
    retry: RetryPolicy,
    created: bool,
    needed: int = 1,
    reboot_failed_nodes: bool = False,
    account: str = "",
) -> int:
    """Wait until `needed` nodes are idle or running; returns how many are. PoolError on failure.

    With `reboot_failed_nodes` (a reused pool whose start task was just renewed) a node whose start
    task failed is rebooted, once, and waited for; only a node that fails again ends the wait.
    """
    started = time.monotonic()
    interval = POOL_POLL_MIN_S
    last_states: tuple[str, ...] = ()
    # Node id -> when the failed start task had begun when topn rebooted the node: a later start
    # that failed too is a failure of the renewed start task.
    rebooted: dict[str, datetime | None] = {}
    refused: dict[str, str] = {}  # node id -> the code Batch refused its reboot with
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
                if reboot_failed_nodes:
                    for node in start_failed:
                        if str(node.id) not in rebooted:
                            rebooted[str(node.id)] = _start_time(node)
                            code = await reboot_node(batch, pool_id, str(node.id), "start_task_failed", retry)
                            if code is not None:
                                refused[str(node.id)] = code
                    # A refused reboot will not happen: that node stays failed (reported below at once).
                    start_failed = [
                        node
                        for node in start_failed
                        if str(node.id) in refused or _start_time(node) != rebooted[str(node.id)]
                    ]
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
                    failed = start_failed[0]
                    raise await _start_task_error(
                        batch,
                        pool_id,
                        failed,
                        retry,
                        created,
                        rebooted=bool(rebooted),
                        reboot_refused=refused.get(str(failed.id)),
                    )
                if unusable and len(unusable) == len(nodes):
                    raise PoolError(
                        f"every node of pool {pool_id} is unusable; check the pool in the Batch account"
                    )
                if not nodes:
                    await _check_allocation(batch, pool_id, retry, account)
                states = tuple(sorted(str(node.state) for node in nodes))
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


async def _check_allocation(batch: PoolClient, pool_id: str, retry: RetryPolicy, account: str) -> None:
    """A pool with no nodes and a resize error will never get any: say why instead of waiting."""
    pool = await retry_call(retry, "get_pool", lambda: batch.get_pool(pool_id))
    if pool.resize_errors and allocation_steady(pool):
        error = next(
            (item for item in pool.resize_errors if quota.is_core_quota(item.code)), pool.resize_errors[0]
        )
        code, message = str(error.code), str(error.message or "").rstrip(".")
        if quota.is_core_quota(code) or code == "AllocationFailed":
            raise quota.resize_error(pool_id, account, str(pool.vm_size), code, message)
        raise PoolError(f"pool {pool_id} could not allocate nodes: {code}: {message}")
    if (
        allocation_steady(pool)
        and not pool.enable_auto_scale
        and (pool.target_dedicated_nodes or 0) + (pool.target_low_priority_nodes or 0) == 0
    ):
        raise PoolError(
            f"pool {pool_id} exists with zero target nodes; resize it or set [pool] dedicated_nodes"
        )


def _start_time(node: BatchNode) -> datetime | None:
    return node.start_task_info.start_time if node.start_task_info is not None else None


async def _start_task_error(
    batch: PoolClient,
    pool_id: str,
    node: BatchNode,
    retry: RetryPolicy,
    created: bool,
    rebooted: bool = False,
    reboot_refused: str | None = None,
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
    if created:
        advice = (
            "Fix the start task ([pool] start_task_command); topn deletes the pool it created for this run."
        )
    elif reboot_refused is not None:
        advice = (
            f"topn renewed the start task, but Batch refused to reboot the node ({reboot_refused}), so "
            "it would never run the renewed one. Remove the node from the pool (Azure portal: the pool > "
            "Nodes > Remove; Batch then allocates a new one that runs the current start task) or delete "
            "the pool, then run again."
        )
    elif rebooted:
        advice = (
            "topn renewed the start task and rebooted the node once, and it failed again. Fix the start "
            "task ([pool] start_task_command), then delete the pool so its nodes restart."
        )
    else:
        advice = "Fix the start task ([pool] start_task_command), then delete the pool so its nodes restart."
    return PoolError(
        f"the start task failed on node {node.id} of pool {pool_id} (exit code {exit_code}); "
        f"the end of its stderr:\n{quoted}\n{advice}"
    )
