"""systemd's notify protocol end to end (issue 12 point 8), and the example unit file.

The real daemon process runs with `NOTIFY_SOCKET` naming a datagram socket the test binds, as
systemd does for `Type=notify`: `READY=1` arrives only after recovery, `WATCHDOG=1` arrives
periodically from the main loop, and `STOPPING=1` arrives on SIGTERM, before the process exits 0.
`examples/topn-daemon.service` is checked with `systemd-analyze verify` where systemd is installed.
"""

from __future__ import annotations

import itertools
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import anyio
import pytest

from tests.conftest import StartEmulator, StorageEndpoint
from tests.e2e.run_cli import topn_environment
from tests.integration.daemon.support import FAST_DAEMON
from tests.integration.daemon.test_daemon_crash import DaemonChild, wait_ready

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
ROOT = Path(__file__).resolve().parents[3]
UNIT_FILE = ROOT / "examples" / "topn-daemon.service"
EXIT_WITHIN_S = 25.0


class NotifyListener:
    """A datagram socket as systemd binds it; every message with the wall-clock time it arrived."""

    def __init__(self) -> None:
        self.name = f"@topn-test-notify-{uuid.uuid4().hex}"  # Linux's abstract namespace: no file
        self.messages: list[tuple[float, str]] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind("\0" + self.name[1:])
        self._socket.settimeout(0.1)
        self._stop = threading.Event()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.time(), data.decode()))

    @contextmanager
    def listening(self) -> Iterator[NotifyListener]:
        reader = threading.Thread(target=self._receive, daemon=True)
        reader.start()
        try:
            yield self
        finally:
            self._stop.set()
            reader.join()
            self._socket.close()

    def arrivals(self, first_line: str) -> list[tuple[float, str]]:
        return [(at, text) for at, text in list(self.messages) if text.split("\n")[0] == first_line]


def event_time(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


@pytest.mark.asyncio(loop_scope="session")
async def test_ready_after_recovery_watchdog_from_the_loop_and_stopping_on_sigterm(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with NotifyListener().listening() as listener:
        env = topn_environment(
            batch,
            azurite,
            tmp_path / "state",
            **{**FAST_DAEMON, "TOPN_POOL_ID": "notify-pool", "NOTIFY_SOCKET": listener.name},
        )
        child = DaemonChild.start(inbox, env, tmp_path / "daemon.stderr.log")
        try:
            await wait_ready(child)
            await anyio.sleep(1.5)  # the loop's heartbeats
            child.process.send_signal(signal.SIGTERM)
            signalled = time.time()
            exit_status = await anyio.to_thread.run_sync(lambda: child.process.wait(EXIT_WITHIN_S + 5))
            exited = time.time()
        finally:
            if child.process.poll() is None:
                child.process.kill()
                await anyio.to_thread.run_sync(child.process.wait)
        await anyio.sleep(0.2)  # the reader's last datagrams
    log = await anyio.Path(tmp_path / "daemon.stderr.log").read_text(encoding="utf-8")
    assert exit_status == 0, log[-2000:]
    recovered, ready_event = child.seen("daemon.recovered"), child.seen("daemon.ready")
    assert recovered is not None and ready_event is not None

    ready = listener.arrivals("READY=1")
    assert [text for _, text in ready] == [f"READY=1\nSTATUS=serving {ready_event['url']}"]
    assert ready[0][0] >= event_time(recovered)  # sent once recovery ended, never before

    watchdogs = [at for at, _ in listener.arrivals("WATCHDOG=1")]
    assert watchdogs and watchdogs[0] >= ready[0][0]
    while_up = [at for at in watchdogs if at <= signalled]
    assert len(while_up) >= 5  # heartbeat_s is 0.2 s: about seven in the 1.5 s
    gaps = [later - earlier for earlier, later in itertools.pairwise(while_up)]
    assert max(gaps) < 2.0, gaps

    stopping = listener.arrivals("STOPPING=1")
    assert len(stopping) == 1 and signalled <= stopping[0][0] <= exited
    assert {text.split("\n")[0] for _, text in listener.messages} == {"READY=1", "WATCHDOG=1", "STOPPING=1"}


def unit_file_problems(unit: Path) -> list[str]:
    """What `systemd-analyze verify` says about `unit` (blocking); it exits 0 on most bad lines."""
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, check=False
    )
    said = [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]
    return said if result.returncode == 0 else [*said, f"exit status {result.returncode}"]


@needs_systemd_analyze
def test_the_example_unit_file_verifies_and_declares_the_notify_protocol(tmp_path: Path) -> None:
    text = UNIT_FILE.read_text(encoding="utf-8")
    # The example's ExecStart points at /srv/topn (adjust the paths, it says); here at this checkout's.
    entry_point = Path(sys.executable).with_name("topn")
    assert entry_point.is_file(), entry_point
    example_binary = "/srv/topn/.venv/bin/topn"
    assert f"ExecStart={example_binary} daemon " in text
    unit = tmp_path / "topn-daemon.service"
    unit.write_text(text.replace(example_binary, str(entry_point)), encoding="utf-8")
    assert unit_file_problems(unit) == []

    directives = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
    assert directives["Type"] == "notify" and directives["NotifyAccess"] == "main"
    assert int(directives["WatchdogSec"]) > 0 and directives["KillSignal"] == "SIGTERM"
    assert int(directives["TimeoutStopSec"]) > EXIT_WITHIN_S  # the drain's bound fits in systemd's


@needs_systemd_analyze
def test_the_unit_file_check_catches_a_mistyped_key(tmp_path: Path) -> None:
    unit = tmp_path / "typo.service"
    unit.write_text("[Service]\nType=notify\nExecStart=/bin/true\nWatchdogSc=30\n", encoding="utf-8")
    assert any("WatchdogSc" in line for line in unit_file_problems(unit))
