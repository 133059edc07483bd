"""`topn daemon`: files arriving in an inbox become results, batch by batch, on one kept pool.

Start-up, each part started in order with `task_group.start` (it returns once that part is ready):
services (journal, clients + credential check, pool keeper: service/shell.py), the health server
(live, not ready), recovery (finish interrupted claims and moves, re-batch claimed files, queue
unfinished batches, reconcile unknown jobs), then ready (`/readyz`, systemd `READY=1`, the
`daemon.ready` event), then intake.

The main loop has arq's shape (`Worker._poll_iteration`): each iteration closes the batches that are
due, picks queued batches while a `CapacityLimiter(max_active_runs)` has room, updates the gauges,
writes the heartbeat `/livez` reads, and sleeps what is left of its period (`heartbeat_s`). Each
batch runs in the loop's task group (service/batchrun.py); the drain policy (service/drain.py)
decides when to stop. The slow periodic work against Batch and Storage (the pool view, the Storage
check, job clean-up) is a task of its own, each call bounded: a service that hangs delays it, never
the loop, so `/livez` and systemd's watchdog follow a wedged loop and not a slow service.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from azure.core.exceptions import ResourceNotFoundError

from orchestrator import naming
from orchestrator.azure.clients import BATCH, STORAGE, unattributed_requests
from orchestrator.azure.retry import retry_call
from orchestrator.errors import TopnError, first_leaf
from orchestrator.journal.intake import IntakeFile, IntakeStore
from orchestrator.secrets import redact_text
from orchestrator.service import admission
from orchestrator.service.batching import BatchLimits, Claimed, close_batches
from orchestrator.service.batchrun import RETRY_AFTER_INTERRUPTION_S, BatchProgress, BatchRunner
from orchestrator.service.claims import Claimer, DaemonFolders
from orchestrator.service.drain import DrainPolicy
from orchestrator.service.intake import CompleteFile, Inbox, watch_inbox
from orchestrator.service.keeping import DaemonPoolSupply, daemon_settings, keep_pool, read_pool_view
from orchestrator.service.memory import cap_malloc_arenas
from orchestrator.service.metrics import DaemonMetrics
from orchestrator.service.notify import SystemdNotifier
from orchestrator.service.shell import Services, open_services
from orchestrator.settings import Settings

log = structlog.get_logger()

TIDY_EVERY_S = 60.0
TIDY_TIMEOUT_S = 30.0  # deleting many expired jobs takes a while
POOL_VIEW_EVERY_S = 10.0  # also the Storage check: both are what readiness says of the services
REACHABILITY_TIMEOUT_S = 10.0  # a read that takes longer counts as the service not answering
RECENT_FAILURES = 50
TOPS_CACHED = 500


@dataclass
class DaemonState:
    """What the health server and the status page read; written by the loop, never by a handler."""

    daemon_id: str
    folders: DaemonFolders
    heartbeat_at: float | None = None  # time.monotonic() of the loop's last iteration
    recovered: bool = False
    draining: bool = False
    pool_resize_errors: int = 0
    batch_reachable: bool = True  # the last pool view was read in time (Batch answered)
    storage_reachable: bool = True  # the last Storage check was answered in time
    listen_url: str | None = None
    in_flight: dict[str, BatchProgress] = field(default_factory=dict)
    waiting_batches: list[str] = field(default_factory=list)
    unbatched: int = 0
    inbox_pending: int = 0
    pool_nodes: dict[str, int] = field(default_factory=dict)
    recent_failures: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_FAILURES))

    @property
    def services_reachable(self) -> bool:
        return self.batch_reachable and self.storage_reachable

    @property
    def ready(self) -> bool:
        return (
            self.recovered and not self.draining and self.pool_resize_errors == 0 and self.services_reachable
        )


class Daemon:
    """The long-lived service on one set of shared services."""

    def __init__(
        self,
        services: Services,
        store: IntakeStore,
        folders: DaemonFolders,
        metrics: DaemonMetrics,
        daemon_id: str,
    ) -> None:
        settings = services.settings.daemon
        self.services = services
        self.store = store
        self.folders = folders
        self.metrics = metrics
        self.state = DaemonState(daemon_id=daemon_id, folders=folders)
        self.inbox = Inbox(folders.inbox, settle_s=settings.settle_s, min_age_s=settings.min_age_s)
        self.claimer = Claimer(store, folders, settings)
        self.supply = DaemonPoolSupply(services.pool, services.settings)
        self.runner = BatchRunner(
            services, store, self.claimer, folders, metrics, self._note_failure, self.supply
        )
        self.limits = BatchLimits(
            settings.batch_max_files, settings.batch_max_bytes, settings.batch_max_wait_s
        )
        self.limiter = anyio.CapacityLimiter(settings.max_active_runs)
        self.notifier = SystemdNotifier()
        self._waiting: list[Claimed] = []  # claimed, not batched yet (arrival order)
        self._queued: deque[str] = deque()  # batches in the journal waiting for a slot
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._intake_scope = anyio.CancelScope()
        self._claim_lock = anyio.Lock()
        self._requests_seen: dict[str, dict[tuple[str, str], int]] = {}
        self._tops: dict[str, list[list[Any]]] = {}
        self.policy = DrainPolicy(
            grace_s=settings.drain_timeout_s,
            stop_intake=self._stop_intake,
            cancel_batch=self._cancel_batch,
            exit_now=_exit_now,
        )

    # ----------------------------------------------------------------- intake

    async def claim(self, files: Sequence[CompleteFile]) -> list[IntakeFile]:
        """Claim complete files; new claims wait for a batch."""
        try:
            async with self._claim_lock:
                new, duplicates = await self.claimer.claim(files)
        except OSError as error:  # e.g. no permission to rename: the files stay, the next check tries again
            log.warning("intake.claim_failed", files=len(files), error=redact_text(str(error))[:300])
            return []
        now = time.monotonic()
        waiting = {claimed.claim_id for claimed in self._waiting}
        for item in new:
            if item.claim_id in waiting:  # re-batched by recovery already; its rename finished only now
                continue
            self.metrics.inputs_received.labels(source=item.source).inc()
            self._waiting.append(Claimed(item.claim_id, item.size_bytes, now))
            log.debug("intake.claimed", claim_id=item.claim_id, bytes=item.size_bytes, source=item.source)
        if duplicates:
            self.metrics.inputs_duplicate.inc(len(duplicates))
        return new

    async def submit(self, paths: Sequence[Path]) -> str:
        """`POST /v1/runs`: files already on disk become one batch of their own at once."""
        files = [
            CompleteFile(path=path, relpath=path.name, size_bytes=0, source="api", marker=None)
            for path in paths
        ]
        async with self._claim_lock:
            new, _ = await self.claimer.claim(files, copy=True)
        self.metrics.inputs_received.labels(source="api").inc(len(new))
        if not new:
            raise ValueError("none of the paths is a new file (missing, or content already claimed)")
        return await self._create_batch([Claimed(item.claim_id, item.size_bytes, 0.0) for item in new])

    def _stop_intake(self) -> None:
        self.state.draining = True
        self.notifier.stopping()
        self._intake_scope.cancel()
        log.info("daemon.draining", batches_in_flight=len(self.state.in_flight))

    async def _intake(self) -> None:
        settings = self.services.settings.daemon
        with self._intake_scope:
            await watch_inbox(
                self.inbox,
                self.claim,
                rescan_s=settings.rescan_s,
                check_every_s=settings.settle_s / 2,
                on_checked=self._count_pending,
            )

    def _count_pending(self) -> None:
        self.state.inbox_pending = self.inbox.pending

    # ----------------------------------------------------------------- recovery

    async def recover(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Finish interrupted claims and moves, re-batch claimed files, queue unfinished batches."""
        moved = await self.claimer.complete_interrupted()
        claimed = await self.store.files_in_states(("claimed",))
        now = time.monotonic()
        self._waiting.extend(Claimed(item.claim_id, item.size_bytes, now) for item in claimed)
        unfinished = await self.store.batches(("queued", "admitted"))
        self._queued.extend(sorted(batch.batch_id for batch in unfinished))
        await self._tidy_jobs()
        log.info(
            "daemon.recovered",
            moves_finished=moved,
            files_rebatched=len(claimed),
            batches_resumed=len(unfinished),
        )
        self.state.recovered = True
        task_status.started()

    # ----------------------------------------------------------------- the loop

    async def loop(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Close due batches, pick queued ones under the limit, reap, heartbeat; until drained."""
        period = self.services.settings.daemon.heartbeat_s
        task_status.started()
        async with anyio.create_task_group() as runs:
            while True:
                started = time.monotonic()
                if self.policy.taking_work:
                    await self._close_due_batches(started)
                    self._pick(runs)
                else:
                    self.policy.step(
                        {batch_id: run.past_submission for batch_id, run in self.state.in_flight.items()},
                        started,
                    )
                    if not self.state.in_flight:
                        break
                self._update_gauges()
                self._heartbeat()
                await anyio.sleep(max(0.0, period - (time.monotonic() - started)))
        log.info("daemon.drained", batches_waiting=len(self._queued))

    async def _close_due_batches(self, now: float) -> None:
        closed, self._waiting = close_batches(self._waiting, self.limits, now)
        for batch in closed:
            await self._create_batch(batch)

    async def _create_batch(self, batch: Sequence[Claimed]) -> str:
        batch_id = naming.new_run_id()
        total = sum(item.size_bytes for item in batch)
        await self.store.create_batch(batch_id, [item.claim_id for item in batch], total)
        self._queued.append(batch_id)
        log.info("daemon.batch_created", batch_id=batch_id, files=len(batch), bytes=total)
        return batch_id

    def _pick(self, runs: anyio.abc.TaskGroup) -> None:
        while self._queued and self.limiter.available_tokens >= 1:
            batch_id = self._queued.popleft()
            progress = BatchProgress(batch_id=batch_id, files=0)
            self.state.in_flight[batch_id] = progress
            runs.start_soon(self._run_batch, batch_id, progress, name=f"batch {batch_id}")
            # A token is taken synchronously here, so the next pick sees the room left.
            self.limiter.acquire_on_behalf_of_nowait(progress)

    async def _run_batch(self, batch_id: str, progress: BatchProgress) -> None:
        scope = anyio.CancelScope()
        self._scopes[batch_id] = scope
        try:
            with structlog.contextvars.bound_contextvars(run_id=batch_id), scope:
                try:
                    await self.runner.run(batch_id, progress)
                except Exception as error:  # the daemon outlives any one batch: it is tried again later
                    log.warning(
                        "daemon.batch_interrupted", batch_id=batch_id, error=redact_text(str(error))[:300]
                    )
                    await anyio.sleep(RETRY_AFTER_INTERRUPTION_S)
                    self._queued.append(batch_id)
        finally:
            self._scopes.pop(batch_id, None)
            self.state.in_flight.pop(batch_id, None)
            self.limiter.release_on_behalf_of(progress)
            if scope.cancel_called:  # drained: it stays in the journal for the next start
                log.info("daemon.batch_left", batch_id=batch_id, stage=progress.stage)

    def _cancel_batch(self, batch_id: str) -> None:
        scope = self._scopes.get(batch_id)
        if scope is not None:
            scope.cancel()

    def _update_gauges(self) -> None:
        state, metrics = self.state, self.metrics
        state.waiting_batches = list(self._queued)
        state.unbatched = len(self._waiting)
        metrics.batches_active.set(len(state.in_flight))
        metrics.batches_waiting.set(len(self._queued))
        metrics.inbox_pending.set(state.inbox_pending + len(self._waiting))
        self._count_requests()

    def _heartbeat(self) -> None:
        self.state.heartbeat_at = time.monotonic()
        self.notifier.watchdog()

    # ----------------------------------------------------------------- housekeeping

    async def housekeep(self) -> None:
        """The pool view and the Storage check every POOL_VIEW_EVERY_S, job clean-up every TIDY_EVERY_S.

        Its own task, one call at a time, each bounded: while Batch or Storage hangs, this task waits
        (and readiness goes false), the main loop and its heartbeat go on. Ends when draining starts.
        """
        next_view = time.monotonic()
        next_tidy = next_view + TIDY_EVERY_S  # recovery has just tidied
        while self.policy.taking_work:
            now = time.monotonic()
            if now >= next_view:
                next_view = now + POOL_VIEW_EVERY_S
                await self.check_services()
            if now >= next_tidy:
                next_tidy = now + TIDY_EVERY_S
                await self._bounded("job_cleanup", self._tidy_jobs, TIDY_TIMEOUT_S)
            await anyio.sleep(max(0.0, min(next_view, next_tidy) - time.monotonic()))

    async def check_services(self) -> None:
        """Read the pool view (Batch) and check Storage; what `/readyz` says of the services."""
        state = self.state
        state.batch_reachable = await self._bounded("pool_view", self._read_pool, REACHABILITY_TIMEOUT_S)
        state.storage_reachable = await self._bounded(
            "storage_check", self._check_storage, REACHABILITY_TIMEOUT_S
        )

    async def _bounded(self, work: str, call: Callable[[], Awaitable[None]], timeout_s: float) -> bool:
        """Housekeeping never stops the daemon: a failure or a timeout is an event and False."""
        try:
            with anyio.fail_after(timeout_s):
                await call()
        except Exception as error:  # logged; the next period tries again
            log.warning(
                "daemon.housekeeping_failed",
                work=work,
                error_type=type(error).__name__,
                error=redact_text(str(error))[:300],
            )
            return False
        return True

    async def _tidy_jobs(self) -> None:
        known = {run.run_id for run in await self.services.journal.list_run_summaries()}
        known |= {batch.batch_id for batch in await self.store.batches()}
        active = await admission.tidy_jobs(self.services.settings, self.services.clients, known)
        self.metrics.active_jobs.set(active)

    async def _read_pool(self) -> None:
        view = await read_pool_view(self.services.settings, self.services.clients, self.services.pool)
        self.state.pool_nodes = dict(view.nodes_by_state)
        self.state.pool_resize_errors = view.resize_errors
        self.metrics.set_pool_nodes(view.nodes_by_state)
        self.metrics.pool_target_nodes.set(view.target_nodes)
        if view.sas_expires_at is not None:
            self.metrics.sas_expiry.set(view.sas_expires_at.timestamp())

    async def _check_storage(self) -> None:
        """One cheap authenticated read: the input container's properties (a missing one is an answer)."""
        settings = self.services.settings
        blob_service = self.services.clients.blob_service
        container = blob_service.get_container_client(f"{settings.storage.container_prefix}-input")
        async with unattributed_requests():
            with contextlib.suppress(ResourceNotFoundError):
                await retry_call(
                    settings.retry, "get_container_properties", container.get_container_properties
                )

    def _count_requests(self) -> None:
        counter = self.services.clients.requests
        for service in (BATCH, STORAGE):
            answers = counter.answers(service)
            seen = self._requests_seen.setdefault(service, {})
            self.metrics.count_requests(
                service, {key: count - seen.get(key, 0) for key, count in answers.items()}
            )
            seen.update(answers)

    async def cached_top(self, run_id: str, out_dir: Path) -> list[list[Any]]:
        """A finished run's top words, read once from its summary.json."""
        from orchestrator.service.health import read_top

        if run_id not in self._tops:
            if len(self._tops) > TOPS_CACHED:
                self._tops.clear()
            self._tops[run_id] = await read_top(out_dir)
        return self._tops[run_id]

    def _note_failure(self, relpath: str, reason: str) -> None:
        self.state.recent_failures.appendleft({"path": relpath, "reason": reason, "at": time.time()})


def _exit_now(received: signal.Signals) -> None:
    log.warning("signal.repeated", signal=received.name, exit_code=128 + int(received))
    os._exit(128 + int(received))


async def run_daemon(
    settings: Settings,
    folders: DaemonFolders,
    *,
    listen: str,
    node_script: bytes | None = None,
    on_ready: Callable[[Daemon], None] | None = None,
) -> None:
    """The daemon in the foreground until a signal drains it (exit 0) or a second one ends it."""
    try:
        await _run_daemon(settings, folders, listen=listen, node_script=node_script, on_ready=on_ready)
    except BaseExceptionGroup as group:
        leaf = first_leaf(group)
        if isinstance(leaf, TopnError):  # a refusal the user can act on (exit 2 for config errors)
            raise leaf from None
        raise


async def _run_daemon(
    settings: Settings,
    folders: DaemonFolders,
    *,
    listen: str,
    node_script: bytes | None,
    on_ready: Callable[[Daemon], None] | None,
) -> None:
    from orchestrator.service.health import serve_health  # it imports this module's types

    metrics = DaemonMetrics()
    settings = daemon_settings(settings)
    # Before the first worker thread: a thread that finds every arena busy makes a new one.
    arena_cap = cap_malloc_arenas(settings.daemon.malloc_arena_max)
    daemon_id = uuid.uuid4().hex[:12]
    # Bound first, so every line of this process carries it (local services' events too).
    with structlog.contextvars.bound_contextvars(daemon_id=daemon_id):
        async with AsyncExitStack() as stack:
            services = await stack.enter_async_context(open_services(settings, node_script))
            store = await IntakeStore.open(services.journal.path)
            stack.push_async_callback(store.close)
            daemon = Daemon(services, store, folders, metrics, daemon_id)
            async with anyio.create_task_group() as group:
                group.start_soon(_watch_signals, daemon, group.cancel_scope)
                url = await group.start(serve_health, daemon, listen)
                daemon.state.listen_url = url
                await group.start(keep_pool, services.settings, services.clients, services.pool)
                await group.start(daemon.recover)
                group.start_soon(daemon.housekeep, name="daemon housekeeping")
                daemon.notifier.ready(f"serving {url}")
                log.info(
                    "daemon.ready",
                    url=url,
                    inbox=str(folders.inbox),
                    pool_id=settings.pool.id,
                    malloc_arena_max=arena_cap,
                )
                if on_ready is not None:
                    on_ready(daemon)
                group.start_soon(daemon._intake)
                await daemon.loop()
                group.cancel_scope.cancel()  # the health server and the signal watcher
        log.info("daemon.stopped")


async def _watch_signals(daemon: Daemon, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for received in signals:
            log.info("daemon.signal_received", signal=signal.Signals(received).name)
            daemon.policy.on_signal(signal.Signals(received), time.monotonic())


def serve(
    settings: Settings, inbox: Path | None, listen: str | None, node_script: bytes | None = None
) -> int:
    """`topn daemon`: lock the state folder and inbox, run in the foreground until drained; exit status."""
    from orchestrator.errors import UsageError
    from orchestrator.service.instance import single_instance

    inbox = inbox or settings.daemon.inbox_dir
    if inbox is None:
        raise UsageError("give the folder to watch: `topn daemon --inbox DIR` (or [daemon] inbox_dir)")
    folders = DaemonFolders.of(settings.daemon, inbox)
    folders.create()
    with single_instance(settings.local.state_dir, folders.inbox):
        structlog.contextvars.bind_contextvars(service="topn")
        address = listen or settings.daemon.listen
        anyio.run(lambda: run_daemon(settings, folders, listen=address, node_script=node_script))
    return 0
