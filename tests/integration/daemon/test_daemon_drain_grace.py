"""The drain's grace (issue 12 point 7) with a real child process: SIGTERM while a batch stages.

The batch's files are uploaded one at a time and its tasks submitted one request at a time, and
SIGTERM is sent as soon as its run enters PREPARING (staging its files while the pool gets ready).
Readiness must go false and intake stop at once (files dropped afterwards stay in the inbox,
unclaimed), while the batch goes on through staging and submission within `drain_timeout_s`: every
task added, the job switched to end when its tasks are done, and only then is the batch left. The
process exits 0 within 25 s with its journal intact; the next start re-attaches to the tasks (none
added twice) and every file gets exactly one result. That start is stopped with SIGINT, which
drains the same way (exit 0).
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import anyio
import pytest
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from orchestrator import naming
from orchestrator.journal import journal_path
from tests.conftest import BatchEndpoint, StartEmulator, StorageEndpoint
from tests.e2e.run_cli import topn_environment
from tests.integration.daemon.support import FAST_DAEMON, files_under, get_json
from tests.integration.daemon.test_daemon_crash import DaemonChild, batch_tasks, wait_ready
from tests.integration.daemon.test_daemon_drain import wait_event

pytestmark = pytest.mark.asyncio(loop_scope="session")

FILES = 30
LATE_FILES = 3
EXIT_WITHIN_S = 25.0
INPUTS = re.compile(r"g\d\d\.txt|late\d\.txt")


def event_index(child: DaemonChild, name: str, **fields: object) -> int:
    """Where the first `name` event with these fields is in the child's stdout (events are in order)."""
    for index, event in enumerate(list(child.events)):
        if event.get("event") == name and all(event.get(key) == value for key, value in fields.items()):
            return index
    raise AssertionError(f"no {name} event with {fields}")


def claimed_relpaths(state: Path) -> list[str]:
    """Every file the journal has a claim of; the journal must pass SQLite's integrity check first."""
    with closing(sqlite3.connect(journal_path(state), timeout=10)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return [str(row[0]) for row in db.execute("SELECT relpath FROM intake_files")]


async def job_of(batch: BatchEndpoint, run_id: str) -> tuple[str, int]:
    """The run's job: when its tasks are done (`onAllTasksComplete`), and how many tasks it holds."""
    credential = AzureNamedKeyCredential(batch.account_name, batch.account_key)
    async with BatchClient(batch.endpoint, credential) as client:
        job = await client.get_job(naming.job_id(run_id))
        tasks = [task async for task in client.list_tasks(naming.job_id(run_id))]
    ends_with = job.all_tasks_complete_mode
    return str(getattr(ends_with, "value", ends_with)).lower(), len(tasks)


async def test_a_batch_still_uploading_gets_its_tasks_in_before_the_drain_exits_zero(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    state = tmp_path / "state"
    env = topn_environment(
        batch,
        azurite,
        state,
        **{
            **FAST_DAEMON,
            "TOPN_POOL_ID": "grace-pool",
            "TOPN_DAEMON_BATCH_MAX_FILES": str(FILES),  # one batch of them all
            "TOPN_DAEMON_BATCH_MAX_WAIT_S": "10",
            "TOPN_RUN_UPLOAD_CONCURRENCY": "1",  # uploads one by one: the signal finds them going on
            "TOPN_RUN_PACK_MAX_BYTES": "0",  # one upload per file
            "TOPN_RUN_MAX_FILES_PER_TASK": "5",  # but few tasks: the run after the restart is short
            "TOPN_RUN_SUBMIT_CONCURRENCY": "1",  # and tasks added 5 per request, one request at a time
            "TOPN_RUN_SUBMIT_CHUNK_TASKS": "5",
        },
    )
    log = tmp_path / "daemon.stderr.log"
    first = DaemonChild.start(inbox, env, log)
    again: DaemonChild | None = None
    try:
        await wait_ready(first)
        ready_event = first.seen("daemon.ready")
        assert ready_event is not None
        url = ready_event["url"]
        names = [f"g{index:02d}.txt" for index in range(FILES)]
        for index, name in enumerate(names):
            await anyio.Path(inbox / name).write_text(f"grace{index} word " * (index + 1), encoding="utf-8")
        await wait_event(first, "run.state_changed", "to_state", "PREPARING")

        first.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await wait_event(first, "daemon.draining")
        status, readiness = await get_json(f"{url}/readyz")
        assert status == 503 and readiness["draining"] is True
        late = [f"late{index}.txt" for index in range(LATE_FILES)]  # arrive while the daemon drains
        for name in late:
            await anyio.Path(inbox / name).write_text(f"{name} arrived late", encoding="utf-8")

        exit_status = await anyio.to_thread.run_sync(lambda: first.process.wait(EXIT_WITHIN_S + 5))
        took_s = time.monotonic() - signalled
        assert exit_status == 0, log.read_text(encoding="utf-8")[-2000:]
        assert took_s < EXIT_WITHIN_S
        await anyio.to_thread.run_sync(first.wait_dead)

        # The drain began before the batch's tasks were in Batch, and the batch was left after.
        received = event_index(first, "daemon.signal_received", signal="SIGTERM")
        assert received < event_index(first, "run.state_changed", to_state="SUBMITTING")
        submitted = first.seen("tasks.submitted")
        assert submitted is not None
        left = first.seen("daemon.batch_left")
        assert left is not None and left["stage"] in ("running", "collecting"), left
        assert event_index(first, "tasks.submitted") < event_index(first, "daemon.batch_left")
        assert first.seen("run.failed") is None
        ends_with, tasks_in_job = await job_of(batch, left["batch_id"])
        assert tasks_in_job == submitted["tasks"] and ends_with == "terminatejob"
        assert await batch_tasks(batch, INPUTS) == Counter(names)  # every file's task is in
        # Intake stopped at the signal: the late files were neither claimed nor moved.
        assert sorted(await anyio.to_thread.run_sync(claimed_relpaths, state)) == sorted(names)
        in_inbox = await anyio.to_thread.run_sync(files_under, inbox)
        assert set(late) <= set(in_inbox)

        again = DaemonChild.start(inbox, env, log)
        await wait_ready(again)
        recovered = again.seen("daemon.recovered")
        assert recovered is not None and recovered["batches_resumed"] == 1, recovered
        with anyio.fail_after(90):
            while len(await anyio.to_thread.run_sync(files_under, tmp_path / "done")) < FILES + LATE_FILES:
                assert again.process.poll() is None, log.read_text(encoding="utf-8")[-2000:]
                await anyio.sleep(0.3)
        resumed = [event for event in again.events if event.get("event") == "run.resumed"]
        assert len(resumed) == 1 and resumed[0]["tasks_submitted"] == tasks_in_job, resumed  # re-attached
        again.process.send_signal(signal.SIGINT)  # SIGINT drains the same way: exit 0
        assert await anyio.to_thread.run_sync(lambda: again.process.wait(EXIT_WITHIN_S + 5)) == 0
    finally:
        for number, child in enumerate((first, again)):
            if child is not None and child.process.poll() is None:  # a failed assertion left it running
                child.process.kill()
                child.process.wait()
            if child is not None:  # kept beside the test's folders, for a failure's diagnosis
                lines = "".join(json.dumps(event) + "\n" for event in list(child.events))
                await anyio.Path(tmp_path / f"daemon{number}.events.jsonl").write_text(lines, "utf-8")

    done = await anyio.to_thread.run_sync(files_under, tmp_path / "done")
    assert sorted(done) == sorted([*names, *late])
    outputs = sorted(path.name for path in (tmp_path / "outbox").rglob("*_OUTPUT.txt"))
    assert outputs == sorted(f"{Path(name).stem}_OUTPUT.txt" for name in [*names, *late])
    tasks = await batch_tasks(batch, INPUTS)
    assert sorted(tasks) == sorted([*names, *late]) and max(tasks.values()) == 1, tasks  # none added twice
