"""A real `kill -9` of a process that is writing the journal, then reopening it.

The writer is this module run with `python -m`. It records a run the way the pipeline does (states, bulk task
submissions, uploads) and prints `done ...` after each record call returns. To kill it *inside* a
transaction rather than somewhere near one, it can pause in SQLite's statement trace hook — on the
journal's own thread, with the transaction open and rows already written — and say `paused`; the
test then sends SIGKILL. After each kill the journal must open, pass SQLite's integrity check, hold
exactly the records that were acknowledged (nothing more, nothing less, no half batch), and let the
next writer carry on from where the last one stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from azure.core.exceptions import ResourceNotFoundError

from orchestrator import naming
from orchestrator.journal import Journal, JournalInput, RunRecord
from orchestrator.run.resume import unsubmitted_task_ids
from orchestrator.service.status import describe_run
from tests.secret_scan import find_secrets, texts_under

if TYPE_CHECKING:
    from tests.conftest import StartEmulator, StorageEndpoint

ROOT = Path(__file__).resolve().parents[3]
WRITER_MODULE = "tests.integration.orchestrator.test_journal_crash"
RUN = "20261122t003000z-c0ffee"
BATCHES = 5
TASKS_PER_BATCH = 1000
UPLOADS_PER_BATCH = 5
# The row of a bulk submission at which the writer pauses: well inside the transaction.
PAUSE_ROW = TASKS_PER_BATCH // 2
# A hung writer must fail the test, never hang it.
READ_DEADLINE_S = 60.0


def run_inputs() -> list[JournalInput]:
    """One input per task, in two folders (the same numbering the writer and the checks use)."""
    return [
        JournalInput(
            index=index,
            relpath=f"dir{index % 2}/file {index}.txt",
            path=f"/data/dir{index % 2}/file {index}.txt",
            size_bytes=index,
            mtime_ns=index,
            md5_hex=None,
            blob_name=f"runs/{RUN}/dir{index % 2}/file {index}.txt",
            task_id=f"t{index:06d}",
        )
        for index in range(BATCHES * TASKS_PER_BATCH)
    ]


def batch_task_ids(batch: int) -> list[str]:
    return [f"t{index:06d}" for index in range(batch * TASKS_PER_BATCH, (batch + 1) * TASKS_PER_BATCH)]


def batch_upload_relpaths(batch: int) -> list[str]:
    first = batch * TASKS_PER_BATCH
    return [f"dir{index % 2}/file {index}.txt" for index in range(first, first + UPLOADS_PER_BATCH)]


def state_for(batch: int) -> str:
    return "SUBMITTING" if batch % 2 == 0 else "RUNNING"


# ----------------------------------------------------------------------------- the writer process


class _PauseInside:
    """SQLite trace hook that blocks the journal's thread on the n-th matching statement once armed."""

    def __init__(self, pattern: str, row: int) -> None:
        self.pattern, self.row = pattern, row
        self.armed = False
        self.seen = 0

    def __call__(self, statement: str) -> None:
        if not self.armed or self.pattern not in statement:
            return
        self.seen += 1
        if self.seen >= self.row:
            print("paused", flush=True)
            time.sleep(3600)  # the test kills us here, mid-transaction


async def _write(journal_file: Path, pause_kind: str | None, pause_batch: int) -> None:
    async with await Journal.open(journal_file) as journal:
        await journal.create_run(RUN, {"run": {"top": 10}}, run_inputs())
        record = await journal.load_run(RUN)
        assert record is not None
        pause = {
            "submit": _PauseInside("INTO submitted_tasks", PAUSE_ROW),
            "state": _PauseInside("INTO state_changes", 1),
            "upload": _PauseInside("INTO uploads", 1),
        }.get(pause_kind or "")
        if pause is not None:
            # White-box on purpose: the hook runs on the journal's own connection and thread.
            journal._connection.set_trace_callback(pause)  # type: ignore[union-attr]
        print("ready", flush=True)
        for batch in range(BATCHES):
            # Carry on like a resume: a batch whose tasks and uploads are all recorded is done.
            if set(batch_task_ids(batch)) <= record.submitted_task_ids and set(
                batch_upload_relpaths(batch)
            ) <= set(record.uploads):
                continue
            armed_here = pause is not None and batch == pause_batch
            if pause is not None and armed_here and pause_kind == "state":
                pause.armed = True
            await journal.record_state(RUN, state_for(batch))
            print(f"done state {batch} {state_for(batch)}", flush=True)
            if pause is not None and armed_here and pause_kind == "submit":
                pause.armed = True
            await journal.record_tasks_submitted(RUN, batch_task_ids(batch))
            print(f"done submit {batch}", flush=True)
            for position, relpath in enumerate(batch_upload_relpaths(batch)):
                if pause is not None and armed_here and pause_kind == "upload" and position == 2:
                    pause.armed = True
                await journal.record_upload(RUN, relpath, f"{batch:032x}", f"runs/{RUN}/{relpath}")
                print(f"done upload {relpath}", flush=True)
        await journal.record_state(RUN, "SUCCEEDED")
        print("done state end SUCCEEDED", flush=True)


def _writer_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("journal_file", type=Path)
    parser.add_argument("--pause", choices=["submit", "state", "upload"])
    parser.add_argument("--pause-batch", type=int, default=0)
    args = parser.parse_args()
    anyio.run(_write, args.journal_file, args.pause, args.pause_batch)


# ----------------------------------------------------------------------------- the test side


@dataclass
class Acknowledged:
    """What writers have reported as committed, across every round."""

    batches: set[int] = field(default_factory=set)
    uploads: set[str] = field(default_factory=set)
    last_state: str = "CREATED"

    def take(self, line: str) -> None:
        words = line.split(" ", 2)
        if words[:2] == ["done", "submit"]:
            self.batches.add(int(words[2]))
        elif words[:2] == ["done", "upload"]:
            self.uploads.add(words[2])
        elif words[:2] == ["done", "state"]:
            self.last_state = words[2].split(" ")[1]


def _read_line(stream: IO[str], writer: subprocess.Popen[str]) -> str:
    line = stream.readline()
    if not line:
        writer.wait(timeout=READ_DEADLINE_S)
        raise AssertionError(f"the writer ended early (exit {writer.returncode}): {writer.stderr.read()}")  # type: ignore[union-attr]
    return line.rstrip("\n")


def _start_writer(journal_file: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", WRITER_MODULE, str(journal_file), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _follow(
    writer: subprocess.Popen[str],
    acknowledged: Acknowledged,
    *,
    kill_at: str | None = None,
    kill_after_done_lines: int | None = None,
) -> None:
    """Read the writer's lines; SIGKILL it at line `kill_at` or after n `done` lines (neither: let it end).

    Whatever it printed before dying is read too: a `done` line means that record was committed.
    """
    assert writer.stdout is not None
    done_lines = 0
    try:
        while True:
            line = _read_line(writer.stdout, writer)
            acknowledged.take(line)
            done_lines += line.startswith("done")
            if line == kill_at or done_lines == kill_after_done_lines:
                writer.send_signal(signal.SIGKILL)
                for rest in writer.stdout:
                    acknowledged.take(rest.rstrip("\n"))
                break
            if line == "done state end SUCCEEDED":
                break
        killed = kill_at is not None or kill_after_done_lines is not None
        assert writer.wait(timeout=READ_DEADLINE_S) == (-signal.SIGKILL if killed else 0)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        writer.stdout.close()
        if writer.stderr is not None:
            writer.stderr.close()


def _check_consistent(journal_file: Path, acknowledged: Acknowledged, *, exact: bool) -> dict[str, Any]:
    """The journal after a crash: intact, and holding what was acknowledged (exactly, when `exact`)."""
    raw = sqlite3.connect(journal_file)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        raw.close()

    async def load() -> Any:
        async with await Journal.open(journal_file) as journal:
            return await journal.load_run(RUN)

    record = anyio.run(load)
    assert record is not None
    submitted = record.submitted_task_ids
    whole_batches = {batch for batch in range(BATCHES) if set(batch_task_ids(batch)) <= submitted}
    # Atomic bulk records: the submitted ids are exactly a union of whole batches, never part of one.
    assert submitted == {task for batch in whole_batches for task in batch_task_ids(batch)}
    assert acknowledged.batches <= whole_batches
    assert acknowledged.uploads <= set(record.uploads)
    # The state column and the history table are written in one transaction, so they agree.
    assert record.state == record.state_history[-1].state
    if exact:
        assert whole_batches == acknowledged.batches
        assert set(record.uploads) == acknowledged.uploads
        assert record.state == acknowledged.last_state
    return {"batches": whole_batches, "uploads": set(record.uploads), "state": record.state}


def test_kill_9_mid_write_leaves_a_consistent_journal_that_the_next_writer_continues(tmp_path: Path) -> None:
    journal_file = tmp_path / "state" / "journal.sqlite3"
    acknowledged = Acknowledged()

    # Inside a bulk submission (row 500 of 1000 written), inside a state transition (the state
    # column already updated), inside an upload record: each must vanish whole.
    _follow(
        _start_writer(journal_file, "--pause", "submit", "--pause-batch", "1"), acknowledged, kill_at="paused"
    )
    after_submit = _check_consistent(journal_file, acknowledged, exact=True)
    assert after_submit["batches"] == {0}
    assert after_submit["state"] == state_for(1)

    _follow(
        _start_writer(journal_file, "--pause", "state", "--pause-batch", "2"), acknowledged, kill_at="paused"
    )
    after_state = _check_consistent(journal_file, acknowledged, exact=True)
    assert after_state["state"] == state_for(1)
    assert after_state["batches"] == {0, 1}

    _follow(
        _start_writer(journal_file, "--pause", "upload", "--pause-batch", "3"), acknowledged, kill_at="paused"
    )
    after_upload = _check_consistent(journal_file, acknowledged, exact=True)
    assert after_upload["batches"] == {0, 1, 2, 3}
    assert after_upload["uploads"] & set(batch_upload_relpaths(3)) == set(batch_upload_relpaths(3)[:2])

    # At a moment nobody chose: wherever the writer happens to be after some records.
    lines_before_kill = random.Random(20261122).randint(3, 12)
    _follow(_start_writer(journal_file), acknowledged, kill_after_done_lines=lines_before_kill)
    _check_consistent(journal_file, acknowledged, exact=False)

    # A last writer runs to the end from whatever the crashes left: every batch once, every upload.
    _follow(_start_writer(journal_file), acknowledged)
    final = _check_consistent(journal_file, acknowledged, exact=True)
    assert final["batches"] == set(range(BATCHES))
    assert final["state"] == "SUCCEEDED"
    expected_uploads = {relpath for batch in range(BATCHES) for relpath in batch_upload_relpaths(batch)}
    assert final["uploads"] == expected_uploads


def test_status_json_of_the_crashed_journal_is_readable(tmp_path: Path) -> None:
    """After a kill mid-submission, describe_run (what `topn status` shows) still works on the journal."""
    journal_file = tmp_path / "journal.sqlite3"
    _follow(
        _start_writer(journal_file, "--pause", "submit", "--pause-batch", "2"),
        Acknowledged(),
        kill_at="paused",
    )

    async def describe() -> dict[str, Any]:
        async with await Journal.open(journal_file) as journal:
            record = await journal.load_run(RUN)
            assert record is not None
            return describe_run(record)

    status = anyio.run(describe)
    json.dumps(status)
    assert status["state"] == state_for(2)
    assert status["stages"]["submitting"] == {"done": 2 * TASKS_PER_BATCH, "total": BATCHES * TASKS_PER_BATCH}
    assert status["finished"] is False


# ----------------------------------------------------------------------------- the real orchestrator

SAMPLE_FILES = 10


def _after_uploads(count: int) -> Callable[[dict[str, Any]], bool]:
    """True at the `count`-th input upload (a debug event), so the kill lands while staging."""
    seen: list[str] = []

    def check(event: dict[str, Any]) -> bool:
        if event["event"] == "blob.uploaded" and not str(event["blob"]).endswith(".pyz"):
            seen.append(event["blob"])
        return len(seen) == count

    return check


def _is_first_output(event: dict[str, Any]) -> bool:
    return bool(event["event"] == "output.downloaded")


@pytest.mark.asyncio(loop_scope="session")
async def test_kill_9_of_topn_run_leaves_a_journal_never_ahead_of_the_services(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    """SIGKILL `topn run` while it uploads, and a second run once outputs arrive: what is journalled is true.

    Resume trusts the journal, so it may lag behind the services (work done but not yet recorded is
    redone idempotently) but must never claim work that did not happen.
    """
    batch = await start_emulator()
    inputs_dir = tmp_path / "in"
    for number in range(SAMPLE_FILES):
        folder = inputs_dir / ("left" if number % 2 else "right")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"text {number}.txt").write_text(f"alpha beta {'gamma ' * number}delta\n", encoding="utf-8")
    state_dir = tmp_path / "state"
    # Imported here, not at the top: the writer process runs this module and needs none of them.
    from orchestrator.azure.clients import open_clients
    from orchestrator.settings import load_settings
    from tests.e2e.run_cli import topn_environment

    environment = topn_environment(batch, azurite, state_dir)

    settings = load_settings(ROOT / "config" / "local.toml", environment)
    killed: dict[str, RunRecord] = {}
    for name, kill_when in [("staging", _after_uploads(3)), ("collecting", _is_first_output)]:
        out_dir = tmp_path / f"out-{name}"
        announced = await _run_topn_until(inputs_dir, out_dir, environment, tmp_path, kill_when)
        run_id = next(event["run_id"] for event in announced if event["event"] == "run.started")
        record = await _load_after_crash(state_dir / "journal.sqlite3", run_id)
        assert not record.is_finished
        assert len(record.inputs) == SAMPLE_FILES
        # What the killed process announced, it had recorded first.
        announced_states = [event["to_state"] for event in announced if event["event"] == "run.state_changed"]
        assert [change.state for change in record.state_history][1:] == announced_states
        announced_downloads = {event["file"] for event in announced if event["event"] == "output.downloaded"}
        assert announced_downloads <= set(record.downloads)
        async with AsyncExitStack() as stack:
            await _check_never_ahead(record, await open_clients(settings, stack))
        _check_saved_outputs(record, out_dir)
        killed[name] = record
        print(f"killed while {name}, in {record.state}:", describe_run(record)["stages"])

    # Once outputs arrive, every task is submitted and recorded, and some completions are recorded.
    late = killed["collecting"]
    assert late.state in {"RUNNING", "COLLECTING"}
    assert unsubmitted_task_ids(late) == ()
    assert late.completed
    # Nothing the killed runs left behind (journal, WAL, results) holds a key or a SAS signature.
    left_behind = (
        texts_under(state_dir)
        + texts_under(tmp_path / "out-staging")
        + texts_under(tmp_path / "out-collecting")
    )
    assert find_secrets(left_behind, [batch.account_key, azurite.account_key]) == []


async def _run_topn_until(
    inputs_dir: Path,
    out_dir: Path,
    environment: dict[str, str],
    cwd: Path,
    kill_when: Callable[[dict[str, Any]], bool],
) -> list[dict[str, Any]]:
    """Run `topn run` as a user would and SIGKILL it at the first event matching `kill_when`."""
    command = [
        sys.executable,
        "-m",
        "orchestrator",
        "run",
        str(inputs_dir),
        "--config",
        str(ROOT / "config" / "local.toml"),
        "--out",
        str(out_dir),
        "--log-format",
        "json",
        "--log-level",
        "debug",
    ]
    announced: list[dict[str, Any]] = []
    async with await anyio.open_process(
        command, cwd=cwd, env={**os.environ, **environment}, stdout=subprocess.DEVNULL
    ) as process:
        assert process.stderr is not None
        lines = BufferedByteReceiveStream(process.stderr)
        with anyio.fail_after(READ_DEADLINE_S):
            while True:
                try:
                    line = await lines.receive_until(b"\n", 1 << 20)
                except anyio.EndOfStream:
                    raise AssertionError(f"topn run ended before the kill point: {announced[-3:]}") from None
                event = json.loads(line)
                announced.append(event)
                if kill_when(event):
                    process.send_signal(signal.SIGKILL)
                    break
        assert await process.wait() == -signal.SIGKILL
    return announced


async def _load_after_crash(journal_file: Path, run_id: str) -> RunRecord:
    raw = sqlite3.connect(journal_file)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        raw.close()
    async with await Journal.open(journal_file) as journal:
        record = await journal.load_run(run_id)
    assert record is not None
    return record


async def _check_never_ahead(record: RunRecord, clients: Any) -> None:
    """Every upload, task and completion the journal records is true of Azurite and the emulator."""
    for relpath, upload in record.uploads.items():
        blob = clients.blob_service.get_blob_client(
            naming.input_container("topn", record.run_id), upload.blob_name
        )
        stored = await (await blob.download_blob()).readall()
        item = next(item for item in record.inputs if item.relpath == relpath)
        local_md5 = _md5_of_file(Path(item.path))
        assert hashlib.md5(stored, usedforsecurity=False).hexdigest() == local_md5 == upload.md5_hex
    try:
        tasks = {task.id: task async for task in clients.batch.list_tasks(f"topn-{record.run_id}")}
    except ResourceNotFoundError:  # killed before the job was created
        tasks = {}
    # Task ids are the run's work units: the job never holds a stranger, nor misses a recorded one.
    assert set(tasks) <= set(record.task_ids)
    assert record.submitted_task_ids <= set(tasks)
    for task_id, outcome in record.completed.items():
        assert str(tasks[task_id].state).lower().endswith("completed")
        execution = tasks[task_id].execution_info
        assert execution is not None and execution.exit_code == outcome["exit_code"]


def _md5_of_file(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def _check_saved_outputs(record: RunRecord, out_dir: Path) -> None:
    """Every recorded output is on disk whole; no output file anywhere is partial."""
    for relpath, download in record.downloads.items():
        saved = Path(download.local_path)
        assert saved.is_file(), relpath
        assert saved.stat().st_size == download.size_bytes
    for saved in out_dir.rglob("*_OUTPUT*"):
        assert saved.read_text(encoding="utf-8").rstrip("\n").splitlines()[-1].startswith("Pool:")


if __name__ == "__main__":
    _writer_main()
