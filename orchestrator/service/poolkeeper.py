"""The pool keeper: one owner per process for the kept pool, its start task and the node script's SAS.

Runs never create, PATCH, reboot or delete the pool themselves (DESIGN §2): they ask the keeper for
a handle. The keeper makes sure of the pool once, under a lock, so several runs started together
in one process cause one create or one start-task renewal between them. The node script's SAS
belongs to the keeper and lives for `SCRIPT_SAS_LIFETIME` (renewed when a run needs it longer, and by
the daemon on its own timer, service/keeping.py), not for one run's deadline. Its Batch and Storage
requests are counted for the process, not for a run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

import anyio
import structlog

from orchestrator import naming
from orchestrator.azure import images, pool, staging
from orchestrator.azure.clients import Clients, unattributed_requests
from orchestrator.azure.pool import Capacity, PoolHandle
from orchestrator.azure.sas import DelegationKeyProvider, utc_now
from orchestrator.service import status
from orchestrator.settings import Settings, start_task_command

log = structlog.get_logger()

# How long the start task's node script SAS lasts at least; a run that needs longer extends it.
SCRIPT_SAS_LIFETIME = timedelta(hours=24)
# How long a capacity reading stays true enough to size work units without asking Batch again.
CAPACITY_FRESH_S = 30.0


@dataclass(frozen=True)
class _Staged:
    """The node script the start task stages, and until when its SAS works."""

    blob_name: str
    url: str
    expires_at: datetime
    handle: PoolHandle


class PoolKeeper:
    """Ensures the configured pool once per process; hands runs a `PoolHandle` and a capacity view."""

    def __init__(
        self,
        settings: Settings,
        clients: Clients,
        node_script: bytes | None = None,
        *,
        script_sas_lifetime: timedelta = SCRIPT_SAS_LIFETIME,
    ) -> None:
        self._settings = settings
        self._clients = clients
        self._node_script = node_script
        self._ensure_lock = anyio.Lock()
        self._wait_lock = anyio.Lock()
        self._staged: _Staged | None = None
        self._capacity: Capacity | None = None
        self._capacity_at: float | None = None  # time.monotonic() of the reading in `_capacity`
        self.created = False  # this process created the pool
        self.ever_usable = False  # it has had a usable node since this keeper first saw it
        self.image_check: images.ImageCheck | None = None  # the pool's image pair, checked once
        self.script_sas_lifetime = script_sas_lifetime  # the least a minted script SAS lives
        # How often a pool this keeper creates with a formula evaluates it (the daemon sets its own).
        self.autoscale_interval = pool.AUTOSCALE_INTERVAL
        self.autoscale_error: str | None = None  # the pool's failing autoscale run, as last reported

    @property
    def pool_id(self) -> str:
        return self._settings.pool.id

    async def ensure(self, needed_until: datetime) -> PoolHandle:
        """The pool exists and its start task's node script SAS works until `needed_until`."""
        async with self._ensure_lock, unattributed_requests():
            staged = self._staged
            if staged is not None and staged.expires_at >= needed_until:
                return staged.handle
            self._staged = await self._stage_and_ensure(needed_until)
            return self._staged.handle

    async def wait_usable(self) -> Capacity:
        """Wait until the pool has a usable node (a failed start task ends the wait with its stderr)."""
        async with self._wait_lock, unattributed_requests():
            if self._capacity_is_fresh() and self._capacity is not None and self._capacity.usable_nodes:
                return self._capacity
            pool_settings = self._settings.pool
            usable = await pool.wait_until_usable(
                self._clients.batch,
                pool_settings.id,
                timeout_s=pool_settings.ready_timeout_s,
                retry=self._settings.retry,
                created=self.created,
                # A kept pool's nodes that failed the old start task get one reboot into the renewed one.
                reboot_failed_nodes=not self.created,
                account=self._settings.batch.account_name,
            )
            self.ever_usable = True
            self._record_capacity(usable)
            assert self._capacity is not None
            return self._capacity

    @property
    def script_sas_expires_at(self) -> datetime | None:
        """When the start task's node script SAS ends (None before the first `ensure`)."""
        return self._staged.expires_at if self._staged is not None else None

    def planned_slots(self) -> int:
        """Task slots to size work units by: the last reading if fresh, else what config asks for."""
        if self._capacity_is_fresh() and self._capacity is not None and self._capacity.slots:
            return self._capacity.slots
        pool_settings = self._settings.pool
        nodes = max(1, pool_settings.dedicated_nodes + pool_settings.low_priority_nodes)
        return nodes * pool_settings.task_slots_per_node

    def invalidate(self) -> None:
        """Forget the capacity reading (work was added, or nodes changed): the next one asks Batch."""
        self._capacity_at = None

    def broken(self) -> bool:
        """Whether this process created the pool and it never had a usable node."""
        return self.created and not self.ever_usable

    async def delete(self) -> None:
        """Start deleting the pool (the shell's decision, never a run's); the service finishes it."""
        async with unattributed_requests():
            await pool.delete_pool(self._clients.batch, self.pool_id, self._settings.retry)

    def _capacity_is_fresh(self) -> bool:
        return self._capacity_at is not None and time.monotonic() - self._capacity_at < CAPACITY_FRESH_S

    def _record_capacity(self, usable_nodes: int) -> None:
        slots = usable_nodes * self._settings.pool.task_slots_per_node
        self._capacity = Capacity(usable_nodes=usable_nodes, slots=slots)
        self._capacity_at = time.monotonic()

    async def _stage_and_ensure(self, needed_until: datetime) -> _Staged:
        settings = self._settings
        script = self._node_script
        if script is None:
            # Real Batch nodes get the self-contained bundle; local mode's nodes run topn's own Python.
            wheels = None if settings.local.enabled else settings.local.state_dir / "node-wheels"
            script = await anyio.to_thread.run_sync(staging.build_node_script, wheels)
            self._node_script = script
        app_container = naming.app_container(settings.storage.container_prefix)
        await staging.ensure_containers(self._clients.blob_service, [app_container], settings.retry)
        blob_name = await staging.stage_node_script(
            self._clients.blob_service, app_container, script, settings.retry
        )
        lifetime_s = max(self.script_sas_lifetime.total_seconds(), (needed_until - utc_now()).total_seconds())
        minter = await staging.make_sas_minter(
            account_url=settings.storage.blob_endpoint,
            account_name=settings.storage.account_name,
            account_key=self._clients.storage_account_key,
            delegation_source=(
                cast(DelegationKeyProvider, self._clients.blob_service)
                if self._clients.storage_account_key is None
                else None
            ),
            run_timeout_s=lifetime_s,
            margin_s=0.0,
        )
        script_url = minter.blob_read_url(app_container, blob_name)
        start_command = start_task_command(settings)
        if self.image_check is None:
            # Once per process, before the pool is created or reused: a retired pair fails later, barely.
            self.image_check = await images.check_pool_image(
                self._clients.batch, settings.pool, settings.retry, utc_now(), source=str(settings.source)
            )
            await status.remember_pool_warning(
                settings.local.state_dir, settings.pool.id, self.image_check.warning
            )
        created = await pool.ensure_pool(
            self._clients.batch,
            settings.pool,
            script_url,
            start_command,
            settings.retry,
            account=settings.batch.account_name,
            autoscale_interval=self.autoscale_interval,
        )
        self.created = self.created or created
        task_script_url: str | None = None
        expires_at = minter.expires_at
        if not created:
            # A pool from before this keeper: its start task's SAS may end too soon, or stage another script.
            reused = await pool.refresh_reused_pool(
                self._clients.batch,
                settings.pool.id,
                blob_name=blob_name,
                node_script_url=script_url,
                needed_until=needed_until,
                retry=settings.retry,
            )
            if reused.tasks_bring_script:
                # Its nodes may hold another node script: each task brings this one along.
                log.warning("pool.node_script_outdated", pool_id=settings.pool.id, node_script_blob=blob_name)
                task_script_url = script_url
            if reused.kept_sas_expires_at is not None:
                # The start task was good enough as it was: its own SAS, not this one, says until when.
                expires_at = min(expires_at, reused.kept_sas_expires_at)
        return _Staged(
            blob_name=blob_name,
            url=script_url,
            expires_at=expires_at,
            handle=PoolHandle(pool_id=settings.pool.id, task_script_url=task_script_url),
        )
