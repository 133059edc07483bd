"""Crash tests (issue 5, point 3): `kill -9` of the orchestrator in each state, then `topn resume`.

Azurite and the emulator keep running (the session's services, as `topn local up` would). Each
test starts `topn run` on a few tiny files (one task per file, add-task requests of two tasks sent
one at a time, so SUBMITTING spans several requests), SIGKILLs it at the moment an event says the
run is in the chosen state, then resumes it. Checked against independent references: the results
(`run_cli.reference_top`), the emulator's tasks through the Batch API (exactly one per input), the
results folder (one whole `_OUTPUT` per input, no temp file), uploads and downloads done once, and
summary.json equal to an uninterrupted run's apart from ids, timings and request counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
import pytest_asyncio

from orchestrator.journal import Journal, RunRecord
from tests.conftest import BatchEndpoint, StartEmulator, StorageEndpoint
from tests.e2e.fault_support import LiveRun, check_summary, job_tasks, run_topn_live, write_corpus
from tests.e2e.run_cli import ONE_NODE_POOL, topn_environment
from tests.task_units import task_input_blobs

# Fields that differ between two runs of the same inputs without the results differing.
RUN_SPECIFIC_TOTALS = frozenset({"duration_s", "stages_s", "requests", "job_id"})

EventTrigger = Callable[[dict[str, Any]], bool]
# A run a test acts on at a chosen event yields the CPU to the test process (see run_until).
TIMED_RUN_NICENESS = 10


def crash_environment(
    batch: BatchEndpoint, storage: StorageEndpoint, root: Path, **overrides: str
) -> dict[str, str]:
    """One task per file, small add-task requests sent one at a time, the job kept for inspection."""
    settings = {
        "TOPN_RUN_DELETE_JOB": "false",
        "TOPN_RUN_MAX_FILES_PER_TASK": "1",
        "TOPN_RUN_SUBMIT_CHUNK_TASKS": "2",
        "TOPN_RUN_SUBMIT_CONCURRENCY": "1",
        "TOPN_RUN_UPLOAD_CONCURRENCY": "2",
        **ONE_NODE_POOL,
    }
    return topn_environment(batch, storage, root / ".topn", **{**settings, **overrides})


async def run_until(
    args: list[str],
    cwd: Path,
    env: Mapping[str, str],
    trigger: EventTrigger | None,
    stop_with: signal.Signals = signal.SIGKILL,
    then: Sequence[signal.Signals] = (),
    on_event: Callable[[dict[str, Any]], object] | None = None,
    yield_cpu: bool = False,
) -> tuple[LiveRun, bool]:
    """Run `python -m orchestrator ARGS`; send `stop_with` when an event satisfies `trigger`.

    Returns the run and whether the signal was sent. With `then`, the process is paused (SIGSTOP),
    sent `stop_with` and then those, and resumed: it receives them in a row, signal by signal (the
    "press Ctrl-C twice" case, without depending on how fast the first one is handled). `on_event`
    sees every event (to act on the services instead of on topn). With `yield_cpu`, topn runs at
    niceness TIMED_RUN_NICENESS, so that on a busy machine the signal lands before topn moves past
    the event (only for runs with no short deadline of their own: a starved topn is slow).
    """
    sent = False
    pids: list[int] = []

    async def hook(event: dict[str, Any]) -> None:
        nonlocal sent
        if on_event is not None:
            on_event(event)
        if sent or trigger is None or not trigger(event):
            return
        (pid,) = pids
        if then:
            os.kill(pid, signal.SIGSTOP)
        for sending in (stop_with, *then):
            os.kill(pid, sending)
        if then:
            os.kill(pid, signal.SIGCONT)
        sent = True

    def started(pid: int) -> None:
        pids.append(pid)
        if yield_cpu:
            with contextlib.suppress(ProcessLookupError):  # already gone: nothing left to slow down
                os.setpriority(os.PRIO_PROCESS, pid, TIMED_RUN_NICENESS)

    with anyio.fail_after(240):
        run = await run_topn_live(args, cwd, env, hook, on_started=started)
    return run, sent


def run_id_in(run: LiveRun) -> str:
    """The run id every event of a run carries."""
    ids = {event["run_id"] for event in run.events() if "run_id" in event}
    assert len(ids) == 1, ids
    return str(ids.pop())


async def load_record(state_dir: Path, run_id: str) -> RunRecord:
    async with await Journal.open(state_dir) as journal:
        record = await journal.load_run(run_id)
    assert record is not None, run_id
    return record


def comparable(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A summary without what legitimately differs between runs: ids, timings, request counts."""
    totals = {key: value for key, value in summary["totals"].items() if key not in RUN_SPECIFIC_TOTALS}
    return {
        **{key: value for key, value in summary.items() if key not in ("run_id", "totals")},
        "totals": totals,
    }


async def assert_one_task_per_input(batch: BatchEndpoint, run_id: str, relpaths: list[str]) -> None:
    """Through the Batch API: one task per input (one file each here), all succeeded, none twice."""
    tasks = await job_tasks(batch.endpoint, batch.account_name, batch.account_key, f"topn-{run_id}")
    assert len({task.id for task in tasks}) == len(tasks) == len(relpaths)
    staged = sorted([blob for task in tasks for blob in await task_input_blobs(task)])
    assert len(staged) == len(set(staged)) == len(relpaths)
    assert {task.state for task in tasks} == {"completed"}
    assert {task.execution_info.result for task in tasks} == {"success"}


def assert_no_partial_files(out: Path, relpaths: list[str]) -> None:
    """One `_OUTPUT` file per input, every one whole (a temp file renamed into place), no temp left."""
    expected = {relpath.rsplit(".", 1)[0] + "_OUTPUT.txt" for relpath in relpaths}
    assert {str(path.relative_to(out)) for path in out.rglob("*_OUTPUT.txt")} == expected
    leftovers = [
        path.name for path in out.rglob("*") if path.name.startswith(".tmp-") or path.suffix == ".part"
    ]
    assert leftovers == []
    for name in expected:
        text = (out / name).read_text(encoding="utf-8")
        assert text.startswith("Word\tCount") and text.rstrip().splitlines()[-1].startswith("Pool:"), name


def per_input_counts(
    events: list[dict[str, Any]], event_name: str, field: str, **match: Any
) -> dict[str, int]:
    """How many `event_name` events name each value of `field` (optionally only matching ones)."""
    counts: dict[str, int] = {}
    for event in events:
        if event["event"] == event_name and all(event.get(key) == value for key, value in match.items()):
            counts[str(event[field])] = counts.get(str(event[field]), 0) + 1
    return counts


# The session's services are on the session loop; these tests run on it too.
pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

FILES = 8


def _input_upload(event: dict[str, Any]) -> bool:
    return (
        event["event"] == "blob.uploaded" and str(event["blob"]).startswith("runs/") and not event["skipped"]
    )


def count_after(count: int, matches: EventTrigger) -> EventTrigger:
    """A trigger that fires on the `count`-th event matching `matches`."""
    seen = 0

    def trigger(event: dict[str, Any]) -> bool:
        nonlocal seen
        seen += matches(event)
        return seen == count

    return trigger


# state the journal must hold after the kill -> the event that proves the run is in it
CRASH_POINTS: dict[str, tuple[str, Callable[[], EventTrigger]]] = {
    "STAGING": ("PREPARING", lambda: count_after(2, _input_upload)),
    "PROVISIONING": ("PREPARING", lambda: count_after(1, lambda event: event["event"] == "pool.ready")),
    # A new run adds each unit's task as soon as its inputs are uploaded (still PREPARING); SUBMITTING
    # then adds what is left and lets the job end with its tasks.
    "SUBMITTING": (
        "SUBMITTING",
        lambda: count_after(
            1, lambda event: event["event"] == "run.state_changed" and event["to_state"] == "SUBMITTING"
        ),
    ),
    "RUNNING": ("RUNNING", lambda: count_after(1, lambda event: event["event"] == "output.downloaded")),
    "COLLECTING": (
        "COLLECTING",
        lambda: count_after(
            1, lambda event: event["event"] == "run.state_changed" and event["to_state"] == "COLLECTING"
        ),
    ),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("crash-corpus")
    return folder, write_corpus(folder / "in", FILES, seed=23)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def uninterrupted(
    batch_emulator: BatchEndpoint,
    azurite: StorageEndpoint,
    corpus: tuple[Path, dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """The summary of the same run, never interrupted: what every resumed run must equal."""
    root = tmp_path_factory.mktemp("uninterrupted")
    shutil.copytree(corpus[0] / "in", root / "in")
    env = crash_environment(batch_emulator, azurite, root)
    run, _ = await run_until(["run", "in", "--out", "out", "--json"], root, env, None)
    assert run.exit_code == 0, run.stderr[-3000:]
    summary = run.summary()
    assert check_summary(summary, corpus[1]) == []
    return summary


# SUBMITTING can be over in one request (the tasks went in while PREPARING; it switches the job to
# `terminatejob`): an emulator that holds that request 3 s keeps the run there until the kill lands.
SLOW_STATES = {"SUBMITTING": ["--fault-slow", "update_job=3"]}


@pytest.mark.parametrize("crash_point", list(CRASH_POINTS))
async def test_a_run_killed_in_each_state_resumes_to_the_same_results(
    crash_point: str,
    batch_emulator: BatchEndpoint,
    start_emulator: StartEmulator,
    azurite: StorageEndpoint,
    corpus: tuple[Path, dict[str, str]],
    uninterrupted: dict[str, Any],
    tmp_path: Path,
) -> None:
    shutil.copytree(corpus[0] / "in", tmp_path / "in")
    texts = corpus[1]
    slow = SLOW_STATES.get(crash_point)
    emulator = await start_emulator(slow) if slow else batch_emulator
    env = crash_environment(emulator, azurite, tmp_path)
    journal_state, make_trigger = CRASH_POINTS[crash_point]

    # pytest-xdist workers and other runs load the machine: topn yields the CPU to this process, or
    # it could be past the state by the time the signal lands (PROVISIONING failed so at load 9).
    first, killed = await run_until(
        ["run", "in", "--out", "out", "--json", "--log-level", "debug"],
        tmp_path,
        env,
        make_trigger(),
        yield_cpu=True,
    )
    assert killed and first.exit_code == -9, (first.exit_code, first.stderr[-2000:])
    run_id = run_id_in(first)
    record = await load_record(tmp_path / ".topn", run_id)
    assert record.state == journal_state and not record.is_finished

    second, _ = await run_until(["resume", run_id, "--json", "--log-level", "debug"], tmp_path, env, None)
    assert second.exit_code == 0, second.stderr[-3000:]
    resumed = [event for event in second.events() if event["event"] == "run.resumed"]
    assert len(resumed) == 1 and resumed[0]["from_state"] == journal_state
    summary = second.summary()
    assert summary["run_id"] == run_id
    assert check_summary(summary, texts) == []
    assert comparable(summary) == comparable(uninterrupted)
    assert json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8")) == summary

    relpaths = sorted(texts)
    await assert_one_task_per_input(emulator, run_id, relpaths)
    assert_no_partial_files(tmp_path / "out", relpaths)
    events = first.events() + second.events()
    # Inputs the journal had as uploaded are not touched again; the others are uploaded at most once
    # with new bytes (one whose upload landed just before the kill is found there, same MD5: skipped).
    blob_of = {relpath: f"runs/{run_id}/{relpath}" for relpath in relpaths}
    again = per_input_counts(second.events(), "blob.uploaded", "blob")
    assert not [relpath for relpath in record.uploads if blob_of[relpath] in again]
    uploads = per_input_counts(events, "blob.uploaded", "blob", skipped=False)
    assert all(uploads.get(blob, 0) <= 1 for blob in blob_of.values()), uploads
    assert set(blob_of.values()) <= set(per_input_counts(events, "blob.uploaded", "blob"))
    # Each output saved once: what the journal had as saved at the kill is not fetched again, the rest
    # exactly once by the resumed run (its event follows the journal record, so a kill may drop one).
    assert per_input_counts(second.events(), "output.downloaded", "file") == {
        relpath: 1 for relpath in relpaths if relpath not in record.downloads
    }
    final = await load_record(tmp_path / ".topn", run_id)
    assert final.state == "SUCCEEDED" and set(final.downloads) == set(relpaths)


OVERLAP_FILES = 40


async def test_a_run_killed_while_uploads_and_submissions_overlap_resumes_to_exact_results(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    """SIGKILL at the first add-task request, while later inputs are still uploading (issue 13, point 4)."""
    texts = write_corpus(tmp_path / "in", OVERLAP_FILES, seed=29)
    # Sorted last, so its unit is staged last: uploads go on well after the first tasks are added
    # (and after the kill, which follows the event by a moment: small inputs now go up in batches).
    big = "zz/big.txt"
    texts[big] = "tide " * (8 * 1024 * 1024)
    (tmp_path / "in" / "zz").mkdir()
    (tmp_path / "in" / big).write_text(texts[big], encoding="utf-8")
    env = crash_environment(batch_emulator, azurite, tmp_path, TOPN_RUN_UPLOAD_CONCURRENCY="1")
    first, killed = await run_until(
        ["run", "in", "--out", "out", "--json", "--log-level", "debug"],
        tmp_path,
        env,
        count_after(1, lambda event: event["event"] == "tasks.chunk_added"),
    )
    assert killed and first.exit_code == -9, (first.exit_code, first.stderr[-2000:])
    run_id = run_id_in(first)
    record = await load_record(tmp_path / ".topn", run_id)
    # Killed in PREPARING with tasks in the job and inputs still to upload: the stages overlapped.
    assert record.state == "PREPARING" and not record.is_finished
    assert 0 < len(record.submitted_task_ids) < len(texts)
    assert len(record.uploads) < len(texts)
    # What the journal says was added is in the job, and each of those units' inputs is uploaded.
    tasks = await job_tasks(
        batch_emulator.endpoint, batch_emulator.account_name, batch_emulator.account_key, f"topn-{run_id}"
    )
    assert record.submitted_task_ids <= {task.id for task in tasks}
    for task_id in record.submitted_task_ids:
        assert {item.relpath for item in record.inputs_by_task[task_id]} <= set(record.uploads)

    second, _ = await run_until(["resume", run_id, "--json", "--log-level", "debug"], tmp_path, env, None)
    assert second.exit_code == 0, second.stderr[-3000:]
    summary = second.summary()
    assert check_summary(summary, texts) == []
    relpaths = sorted(texts)
    await assert_one_task_per_input(batch_emulator, run_id, relpaths)
    assert_no_partial_files(tmp_path / "out", relpaths)
    final = await load_record(tmp_path / ".topn", run_id)
    assert final.state == "SUCCEEDED" and set(final.downloads) == set(relpaths)
