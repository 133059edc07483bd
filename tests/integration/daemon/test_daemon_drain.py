"""Graceful drain (issue 12 point 7) with a real child process: SIGTERM with a batch running in Batch.

Readiness goes false, intake stops, the batch (its tasks already in Batch) is left at once, the
journal keeps it, the process exits 0 within 25 s; the next start resumes the batch, re-attaching to
the tasks that kept running, and every file ends in done/.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import anyio
import pytest

from tests.conftest import StartEmulator, StorageEndpoint
from tests.e2e.run_cli import topn_environment
from tests.integration.daemon.support import FAST_DAEMON, files_under, get_json
from tests.integration.daemon.test_daemon_crash import DaemonChild, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="session")

FILES = 10
EXIT_WITHIN_S = 25.0


async def wait_event(
    child: DaemonChild, predicate: str, field: str | None = None, value: object = None
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for event in list(child.events):
            if event.get("event") == predicate and (field is None or event.get(field) == value):
                return
        await anyio.sleep(0.05)
    raise AssertionError(f"no {predicate} event ({field}={value}) within 60 s")


async def test_sigterm_drains_exits_zero_and_the_next_start_reattaches(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator(["--nodes-max-processes", "1"])  # tasks take turns: the run lasts
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    env = topn_environment(
        batch, azurite, tmp_path / "state", **{**FAST_DAEMON, "TOPN_POOL_ID": "drain-pool"}
    )
    log = tmp_path / "daemon.stderr.log"
    child = DaemonChild.start(inbox, env, log)
    await wait_ready(child)
    ready_event = child.seen("daemon.ready")
    assert ready_event is not None
    url = ready_event["url"]
    for index in range(FILES):
        await anyio.Path(inbox / f"d{index}.txt").write_text(f"drain{index} word", encoding="utf-8")
    await wait_event(child, "run.state_changed", "to_state", "RUNNING")

    child.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    await wait_event(child, "daemon.draining")
    status, readiness = await get_json(f"{url}/readyz")
    assert status == 503 and readiness["draining"] is True
    exit_status = await anyio.to_thread.run_sync(lambda: child.process.wait(EXIT_WITHIN_S + 5))
    assert exit_status == 0, log.read_text(encoding="utf-8")[-2000:]
    assert time.monotonic() - signalled < EXIT_WITHIN_S
    left = child.seen("daemon.batch_left")
    assert left is not None and left["stage"] in ("running", "collecting")
    assert child.seen("run.failed") is None  # left for the next start, not failed
    done_before = await anyio.to_thread.run_sync(files_under, tmp_path / "done")
    assert len(done_before) < FILES

    again = DaemonChild.start(inbox, env, log)
    await wait_ready(again)
    recovered = again.seen("daemon.recovered")
    assert recovered is not None and recovered["batches_resumed"] >= 1
    deadline = time.monotonic() + 90
    while len(await anyio.to_thread.run_sync(files_under, tmp_path / "done")) < FILES:
        assert time.monotonic() < deadline, "the resumed batch did not finish"
        await anyio.sleep(0.3)
    resumed = [event for event in again.events if event.get("event") == "run.resumed"]
    assert resumed and resumed[0]["tasks_submitted"] == FILES  # re-attached: no task added again
    again.process.send_signal(signal.SIGINT)
    assert await anyio.to_thread.run_sync(lambda: again.process.wait(EXIT_WITHIN_S + 5)) == 0

    # stdout is nothing but JSON events, each with the fields log shipping keys on (issue 12 point 9).
    for event in [*child.events, *again.events]:
        assert event.get("event") != "not-json", event
        assert {"timestamp", "level", "event", "service", "daemon_id"} <= event.keys(), event
        assert event["service"] == "topn" and event["timestamp"].endswith("Z")
    assert len({event["daemon_id"] for event in child.events}) == 1
