"""Restart without loss: files stream in while the daemon is SIGKILLed on a seeded schedule.

A few files arrive (on a thread, at seeded intervals) with each daemon that is started, so each
has a new batch going through every state, and they keep arriving across kills and restarts.

Batch answers 10 % of requests with 503 or 429 meanwhile (the emulator's fault injection).

Issue 12 point 6 asks for kills on "a seeded schedule covering every run state and the claim step".
The schedule (`kill_schedule`) aims each kill at one target: start-up (before ready), the claim
step (a claim's journal row committed, its file not renamed yet), or one of the run states a batch
passes through, CREATED to SUCCEEDED/FAILED (a finished run whose files are not moved yet). Each
round of kills aims at every target once, in a seeded order, each with a seeded jitter. A kill is
triggered when this daemon's journal shows its target; the jitter is slept, then SIGKILL.

Some of those steps last a millisecond (CREATED is left as soon as it is written). So the child
that a kill aims at holds its target: once the step is journalled, the daemon sleeps `HOLD_S`
before leaving it (`hold_then_serve`, nothing else changed), and the kill lands inside the step.
What each kill hit is read back from the journal after the process died (`journal_shows`), and
the test asserts the kills hit every target.

In CI one round runs (one kill per target); `TOPN_DAEMON_CRASH_KILLS=20` is issue 12's "at least 20
times" (two rounds). In the end every input must be exactly once in done/ or failed/, every input
that ran must have exactly one result, and no input may have had two Batch tasks.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
import pytest
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from orchestrator.journal import journal_path
from tests.conftest import BatchEndpoint, StartEmulator, StorageEndpoint
from tests.e2e.run_cli import topn_environment
from tests.integration.daemon.support import FAST_DAEMON, files_under
from tests.task_units import task_input_relpaths

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[3]
SEED = 20261206
RUN_STATES = ("CREATED", "PREPARING", "SUBMITTING", "RUNNING", "COLLECTING", "CLEANING")
ENDED = ("SUCCEEDED", "FAILED")  # CANCELLED is never reached: the daemon leaves interrupted runs to resume
TARGETS = ("start-up", "claim", *RUN_STATES, *ENDED)
KILLS = int(os.environ.get("TOPN_DAEMON_CRASH_KILLS", str(len(TARGETS))))
HOLD_S = 3.0  # how long the aimed-at step is held: well past the trigger's latency plus the jitter
JITTER_S = (0.0, 0.25)
TARGET_WITHIN_S = 45.0
FILES_PER_LIFE = 3  # each daemon that is killed sees a few files arrive
READY_TIMEOUT_S = 10.0  # issue 12: ready again within 10 s of a restart
INPUT_NAME = re.compile(r"f\d{3}\.txt")


@dataclass
class DaemonChild:
    """A daemon child process and its stdout events, read on a thread."""

    process: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)
    reader: threading.Thread | None = None

    @classmethod
    def start(
        cls, inbox: Path, env: dict[str, str], log: Path, command: list[str] | None = None
    ) -> DaemonChild:
        """The stand-in daemon (tests/.../daemon_process.py) on `inbox`, or `command` when given."""
        process = subprocess.Popen(
            command or [sys.executable, "-m", "tests.integration.daemon.daemon_process", str(inbox)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log.open("a", encoding="utf-8"),
            text=True,
        )
        child = cls(process)
        child.reader = threading.Thread(target=child._read, daemon=True)
        child.reader.start()
        return child

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.events.append({"event": "not-json", "line": line})

    def seen(self, name: str) -> dict[str, Any] | None:
        return next((event for event in list(self.events) if event.get("event") == name), None)

    def wait_dead(self) -> None:
        """Until the process has ended and every line it wrote was read (blocking)."""
        self.process.wait(30)
        if self.reader is not None:
            self.reader.join(30)


# ------------------------------------------------------------------ the child that holds its target


def hold_then_serve() -> int:
    """Child entry point: `daemon_process` on argv[1], holding the step named by argv[2] for argv[3] s."""
    from tests.integration.daemon import daemon_process

    target, hold_s = sys.argv[2], float(sys.argv[3])
    del sys.argv[2:]
    hold_at(target, hold_s)
    return daemon_process.main()


def hold_at(target: str, hold_s: float) -> None:
    """Make the daemon of this process sleep `hold_s` inside `target`, right after it was journalled."""
    from orchestrator.journal.intake import IntakeFile, IntakeStore
    from orchestrator.run.machine import RunState, RunStateMachine
    from orchestrator.service.daemon import Daemon

    if target == "claim":
        record_claims = IntakeStore.record_claims

        async def claims_then_hold(
            self: IntakeStore, files: Sequence[IntakeFile], duplicates: Sequence[IntakeFile]
        ) -> None:
            await record_claims(self, files, duplicates)
            if files:  # the rows are committed; the files are renamed into .claimed/ after this
                await anyio.sleep(hold_s)

        IntakeStore.record_claims = claims_then_hold
    elif target == "start-up":
        recover = Daemon.recover

        async def hold_then_recover(self: Daemon, **kwargs: Any) -> None:
            await anyio.sleep(hold_s)  # services open, the pool kept; recovery not begun
            await recover(self, **kwargs)

        Daemon.recover = hold_then_recover
    else:
        move = RunStateMachine.move

        async def move_with_hold(self: RunStateMachine, state: RunState) -> None:
            if self.state.value == target:  # about to leave the target: stay in it a while first
                await anyio.sleep(hold_s)
            await move(self, state)
            if state.value == target and target in ENDED:  # a final state: hold before the files move
                await anyio.sleep(hold_s)

        RunStateMachine.move = move_with_hold


def holding_command(inbox: Path, target: str) -> list[str]:
    entry = "import sys; from tests.integration.daemon.test_daemon_crash import hold_then_serve; "
    entry += "sys.exit(hold_then_serve())"
    return [sys.executable, "-c", entry, str(inbox), target, str(HOLD_S)]


# ------------------------------------------------------------------ the schedule and what a kill hit


@dataclass(frozen=True)
class Kill:
    target: str
    jitter_s: float


def kill_schedule(kills: int, rng: random.Random) -> list[Kill]:
    """`kills` kills; each round of len(TARGETS) aims at every target once, in a seeded order."""
    targets: list[str] = []
    while len(targets) < kills:
        one_round = list(TARGETS)
        rng.shuffle(one_round)
        targets.extend(one_round)
    return [Kill(target, round(rng.uniform(*JITTER_S), 3)) for target in targets[:kills]]


@dataclass(frozen=True)
class Mark:
    """Where the journal was when a daemon started: what it writes after this is its own."""

    state_seq: int = 0
    claim_rowid: int = 0


def journal_mark(path: Path) -> Mark:
    if not path.exists():
        return Mark()
    with closing(sqlite3.connect(path, timeout=10)) as db:
        seq = db.execute("SELECT coalesce(max(seq), 0) FROM state_changes").fetchone()[0]
        rowid = db.execute("SELECT coalesce(max(rowid), 0) FROM intake_files").fetchone()[0]
    return Mark(int(seq), int(rowid))


def journal_shows(path: Path, since: Mark) -> set[str]:
    """The steps the journal shows a daemon in, of what it wrote after `since` (blocking).

    A run state: a run this daemon moved, still in that state (a final one: its batch's files not
    moved yet). "claim": a claim's row is committed while its file is still in the inbox.
    """
    if not path.exists():
        return set()
    with closing(sqlite3.connect(path, timeout=10)) as db:
        runs = db.execute(
            "SELECT run.state, batch.state FROM runs AS run"
            " LEFT JOIN intake_batches AS batch ON batch.batch_id = run.run_id"
            " WHERE run.run_id IN (SELECT run_id FROM state_changes WHERE seq > ?)",
            (since.state_seq,),
        ).fetchall()
        claims = db.execute(
            "SELECT source_path, claimed_path FROM intake_files WHERE rowid > ? AND state = 'claimed'",
            (since.claim_rowid,),
        ).fetchall()
    shows = {
        str(run_state)
        for run_state, batch_state in runs
        if run_state in RUN_STATES or (run_state in ENDED and batch_state != "finished")
    }
    if any(Path(source).exists() and not Path(claimed).exists() for source, claimed in claims):
        shows.add("claim")
    return shows


@dataclass
class KillRecord:
    kill: Kill
    ready_s: float | None
    hit: set[str]
    last_events: list[str]


# ------------------------------------------------------------------ the stream and the daemon


class FileStream:
    """Files with unique contents arriving in the inbox on a thread, some written in place, some
    renamed in, at seeded intervals: `more(n)` lets n more arrive; `end()` writes what is let and stops."""

    def __init__(self, inbox: Path, rng: random.Random) -> None:
        self.inbox = inbox
        self.written: list[str] = []
        self._rng = rng
        self._requests: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._ending = threading.Event()
        self._thread = threading.Thread(target=self._write, daemon=True)
        self._thread.start()

    def more(self, count: int) -> None:
        self._requests.put(count)

    def end(self) -> None:
        """No more after what was let; the rest is written at once (blocking)."""
        self._ending.set()
        self._requests.put(None)
        self._thread.join(30)

    def _write(self) -> None:
        scratch = self.inbox.parent / "scratch"
        scratch.mkdir(exist_ok=True)
        while (count := self._requests.get()) is not None:
            for _ in range(count):
                index = len(self.written)
                text = f"word{index} " * (index % 5 + 1) + ("FAIL-THIS-FILE" if fails(index) else "")
                name = f"f{index:03d}.txt"
                if index % 2:
                    (self.inbox / name).write_text(text, encoding="utf-8")
                else:
                    (scratch / name).write_text(text, encoding="utf-8")
                    (scratch / name).rename(self.inbox / name)
                self.written.append(name)
                self._ending.wait(self._rng.uniform(0.05, 0.4))


def fails(index: int) -> bool:
    return index % 5 == 2  # most batches hold one: some end FAILED, some SUCCEEDED


async def wait_ready(child: DaemonChild) -> float:
    started = time.monotonic()
    while time.monotonic() - started < 60:
        if child.seen("daemon.ready") is not None:
            return time.monotonic() - started
        if child.process.poll() is not None:
            raise AssertionError(f"the daemon exited with {child.process.returncode} before it was ready")
        await anyio.sleep(0.05)
    raise AssertionError("the daemon was not ready within 60 s")


async def batch_tasks(batch: BatchEndpoint, inputs: re.Pattern[str] = INPUT_NAME) -> Counter[str]:
    """How many tasks every job of the emulator holds for each input file named like `inputs` (read
    from the tasks' manifests)."""
    credential = AzureNamedKeyCredential(batch.account_name, batch.account_key)
    per_file: Counter[str] = Counter()
    async with BatchClient(batch.endpoint, credential) as client:
        async for job in client.list_jobs():
            async for task in client.list_tasks(str(job.id)):
                for relpath in await task_input_relpaths(task):  # read from the task's manifest
                    if inputs.fullmatch(PurePosixPath(relpath).name):
                        per_file[PurePosixPath(relpath).name] += 1
    return per_file


async def kill_at_target(child: DaemonChild, kill: Kill, journal: Path, mark: Mark) -> KillRecord:
    """Wait until this daemon's journal shows the kill's target (or, for start-up, its first event)."""
    ready_s: float | None = None
    deadline = time.monotonic() + TARGET_WITHIN_S
    if kill.target == "start-up":
        while not child.events:
            assert child.process.poll() is None, f"the daemon exited with {child.process.returncode}"
            assert time.monotonic() < deadline, "the daemon wrote no event"
            await anyio.sleep(0.02)
    else:
        ready_s = await wait_ready(child)
        while kill.target not in await anyio.to_thread.run_sync(journal_shows, journal, mark):
            assert child.process.poll() is None, f"the daemon exited with {child.process.returncode}"
            assert time.monotonic() < deadline, f"the journal never showed {kill.target}"
            await anyio.sleep(0.05)
    await anyio.sleep(kill.jitter_s)
    child.process.send_signal(signal.SIGKILL)
    await anyio.to_thread.run_sync(child.wait_dead)
    hit = await anyio.to_thread.run_sync(journal_shows, journal, mark)
    if child.seen("daemon.ready") is None:
        hit.add("start-up")
    last = [f"{event.get('event')}:{event.get('to_state', '')}" for event in child.events[-3:]]
    return KillRecord(kill, ready_s, hit, last)


async def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    began = time.monotonic()
    schedule = kill_schedule(KILLS, random.Random(SEED))
    assert {kill.target for kill in schedule} == set(TARGETS), "too few kills to aim at every target"
    # With 5 % of Batch requests answered 503 or 429 (Retry-After), as the soak's injected faults.
    batch = await start_emulator(
        [
            "--fault-seed",
            str(SEED),
            "--fault-503",
            "0.05",
            "--fault-429",
            "0.05",
            "--fault-retry-after-s",
            "0.2",
        ]
    )
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    state = tmp_path / "state"
    journal = journal_path(state)
    env = topn_environment(
        batch,
        azurite,
        state,
        **{**FAST_DAEMON, "TOPN_POOL_ID": "crash-pool", "TOPN_DAEMON_BATCH_MAX_FILES": "4"},
    )
    log = tmp_path / "daemon.stderr.log"
    stream = FileStream(inbox, random.Random(SEED + 1))
    records: list[KillRecord] = []
    children: list[DaemonChild] = []
    try:
        for kill in schedule:
            mark = await anyio.to_thread.run_sync(journal_mark, journal)
            child = DaemonChild.start(inbox, env, log, command=holding_command(inbox, kill.target))
            stream.more(FILES_PER_LIFE)  # a new batch for this daemon: it passes every state
            children.append(child)
            records.append(await kill_at_target(child, kill, journal, mark))
        await anyio.to_thread.run_sync(stream.end)

        child = DaemonChild.start(inbox, env, log)
        children.append(child)
        final_ready_s = await wait_ready(child)

        def settled() -> bool:
            done = files_under(tmp_path / "done")
            failed = [name for name in files_under(tmp_path / "failed") if not name.endswith(".error.json")]
            return len(done) + len(failed) >= len(stream.written)

        deadline = time.monotonic() + 120
        while not await anyio.to_thread.run_sync(settled):
            assert time.monotonic() < deadline, "not every input ended in done/ or failed/ within 120 s"
            assert child.process.poll() is None, f"the daemon exited with {child.process.returncode}"
            await anyio.sleep(0.3)
        child.process.send_signal(signal.SIGTERM)
        exit_status = await anyio.to_thread.run_sync(lambda: child.process.wait(30))
    finally:
        await anyio.to_thread.run_sync(stream.end)
        for number, one in enumerate(children):
            if one.process.poll() is None:  # a failed assertion left it running
                one.process.kill()
                one.process.wait()
            lines = "".join(json.dumps(event) + "\n" for event in list(one.events))
            await anyio.Path(tmp_path / f"daemon{number}.events.jsonl").write_text(lines, encoding="utf-8")

    for record in records:
        print(
            f"kill at {record.kill.target:<10} +{record.kill.jitter_s:.3f} s:"
            f" hit {sorted(record.hit)}, last events {record.last_events}"
        )
    assert exit_status == 0, log.read_text(encoding="utf-8")[-3000:]
    # The kills covered every target: what each hit is read back from the journal after the kill.
    hits = Counter(target for record in records for target in record.hit)
    assert set(TARGETS) <= set(hits), f"not hit: {set(TARGETS) - set(hits)}"
    ready_times = [record.ready_s for record in records if record.ready_s is not None] + [final_ready_s]
    assert max(ready_times) < READY_TIMEOUT_S, ready_times

    names = set(stream.written)
    done = await anyio.to_thread.run_sync(files_under, tmp_path / "done")
    failed = await anyio.to_thread.run_sync(files_under, tmp_path / "failed")
    failed_inputs = [name for name in failed if not name.endswith(".error.json")]
    # Exactly once in done/ or failed/, under its own name; failures have their error file.
    assert sorted([*done, *failed_inputs]) == sorted(names)
    assert sorted(failed_inputs) == sorted(name for name in names if fails(int(name[1:4])))
    assert all(f"{name}.error.json" in failed for name in failed_inputs)
    assert sorted(await anyio.to_thread.run_sync(files_under, inbox)) == [".topn-daemon.lock"]

    outbox = await anyio.to_thread.run_sync(files_under, tmp_path / "outbox")
    outputs = Counter(Path(name).name for name in outbox if "_OUTPUT" in name)
    assert outputs == Counter(f"{Path(name).stem}_OUTPUT.txt" for name in done)  # one result per input
    summaries = [json.loads(text) for name, text in outbox.items() if name.endswith("summary.json")]
    in_summaries = Counter(entry["path"] for summary in summaries for entry in summary["files"])
    assert in_summaries == Counter(names)  # every input ran in exactly one batch

    # Recovery had work of each kind: interrupted claims to finish, claims to batch, runs to resume.
    recoveries = [
        event for one in children for event in one.events if event.get("event") == "daemon.recovered"
    ]
    for kind in ("moves_finished", "files_rebatched", "batches_resumed"):
        assert any(event[kind] for event in recoveries), (kind, recoveries)

    tasks = await batch_tasks(batch)
    assert sorted(tasks) == sorted(names)
    assert max(tasks.values()) == 1, tasks.most_common(3)  # no input had two Batch tasks
    print(
        f"kills={len(records)} hits={dict(sorted(hits.items()))} files={len(names)}"
        f" failed={len(failed_inputs)} lost_or_doubled=0 max_tasks_per_input={max(tasks.values())}"
        f" ready_s_max={max(ready_times):.2f} ready_s={[round(t, 2) for t in ready_times]}"
        f" wall_s={time.monotonic() - began:.1f}"
    )
