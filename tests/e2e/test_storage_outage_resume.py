"""Files that Storage failed are run again by `topn resume`; `--retry-failed` runs any failed file again.

An Azurite outage longer than the retry budget (real processes: Azurite stopped mid-run, restarted on
the same data once every task has ended) fails the tasks that start meanwhile (their resource files
cannot be downloaded) and stops topn, whose run says it is resumable. `topn resume RUN_ID` must then
make that true: every file succeeds, with results equal to an independent count.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from orchestrator import naming
from orchestrator.local import processes as local
from tests.conftest import BatchEndpoint, StartEmulator, StorageEndpoint
from tests.e2e.fault_support import check_summary, job_tasks, run_topn_live, write_corpus
from tests.e2e.test_crash_resume import comparable, crash_environment, load_record, run_id_in, run_until
from tests.e2e.test_faults import assert_results_folder_complete

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(300)]

# Task 2 runs when Azurite stops and fails after the node's retries (about 30 s); the rest start during
# the outage and fail at once. More files only make the resume longer.
FILES = 8
# Tasks Storage failed: a resource file not downloaded, or an output not uploaded (node exit 3).
INFRASTRUCTURE_CODES = {"BlobNotFound", "BlobAccessDenied", "BlobDownloadTimedOut", "BlobDownloadMiscError"}


def failed_by_storage(task: Any) -> bool:
    info = task.execution_info
    failure = info.failure_info
    return info.exit_code == 3 or (failure is not None and failure.code in INFRASTRUCTURE_CODES)


async def wait_until_no_task_runs(batch: BatchEndpoint, job_id: str) -> None:
    """Until the job's tasks have all ended (a task mid-upload retries for about 30 s first)."""
    credential = AzureNamedKeyCredential(batch.account_name, batch.account_key)
    async with BatchClient(batch.endpoint, credential) as client:
        with anyio.fail_after(150):
            while True:
                counts = (await client.get_job_task_counts(job_id)).task_counts
                if counts.active == counts.running == 0:
                    return
                await anyio.sleep(0.5)


async def test_an_outage_longer_than_the_retry_budget_is_resumed_to_exact_results(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    location, logs = tmp_path / "azurite-data", tmp_path / "azurite-logs"
    first = await local.start_azurite(location, logs)
    services = [first]
    port = int(first.endpoint.rsplit(":", 1)[1].split("/", 1)[0])
    storage = StorageEndpoint(first.endpoint, local.AZURITE_ACCOUNT_NAME, local.AZURITE_ACCOUNT_KEY)
    batch = await start_emulator()
    texts = write_corpus(tmp_path / "in", FILES, seed=71)
    # One file per task, one slot: the tasks run one after the other, so most start during the outage.
    env = crash_environment(
        batch,
        storage,
        tmp_path,
        TOPN_POOL_ID=f"outage-{tmp_path.name[-16:].replace('_', '-').lower()}",
        TOPN_POOL_TASK_SLOTS_PER_NODE="1",
        TOPN_RUN_TASK_MAX_RETRIES="0",
        TOPN_RETRY_MAX_ATTEMPTS="3",
        TOPN_RETRY_BASE_DELAY_S="0.2",
        TOPN_RETRY_MAX_DELAY_S="0.5",
        TOPN_RETRY_DEADLINE_S="3",
    )
    # The nodes stage the node script before the outage (a warm-up run on the same pool).
    (tmp_path / "warm").mkdir()
    (tmp_path / "warm" / "w.txt").write_text("warm up\n", encoding="utf-8")
    warmed = await run_topn_live(["run", "warm", "--out", "warm-out", "--json"], tmp_path, env)
    assert warmed.exit_code == 0, warmed.stderr[-3000:]

    pids: list[int] = []
    stopped: list[bool] = []

    async def outage_before_the_first_download(event: dict[str, Any]) -> None:
        # topn logs task.completed just before it downloads that file's outputs: paused there, it
        # meets the outage with its very next Storage request, whatever the timing.
        if event["event"] != "task.completed" or stopped:
            return
        stopped.append(True)
        os.kill(pids[0], signal.SIGSTOP)
        try:
            await local.stop_service(first)
        finally:
            os.kill(pids[0], signal.SIGCONT)

    try:
        cut = await run_topn_live(
            ["run", "in", "--out", "out", "--json"],
            tmp_path,
            env,
            on_event=outage_before_the_first_download,
            on_started=pids.append,
        )
        assert stopped, "no task completed before the outage"
        run_id = run_id_in(cut)
        # Stopped, not failed: the message promises a resume, and nothing was cleaned up.
        assert cut.exit_code == 1, cut.stderr[-3000:]
        (failed,) = [event for event in cut.events() if event["event"] == "run.failed"]
        assert failed["resumable"] is True and f"topn resume {run_id}" in failed["error"]
        await wait_until_no_task_runs(batch, f"topn-{run_id}")
        ended = await job_tasks(batch.endpoint, batch.account_name, batch.account_key, f"topn-{run_id}")
        storage_failed = [task for task in ended if failed_by_storage(task)]
        assert storage_failed, "no task met the outage"
        assert all(task.execution_info.result == "failure" for task in storage_failed)

        services.append(await local.start_azurite(location, logs, port=port))
        resumed, _ = await run_until(["resume", run_id, "--json"], tmp_path, env, None)
    finally:
        for service in services:
            await local.stop_service(service)
    assert resumed.exit_code == 0, resumed.stderr[-3000:]
    assert check_summary(resumed.summary(), texts) == []
    assert_results_folder_complete(tmp_path / "out", texts)
    events = resumed.events()
    retried = [event for event in events if event["event"] == "tasks.retried"]
    # Those topn saw fail are reopened before the run; the others are found failed in the job.
    assert retried and {event["reason"] for event in retried} == {"infrastructure"}
    # Every task of the old job had ended (AllTasksComplete): it takes no new task, so the files go on
    # in a successor job, each unit without an outcome once.
    (superseded,) = [event for event in events if event["event"] == "job.superseded"]
    assert (
        superseded["reason"] == "AllTasksComplete" and superseded["successor_job_id"] == f"topn-{run_id}-j2"
    )
    record = await load_record(tmp_path / ".topn", run_id)
    assert record.state == "SUCCEEDED"
    assert all(outcome["status"] == "succeeded" for outcome in record.completed.values())
    assert set(record.completed) == set(record.task_ids)


async def test_retry_failed_runs_a_failed_file_again_and_plain_resume_leaves_it(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    """A file its task failed (exit 7: the file, not Storage) is final for `topn resume`; with
    `--retry-failed` the finished run is reopened, the unit runs again under its next task id (here it
    fails again, the fault being the emulator's), and the summary is the same."""
    texts = write_corpus(tmp_path / "in", 3, seed=73)
    # Three files make three one-file units; the fault fails the unit of this one, by its manifest's
    # name on the command line (a re-issued task keeps its unit's manifest).
    failing_unit = naming.task_id(sorted(texts).index("part1/text 0001.txt"))
    batch = await start_emulator(
        [
            *("--fault-task-fail-match", naming.unit_manifest_file(failing_unit)),
            *("--fault-task-fail-exit-code", "7"),
        ]
    )
    env = crash_environment(batch, azurite, tmp_path, TOPN_RUN_TASK_MAX_RETRIES="0")
    first, _ = await run_until(["run", "in", "--out", "out", "--json"], tmp_path, env, None)
    assert first.exit_code == 1, first.stderr[-3000:]
    run_id = run_id_in(first)
    before = await load_record(tmp_path / ".topn", run_id)
    assert before.state == "FAILED"
    (failed_unit,) = [
        task_id for task_id, outcome in before.completed.items() if outcome["status"] == "failed"
    ]
    assert failed_unit == failing_unit

    plain, _ = await run_until(["resume", run_id, "--json"], tmp_path, env, None)
    assert plain.exit_code == 1 and plain.summary() == first.summary()
    assert not [event for event in plain.events() if event["event"].startswith(("run.", "tasks."))]

    again, _ = await run_until(["resume", run_id, "--retry-failed", "--json"], tmp_path, env, None)
    assert again.exit_code == 1, again.stderr[-3000:]
    retried = [event for event in again.events() if event["event"] == "tasks.retried"]
    assert [(event["tasks"], event["reason"], event["from_state"]) for event in retried] == [
        (1, "retry_failed", "FAILED")
    ]
    (superseded,) = [event for event in again.events() if event["event"] == "job.superseded"]
    assert (superseded["reason"], superseded["tasks"]) == ("AllTasksComplete", 1)
    summary = again.summary()
    assert comparable(summary) == comparable(first.summary())
    assert summary["totals"]["job_id"] == f"topn-{run_id}-j2"
    # The failed unit ran again under its next id, in a new job (the finished one takes no task).
    tasks = await job_tasks(batch.endpoint, batch.account_name, batch.account_key, f"topn-{run_id}-j2")
    assert [task.id for task in tasks] == [f"{failed_unit}-g1"]
    assert tasks[0].execution_info.exit_code == 7
    after = await load_record(tmp_path / ".topn", run_id)
    assert after.state == "FAILED" and dict(after.task_generations) == {failed_unit: 1}
    history = [change.state for change in after.state_history]
    assert history[-5:] == ["FAILED", "RUNNING", "COLLECTING", "CLEANING", "FAILED"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8")) == summary
