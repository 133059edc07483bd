"""A second signal while the daemon drains ends `topn daemon` at once, with the journal intact.

The real command (`python -m orchestrator daemon`, the real node bundle) runs on local services the
test starts. Azurite is stopped once the pool's node is ready, so the batch that files dropped into
the inbox start is stuck retrying its Storage requests: the first SIGTERM starts the drain, which
gives that batch up to `drain_timeout_s` (20 s); the SIGINT that follows must end the process within
seconds, with status 128 + SIGINT (the shell's convention for "ended by a signal"). The journal must
pass SQLite's integrity check, and a following start (Azurite back on the same data) must recover
the batch and finish every file exactly once.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
import time
from pathlib import Path

import anyio
import pytest
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from orchestrator.journal.schema import journal_path
from orchestrator.local import processes as local
from tests.conftest import StartEmulator, StorageEndpoint
from tests.e2e.run_cli import topn_environment
from tests.integration.daemon.support import FAST_DAEMON, files_under
from tests.integration.daemon.test_daemon_crash import DaemonChild, wait_ready
from tests.integration.daemon.test_daemon_drain import wait_event

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[3]
FILES = 3
EXIT_AT_ONCE_S = 5.0  # "at once", with room for a loaded machine; the drain alone would take 20 s


def daemon_command(inbox: Path) -> list[str]:
    """`topn daemon` as a user runs it (debug events: the retries show the batch is stuck)."""
    return [
        sys.executable,
        "-m",
        "orchestrator",
        "daemon",
        "--config",
        str(ROOT / "config" / "local.toml"),
        "--inbox",
        str(inbox),
        "--listen",
        "127.0.0.1:0",
        "--log-level",
        "debug",
    ]


async def wait_node_idle(endpoint: str, account_name: str, account_key: str, pool_id: str) -> None:
    """The node's start task has fetched node.pyz (from Azurite): the outage cannot break the pool."""
    credential = AzureNamedKeyCredential(account_name, account_key)
    async with BatchClient(endpoint, credential) as client:
        with anyio.fail_after(90):
            while True:
                states = {str(node.state).lower() async for node in client.list_nodes(pool_id)}
                if states and all(state.endswith("idle") for state in states):
                    return
                await anyio.sleep(0.2)


async def test_a_second_signal_while_draining_exits_at_once_and_the_next_start_recovers(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    location, logs = tmp_path / "azurite-data", tmp_path / "azurite-logs"
    azurite = await local.start_azurite(location, logs)
    port = int(azurite.endpoint.rsplit(":", 1)[1].split("/", 1)[0])
    storage = StorageEndpoint(azurite.endpoint, local.AZURITE_ACCOUNT_NAME, local.AZURITE_ACCOUNT_KEY)
    batch = await start_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pool_id = f"second-signal-{tmp_path.name[-12:]}".lower().replace("_", "-")
    env = topn_environment(
        batch,
        storage,
        tmp_path / "state",
        **{
            **FAST_DAEMON,
            "TOPN_POOL_ID": pool_id,
            # Storage requests keep retrying through the outage, well past the drain's grace.
            "TOPN_RETRY_MAX_ATTEMPTS": "200",
            "TOPN_RETRY_MAX_DELAY_S": "1",
            "TOPN_RETRY_DEADLINE_S": "120",
        },
    )
    log = tmp_path / "daemon.stderr.log"
    restarted: list[local.ServiceProcess] = []
    children: list[DaemonChild] = []
    try:
        first = DaemonChild.start(inbox, env, log, command=daemon_command(inbox))
        children.append(first)
        await wait_ready(first)
        await wait_node_idle(batch.endpoint, batch.account_name, batch.account_key, pool_id)
        await local.stop_service(azurite)
        for index in range(FILES):
            await anyio.Path(inbox / f"s{index}.txt").write_text(f"second{index} signal", encoding="utf-8")
        await wait_event(first, "daemon.batch_created")
        await wait_event(first, "request.retried")  # the batch meets the outage

        first.process.send_signal(signal.SIGTERM)
        await wait_event(first, "daemon.draining")
        await anyio.sleep(0.5)
        assert first.process.poll() is None, "the drain ended by itself: nothing left to interrupt"
        first.process.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        exit_status = await anyio.to_thread.run_sync(lambda: first.process.wait(EXIT_AT_ONCE_S + 30))
        took_s = time.monotonic() - signalled
        assert exit_status == 128 + int(signal.SIGINT), log.read_text(encoding="utf-8")[-2000:]
        assert took_s < EXIT_AT_ONCE_S
        await wait_event(first, "signal.repeated")  # the stdout reader thread may still be behind
        repeated = first.seen("signal.repeated")
        assert repeated is not None and repeated["exit_code"] == 130 and repeated["signal"] == "SIGINT"
        assert first.seen("daemon.stopped") is None  # it did not drain to the end
        assert await anyio.to_thread.run_sync(files_under, tmp_path / "done") == {}

        # The journal is intact: SQLite finds nothing wrong, and the batch is there, unfinished.
        raw = sqlite3.connect(journal_path(tmp_path / "state"))
        try:
            assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            raw.close()

        restarted.append(await local.start_azurite(location, logs, port=port))
        again = DaemonChild.start(inbox, env, log, command=daemon_command(inbox))
        children.append(again)
        await wait_ready(again)
        recovered = again.seen("daemon.recovered")
        assert recovered is not None and recovered["batches_resumed"] >= 1, recovered
        with anyio.fail_after(120):
            while len(await anyio.to_thread.run_sync(files_under, tmp_path / "done")) < FILES:
                assert again.process.poll() is None, log.read_text(encoding="utf-8")[-2000:]
                await anyio.sleep(0.3)
        again.process.send_signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(lambda: again.process.wait(30)) == 0
    finally:
        for child in children:
            if child.process.poll() is None:  # a failed assertion left it running
                child.process.kill()
                child.process.wait()
        for service in [azurite, *restarted]:
            await local.stop_service(service)
    done = await anyio.to_thread.run_sync(files_under, tmp_path / "done")
    assert sorted(done) == [f"s{index}.txt" for index in range(FILES)]
    outputs = sorted(path.name for path in (tmp_path / "outbox").rglob("*_OUTPUT.txt"))
    assert outputs == [f"s{index}_OUTPUT.txt" for index in range(FILES)]
