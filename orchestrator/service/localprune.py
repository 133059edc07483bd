"""`topn local prune`: remove what finished runs left in local mode's Azurite and state folder.

Refused while a run is being driven or a daemon runs on the state folder (`--force` prunes anyway,
keeping every unfinished run's data). How the data goes, and why a whole Azurite data folder may be
removed: orchestrator/local/prune.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from orchestrator.errors import UsageError
from orchestrator.files import release_pid_lock
from orchestrator.local import processes
from orchestrator.local import services as localmode
from orchestrator.local.prune import (
    Removed,
    azurite_client,
    delete_finished_runs_blobs,
    holds_only_the_bundle,
    remove_data_folder,
    remove_old_node_folders,
    unfinished_run_ids,
)
from orchestrator.service.instance import LOCK_FILENAME as DAEMON_LOCK_FILENAME
from orchestrator.service.runlock import runs_being_driven
from orchestrator.settings import Settings


@dataclass
class PruneReport:
    removed: list[Removed] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def freed_on_disk(self) -> int:
        """Bytes of files and folders removed (blob deletions are not counted: their bytes are in
        Azurite's data folder, freed by its garbage collection or counted with the folder)."""
        return sum(item.size_bytes for item in self.removed if item.on_disk)

    @property
    def blob_bytes_deleted(self) -> int:
        return sum(item.size_bytes for item in self.removed if not item.on_disk)


def lock_holder(path: Path) -> str | None:
    """The pid written in a pid lock file whose lock a live process holds; None when nobody holds it."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(descriptor, 32, 0).decode("ascii", errors="replace").strip() or "unknown"
    finally:
        os.close(descriptor)
    return None


def live_users(state_dir: Path) -> list[str]:
    """Who uses this state folder's local services now: runs being driven, a daemon."""
    users = [f"run {run_id} (pid {pid})" for run_id, pid in runs_being_driven(state_dir)]
    daemon = lock_holder(state_dir / DAEMON_LOCK_FILENAME)
    if daemon is not None:
        users.append(f"topn daemon (pid {daemon})")
    return users


@contextlib.asynccontextmanager
async def _azurite_endpoint(settings: Settings, recorded: str | None) -> AsyncIterator[tuple[str, bool]]:
    """Azurite's endpoint: the one `topn local up` runs, or a child started for the block (True)."""
    if recorded is not None:
        yield recorded, False
        return
    base = localmode.local_dir(settings)
    service = await processes.start_azurite(base / "azurite", base / "logs")
    try:
        yield service.endpoint, True
    finally:
        await processes.stop_service(service)


async def prune(settings: Settings, *, force: bool) -> PruneReport:
    """Remove what finished runs left; what was removed (with sizes) and notes for the user."""
    services = localmode
    state_dir = settings.local.state_dir
    users = await anyio.to_thread.run_sync(live_users, state_dir)
    if users and not force:
        raise UsageError(
            f"in use: {', '.join(users)}. Wait for them to finish, or prune anyway with "
            "`topn local prune --force` (it then keeps every unfinished run's data)"
        )
    report = PruneReport()
    keep = await unfinished_run_ids(state_dir)
    if keep:
        report.notes.append(f"kept the data of {len(keep)} unfinished run(s): {', '.join(sorted(keep))}")
    recorded = await services.serving_recorded(settings)
    base = services.local_dir(settings)
    start_lock: int | None = None
    if recorded.get(services.AZURITE) is None or recorded.get(services.EMULATOR) is None:
        try:
            start_lock = await anyio.to_thread.run_sync(services.acquire_start_lock, settings)
        except UsageError:
            report.notes.append(
                "a run is using local services it started: their data was left alone (prune again "
                "once it has finished)"
            )
            return report
        # Services a killed topn left running on these folders would share them: stopped first.
        await services.stop_survivors(settings)
    try:
        if recorded.get(services.AZURITE) is not None or await anyio.Path(base / "azurite").exists():
            await _prune_azurite(settings, recorded.get(services.AZURITE), report)
        if recorded.get(services.EMULATOR) is not None:
            report.notes.append(
                "the emulator that `topn local up` started is running: its node folders were kept "
                "(`topn local down` first to prune them)"
            )
        else:
            report.removed += await anyio.to_thread.run_sync(remove_old_node_folders, base / "emulator")
    finally:
        if start_lock is not None:
            release_pid_lock(start_lock)
    return report


async def _prune_azurite(settings: Settings, recorded: str | None, report: PruneReport) -> None:
    prefix = settings.storage.container_prefix
    keep = await unfinished_run_ids(settings.local.state_dir)
    data = settings.local.state_dir / "local" / "azurite"
    async with (
        _azurite_endpoint(settings, recorded) as (endpoint, ours),
        azurite_client(endpoint) as client,
    ):
        report.removed += await delete_finished_runs_blobs(client, prefix, keep)
        only_bundle = await holds_only_the_bundle(client, prefix)
    if ours and only_bundle:
        report.removed.append(await anyio.to_thread.run_sync(remove_data_folder, data))
    else:
        report.notes.append(
            "Azurite frees the disk space of deleted blobs itself: its garbage collection (at its "
            "start and every 10 minutes) removes the extent files (up to 64 MB each) that "
            "no remaining blob uses"
        )
