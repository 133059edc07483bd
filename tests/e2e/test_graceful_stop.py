"""Graceful stop (issue 5, point 4): SIGINT/SIGTERM leave a resumable run; a second signal exits at once.

The first signal stops starting new work, lets the journal write in progress commit, emits
`run.interrupted` and exits 130 / 143 without cleaning up: the job, the pool and the blobs stay,
so `topn resume` completes the run. A second signal ends the process immediately; the journal (WAL,
one transaction per record) is still whole and the run still resumes.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.fault_support import check_summary, write_corpus
from tests.e2e.test_crash_resume import (
    assert_no_partial_files,
    assert_one_task_per_input,
    crash_environment,
    load_record,
    run_id_in,
    run_until,
)
from tests.secret_scan import find_secrets

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

FILES = 6


def _first_output(event: dict[str, object]) -> bool:
    return event["event"] == "output.downloaded"


async def job_state(batch: BatchEndpoint, job_id: str) -> str:
    credential = AzureNamedKeyCredential(batch.account_name, batch.account_key)
    async with BatchClient(batch.endpoint, credential) as client:
        job = await client.get_job(job_id)
    return str(getattr(job.state, "value", job.state))


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_leaves_the_run_resumable_and_resume_completes_it(
    sent: signal.Signals, batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    texts = write_corpus(tmp_path / "in", FILES, seed=5)
    env = crash_environment(batch_emulator, azurite, tmp_path)
    first, signalled = await run_until(
        ["run", "in", "--out", "out", "--json"], tmp_path, env, _first_output, sent
    )
    assert signalled and first.exit_code == 128 + int(sent), first.stderr[-2000:]
    run_id = run_id_in(first)
    events = first.events()
    interrupted = [event for event in events if event["event"] == "run.interrupted"]
    assert len(interrupted) == 1 and interrupted[0]["resume_command"] == f"topn resume {run_id}"
    assert not [
        event for event in events if event["event"] in ("run.failed", "run.completed", "cleanup.failed")
    ]
    record = await load_record(tmp_path / ".topn", run_id)
    assert record.state == interrupted[0]["state"] == "RUNNING" and not record.is_finished
    # Nothing was cleaned up: the job is still there for the resumed run to reattach to.
    assert await job_state(batch_emulator, f"topn-{run_id}") in ("active", "completed")
    assert first.stdout == ""  # no summary for a run that did not finish

    second, _ = await run_until(["resume", run_id, "--json"], tmp_path, env, None)
    assert second.exit_code == 0, second.stderr[-3000:]
    assert check_summary(second.summary(), texts) == []
    await assert_one_task_per_input(batch_emulator, run_id, sorted(texts))
    assert_no_partial_files(tmp_path / "out", sorted(texts))
    assert (await load_record(tmp_path / ".topn", run_id)).state == "SUCCEEDED"
    keys = [batch_emulator.account_key, azurite.account_key]
    streams = [("stdout", first.stdout + second.stdout), ("stderr", first.stderr + second.stderr)]
    assert find_secrets(streams, keys) == []


async def test_a_second_signal_exits_at_once_and_the_journal_stays_whole(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    texts = write_corpus(tmp_path / "in", FILES, seed=9)
    env = crash_environment(batch_emulator, azurite, tmp_path)

    def submitting(event: dict[str, object]) -> bool:
        return event["event"] == "tasks.chunk_added"

    # SIGINT and SIGTERM, both pending when the process resumes: the first handled starts the
    # graceful stop, the second must end the process at once, mid-submission.
    first, signalled = await run_until(
        ["run", "in", "--out", "out", "--json", "--log-level", "debug"],
        tmp_path,
        env,
        submitting,
        signal.SIGINT,
        then=[signal.SIGTERM],
    )
    assert signalled, first.stderr[-2000:]
    events = first.events()  # every stderr line is still a JSON event
    # Whichever of the two is handled second ends the process at once, with its own status.
    assert events[-1]["event"] == "signal.repeated", first.stderr[-2000:]
    assert first.exit_code == events[-1]["exit_code"] in (128 + int(signal.SIGINT), 128 + int(signal.SIGTERM))
    assert not [event for event in events if event["event"] in ("run.failed", "run.completed")]
    run_id = run_id_in(first)
    journal_file = tmp_path / ".topn" / "journal.sqlite3"
    with sqlite3.connect(journal_file) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    record = await load_record(tmp_path / ".topn", run_id)
    assert not record.is_finished

    second, _ = await run_until(["resume", run_id, "--json"], tmp_path, env, None)
    assert second.exit_code == 0, second.stderr[-3000:]
    assert check_summary(second.summary(), texts) == []
    await assert_one_task_per_input(batch_emulator, run_id, sorted(texts))
