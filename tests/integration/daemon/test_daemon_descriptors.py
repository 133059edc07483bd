"""No file descriptor is left behind per batch (issue 12's soak: open fds must stay flat).

The daemon runs as a child process (tests/integration/daemon/daemon_process.py) on the fixtures'
Azurite and an emulator of its own; batches of one file go through one after another, and the
daemon's /proc/PID/fd is read after each. Everything but TCP connections (files, locks, SQLite,
pipes, epoll, inotify) must be the same after the last batch as after the first; pooled HTTP
connections may come and go, within a small bound.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import StartEmulator, StorageEndpoint
from tests.e2e.run_cli import topn_environment
from tests.integration.daemon.support import FAST_DAEMON
from tests.integration.daemon.test_daemon_crash import DaemonChild, wait_ready

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(240)]

BATCHES = 6
# Two clients (Batch, Storage), a few requests in flight at once between batches: a handful.
MOST_TCP_CONNECTIONS = 12


def descriptor_kinds(pid: int) -> Counter[str]:
    """Open descriptors by kind: `tcp` for every socket, else the link target (paths by file name)."""
    kinds: Counter[str] = Counter()
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(entry.readlink())
        except OSError:  # closed while listed
            continue
        if target.startswith("socket:"):
            kinds["socket"] += 1
        elif target.startswith(("pipe:", "anon_inode:")):
            kinds[target.split("[")[0]] += 1
        else:
            kinds[Path(target).name] += 1
    return kinds


def finished_batches(child: DaemonChild) -> list[dict[str, Any]]:
    return [event for event in list(child.events) if event.get("event") == "daemon.batch_finished"]


async def test_batch_after_batch_the_daemon_keeps_the_same_descriptors(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    env = topn_environment(
        batch, azurite, tmp_path / "state", **{**FAST_DAEMON, "TOPN_POOL_ID": f"fds-{tmp_path.name[-8:]}"}
    )
    child = DaemonChild.start(inbox, env, tmp_path / "daemon.log")
    after: list[Counter[str]] = []
    try:
        await wait_ready(child)
        for number in range(1, BATCHES + 1):
            await anyio.Path(inbox / f"f{number}.txt").write_text(f"word{number} again", encoding="utf-8")
            deadline = time.monotonic() + 60
            while True:
                if len(finished_batches(child)) >= number:
                    break
                assert time.monotonic() < deadline, f"batch {number} did not finish within 60 s"
                assert child.process.poll() is None, f"the daemon exited with {child.process.returncode}"
                await anyio.sleep(0.1)
            await anyio.sleep(0.5)  # the batch's last moves and journal writes
            after.append(descriptor_kinds(child.process.pid))
    finally:
        child.process.send_signal(signal.SIGTERM)
        status = await anyio.to_thread.run_sync(lambda: child.process.wait(30))
    assert status == 0
    assert [event["outcome"] for event in finished_batches(child)] == ["succeeded"] * BATCHES
    first, last = after[0], after[-1]
    assert {kind: count for kind, count in last.items() if kind != "socket"} == {
        kind: count for kind, count in first.items() if kind != "socket"
    }, after
    assert all(kinds["socket"] <= MOST_TCP_CONNECTIONS + 4 for kinds in after), after  # + listener, loop pair
