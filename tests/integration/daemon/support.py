"""What the daemon tests share: settings for the fixture services, an in-process daemon, waiting."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import anyio

from orchestrator.service.claims import DaemonFolders
from orchestrator.service.daemon import Daemon, run_daemon
from orchestrator.settings import Settings
from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.integration.orchestrator.test_pipeline_run import settings_for, stand_in_node

T = TypeVar("T")

# Fast daemon settings for tests: files settle in fractions of a second, batches close in 1 s.
FAST_DAEMON = {
    "TOPN_DAEMON_SETTLE_S": "0.2",
    "TOPN_DAEMON_MIN_AGE_S": "0.3",
    "TOPN_DAEMON_BATCH_MAX_WAIT_S": "1.0",
    "TOPN_DAEMON_HEARTBEAT_S": "0.2",
    "TOPN_DAEMON_AUTOSCALE": "false",
    "TOPN_POOL_DEDICATED_NODES": "1",
    "TOPN_RUN_MAX_FILES_PER_TASK": "1",
}


def daemon_settings_for(
    batch: BatchEndpoint, storage: StorageEndpoint, state_dir: Path, pool_id: str, **extra: str
) -> Settings:
    return settings_for(batch, storage, state_dir, **{**FAST_DAEMON, "TOPN_POOL_ID": pool_id, **extra})


def folders_under(root: Path) -> DaemonFolders:
    folders = DaemonFolders(root / "inbox", root / "done", root / "failed", root / "outbox")
    return folders


@asynccontextmanager
async def running_daemon(
    settings: Settings, folders: DaemonFolders, node_script: bytes | None = None
) -> AsyncIterator[Daemon]:
    """The daemon in this event loop, ready; drained (as by SIGTERM) when the block ends.

    Its nodes run `node_script` (the stand-in node by default).
    """
    await anyio.to_thread.run_sync(folders.create)
    ready: list[Daemon] = []
    script = stand_in_node() if node_script is None else node_script
    async with anyio.create_task_group() as group:
        group.start_soon(
            lambda: run_daemon(
                settings, folders, listen="127.0.0.1:0", node_script=script, on_ready=ready.append
            )
        )
        daemon = await wait_for(lambda: ready[0] if ready else None, "the daemon to be ready", 60)
        try:
            yield daemon
        finally:
            import signal

            if not daemon.state.draining:
                daemon.policy.on_signal(signal.SIGTERM, time.monotonic())


async def wait_for(probe: Callable[[], T | None], what: str, timeout_s: float = 60) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value is not None and value is not False:
            return value
        await anyio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def wait_async(probe: Callable[[], Awaitable[T | None]], what: str, timeout_s: float = 60) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await probe()
        if value is not None and value is not False:
            return value
        await anyio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def get_json(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.request(method, url, json=body) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


def files_under(folder: Path) -> dict[str, str]:
    """relpath -> text of every file below `folder` (blocking; tests call it on a thread)."""
    if not folder.exists():
        return {}
    return {
        path.relative_to(folder).as_posix(): path.read_text(encoding="utf-8", errors="replace")
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
