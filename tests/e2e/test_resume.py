"""`topn resume` and `topn status` through the CLI: unknown runs, finished runs, a job that ended while
topn was down, fresh SAS, and what `status` shows from the journal and the live job."""

from __future__ import annotations

import json
import os
import shutil
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from orchestrator import naming
from orchestrator.journal import Journal, JournalInput
from orchestrator.local import processes as local
from orchestrator.results import claim_results_folder, write_summary
from orchestrator.run.resume import failed_relpaths
from tests.conftest import BatchEndpoint, StartEmulator, StorageEndpoint
from tests.e2e.fault_support import check_summary, job_tasks, write_corpus
from tests.e2e.held_back import held_back_run, sas_expiry_of
from tests.e2e.test_crash_resume import (
    EventTrigger,
    assert_one_task_per_input,
    comparable,
    count_after,
    crash_environment,
    load_record,
    run_id_in,
    run_until,
)
from tests.task_units import task_input_blobs, task_manifest

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

FILES = 4


def event_named(name: str) -> EventTrigger:
    def trigger(event: dict[str, Any]) -> bool:
        return bool(event["event"] == name)

    return trigger


async def wait_for_job_state(batch: BatchEndpoint, job_id: str, wanted: str) -> None:
    """Poll the job through the Batch API until it is in `wanted` (bounded, never a timed assertion)."""
    credential = AzureNamedKeyCredential(batch.account_name, batch.account_key)
    async with BatchClient(batch.endpoint, credential) as client:
        with anyio.fail_after(60):
            while True:
                job = await client.get_job(job_id)
                if str(getattr(job.state, "value", job.state)) == wanted:
                    return
                await anyio.sleep(0.2)


async def test_an_unknown_run_is_refused_naming_the_journal_and_nothing_is_created(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    env = crash_environment(batch_emulator, azurite, tmp_path)
    done, _ = await run_until(["resume", "20990101t000000z-abcdef"], tmp_path, env, None)
    assert done.exit_code == 2
    journal_file = tmp_path / ".topn" / "journal.sqlite3"
    assert f"no run 20990101t000000z-abcdef in {journal_file}" in done.stderr
    assert not journal_file.exists()
    status, _ = await run_until(["status", "20990101t000000z-abcdef"], tmp_path, env, None)
    assert status.exit_code == 2 and str(journal_file) in status.stderr


async def test_a_job_that_finished_while_topn_was_down_is_collected_and_its_lasting_sas_are_kept(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    texts = write_corpus(tmp_path / "in", FILES, seed=31)
    env = crash_environment(batch_emulator, azurite, tmp_path)

    def first_output(event: dict[str, object]) -> bool:
        return event["event"] == "output.downloaded"

    first, killed = await run_until(["run", "in", "--out", "out", "--json"], tmp_path, env, first_output)
    assert killed and first.exit_code == -9
    run_id = run_id_in(first)
    before = await load_record(tmp_path / ".topn", run_id)
    assert before.state == "RUNNING"
    # Every task ends while nothing watches: the job completes on its own (terminatejob).
    await wait_for_job_state(batch_emulator, f"topn-{run_id}", "completed")

    status, _ = await run_until(["status", run_id, "--json"], tmp_path, env, None)
    assert status.exit_code == 0, status.stderr[-2000:]
    described = json.loads(status.stdout)
    assert described["run_id"] == run_id and described["state"] == "RUNNING" and not described["finished"]
    assert described["files"] == FILES and described["job"]["exists"] is True
    assert described["job"]["state"] == "completed"
    assert described["job"]["tasks"]["completed"] == described["job"]["tasks"]["succeeded"] == FILES

    second, _ = await run_until(["resume", run_id, "--json"], tmp_path, env, None)
    assert second.exit_code == 0, second.stderr[-3000:]
    assert check_summary(second.summary(), texts) == []
    await assert_one_task_per_input(batch_emulator, run_id, sorted(texts))
    after = await load_record(tmp_path / ".topn", run_id)
    assert after.state == "SUCCEEDED"
    # The tasks submitted before the crash carry SAS that outlive the resumed run's deadline: nothing
    # about them is asked or changed, and the journal keeps the expiry of the SAS they carry.
    assert after.sas_expiries == before.sas_expiries != {}
    assert not [event for event in second.events() if event["event"] == "tasks.resubmitted"]

    # A finished run's resume only shows its summary again, with the same exit status.
    again, _ = await run_until(["resume", run_id, "--json"], tmp_path, env, None)
    assert again.exit_code == 0
    assert again.summary() == second.summary()
    assert not [event for event in again.events() if event["event"].startswith("run.")]

    listing, _ = await run_until(["status", "--json"], tmp_path, env, None)
    runs = json.loads(listing.stdout)
    assert [run["run_id"] for run in runs] == [run_id] and runs[0]["state"] == "SUCCEEDED"
    table, _ = await run_until(["status"], tmp_path, env, None)
    assert table.exit_code == 0 and run_id in table.stdout and "SUCCEEDED" in table.stdout


async def test_a_failed_file_survives_a_crash_and_the_resumed_summary_equals_the_uninterrupted_one(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus", FILES, seed=41)
    failing = "part1/text 0001.txt"
    assert failing in corpus
    # One file per task (crash_environment), in sorted order: the emulator fails the task whose
    # command line names that file's unit manifest.
    failing_task = naming.task_id(sorted(corpus).index(failing))
    batch = await start_emulator(
        [
            "--fault-task-fail-match",
            naming.unit_manifest_file(failing_task),
            "--fault-task-fail-exit-code",
            "7",
        ]
    )
    summaries = []
    for name, trigger in (("whole", None), ("crashed", "task.failed")):
        root = tmp_path / name
        shutil.copytree(tmp_path / "corpus", root / "in")
        env = crash_environment(batch, azurite, root, TOPN_RUN_TASK_MAX_RETRIES="0")
        first, killed = await run_until(
            ["run", "in", "--out", "out", "--json"],
            root,
            env,
            event_named(trigger) if trigger else None,
        )
        if trigger is None:
            assert first.exit_code == 1, first.stderr[-3000:]
            summaries.append(first.summary())
            continue
        assert killed and first.exit_code == -9
        run_id = run_id_in(first)
        record = await load_record(root / ".topn", run_id)
        assert record.state == "RUNNING" and failing in failed_relpaths(record)
        second, _ = await run_until(["resume", run_id, "--json"], root, env, None)
        assert second.exit_code == 1, second.stderr[-3000:]
        # Known already: the failure is rebuilt from the journal, not reported a second time.
        assert not [event for event in second.events() if event["event"] == "task.failed"]
        summaries.append(second.summary())
    whole, resumed = summaries
    assert resumed["state"] == "FAILED"
    failed = [entry for entry in resumed["files"] if entry["status"] == "failed"]
    assert [entry["path"] for entry in failed] == [failing]
    assert (
        failed[0]["error"]["exit_code"] == 7 and "injected task failure" in failed[0]["error"]["stderr_tail"]
    )
    assert comparable(resumed) == comparable(whole)


async def test_a_batch_endpoint_that_died_leaves_a_resumable_run_that_a_new_account_finishes(
    tmp_path: Path, azurite: StorageEndpoint
) -> None:
    """The emulator dies mid-run (its jobs die with it): run.failed says resumable, nothing is cleaned
    up; `topn resume` against a fresh emulator re-adds exactly the tasks that had not finished."""
    texts = write_corpus(tmp_path / "in", 2 * FILES, seed=43)
    first_service = await local.start_emulator(tmp_path / "nodes1", tmp_path / "logs1")
    dead = emulator_endpoint(first_service, tmp_path / "nodes1", tmp_path / "logs1")
    # One slot runs the tasks one after another and a short poll sees them finish one or two at a
    # time, so tasks are still unfinished at the first download (with 2 slots and the poll's backoff
    # all 4 once finished before the first poll that saw any, and the kill came after the work).
    overrides = {
        "TOPN_RETRY_DEADLINE_S": "3",
        "TOPN_RETRY_MAX_ATTEMPTS": "1000",
        "TOPN_POOL_ID": "gone-pool",
        "TOPN_POOL_TASK_SLOTS_PER_NODE": "1",
        "TOPN_RUN_POLL_MAX_S": "0.5",
    }
    env = crash_environment(dead, azurite, tmp_path, **overrides)

    killed: list[bool] = []

    def first_output(event: dict[str, Any]) -> None:
        if event["event"] == "output.downloaded" and not killed:
            os.killpg(first_service.pid, signal.SIGKILL)  # the emulator and its task processes
            killed.append(True)

    try:
        first, _ = await run_until(
            ["run", "in", "--out", "out", "--json"], tmp_path, env, None, on_event=first_output
        )
    finally:
        await local.stop_service(first_service)
    assert killed and first.exit_code == 1, first.stderr[-3000:]
    failed = [event for event in first.events() if event["event"] == "run.failed"]
    assert len(failed) == 1 and failed[0]["resumable"] is True
    run_id = run_id_in(first)
    assert f"topn resume {run_id}" in failed[0]["error"]
    record = await load_record(tmp_path / ".topn", run_id)
    assert record.state == "RUNNING" and not record.is_finished and record.completed
    unfinished = {item.relpath for item in record.inputs if item.task_id not in record.completed}

    second_service = await local.start_emulator(tmp_path / "nodes2", tmp_path / "logs2")
    try:
        fresh = emulator_endpoint(second_service, tmp_path / "nodes2", tmp_path / "logs2")
        env = crash_environment(fresh, azurite, tmp_path, **overrides)
        second, _ = await run_until(["resume", run_id, "--json"], tmp_path, env, None)
        assert second.exit_code == 0, second.stderr[-3000:]
        assert check_summary(second.summary(), texts) == []
        # The new account holds one task per input that had not finished, and nothing else.
        await assert_one_task_per_input(fresh, run_id, sorted(unfinished))
    finally:
        await local.stop_service(second_service)


def emulator_endpoint(service: local.ServiceProcess, nodes: Path, logs: Path) -> BatchEndpoint:
    return BatchEndpoint(
        service.endpoint, local.EMULATOR_ACCOUNT_NAME, local.EMULATOR_ACCOUNT_KEY, nodes, logs, service.pid
    )


async def test_an_input_changed_before_its_task_was_submitted_is_uploaded_again(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    texts = write_corpus(tmp_path / "in", FILES, seed=47)
    env = crash_environment(batch_emulator, azurite, tmp_path)

    def input_upload(event: dict[str, Any]) -> bool:
        return event["event"] == "blob.uploaded" and str(event["blob"]).startswith("runs/")

    # The third upload's event: by then the first upload is journalled (recorded right after its event).
    first, killed = await run_until(
        ["run", "in", "--out", "out", "--json", "--log-level", "debug"],
        tmp_path,
        env,
        count_after(3, input_upload),
    )
    assert killed and first.exit_code == -9
    run_id = run_id_in(first)
    record = await load_record(tmp_path / ".topn", run_id)
    assert record.state == "PREPARING" and record.uploads and not record.submitted_task_ids
    changed = sorted(record.uploads)[0]
    texts[changed] = "changed changed changed words words after the upload\n"
    (tmp_path / "in" / changed).write_text(texts[changed], encoding="utf-8")

    second, _ = await run_until(["resume", run_id, "--json", "--log-level", "debug"], tmp_path, env, None)
    assert second.exit_code == 0, second.stderr[-3000:]
    summary = second.summary()
    assert check_summary(summary, texts) == []  # the reference counts the new text
    assert summary["totals"]["bytes"] == sum(len(text.encode()) for text in texts.values())
    uploads = [event for event in second.events() if event["event"] == "blob.uploaded"]
    assert [event["skipped"] for event in uploads if event["blob"] == f"runs/{run_id}/{changed}"] == [False]
    # The unchanged inputs the journal had as uploaded were not sent again.
    again = {event["blob"] for event in uploads}
    assert not [
        relpath for relpath in record.uploads if relpath != changed and f"runs/{run_id}/{relpath}" in again
    ]


async def test_a_run_stopped_while_cleaning_up_finishes_clean_up_and_keeps_its_summary(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    """Journal at CLEANING, summary.json written (as the pipeline does before CLEANING): resume
    contacts no stage again, redoes the clean-up and records the summary's final state."""
    run_id = "20261122t000000z-c1ea11"
    (tmp_path / "in").mkdir()
    source = tmp_path / "in" / "a.txt"
    source.write_text("alpha beta beta\n", encoding="utf-8")
    out = tmp_path / "out"
    claim_results_folder(out, run_id)
    summary = {
        "run_id": run_id,
        "state": "FAILED",
        "top": [["beta", 2]],
        "files": [],
        "totals": {"files": 1, "succeeded": 0, "failed": 1},
    }
    write_summary(out, summary)
    item = JournalInput(
        0, "a.txt", str(source), 16, source.stat().st_mtime_ns, None, f"runs/{run_id}/a.txt", "t000000"
    )
    async with await Journal.open(tmp_path / ".topn" / "journal.sqlite3") as journal:
        await journal.create_run(run_id, {}, [item], out_dir=out)
        for state in ("PREPARING", "SUBMITTING", "RUNNING", "COLLECTING", "CLEANING"):
            await journal.record_state(run_id, state)
    env = crash_environment(batch_emulator, azurite, tmp_path)
    resumed, _ = await run_until(["resume", run_id, "--json"], tmp_path, env, None)
    assert resumed.exit_code == 1, resumed.stderr[-2000:]  # the summary's FAILED: some file failed
    assert resumed.stdout, resumed.stderr[-2000:]
    assert resumed.summary() == summary
    names = [event["event"] for event in resumed.events()]
    assert "blob.uploaded" not in names and "tasks.submitted" not in names and "pool.ready" not in names
    record = await load_record(tmp_path / ".topn", run_id)
    assert record.state == "FAILED" and record.is_finished


async def test_unstarted_tasks_whose_sas_expired_are_re_added_with_fresh_sas_on_resume(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    """Tasks submitted, then held back (the pool's only slot is busy) until their SAS expired: resume
    re-issues them with fresh SAS under their next generation's ids, added before the old ones are
    deleted (the job keeps `terminatejob`, which the emulator, like the service, never lets go back to
    `noaction`), and the run succeeds. The job's wall clock (10 s, like the SAS) must outlast the wait
    for this to happen in the same job: this emulator runs job wall clocks 100 times slower (when the
    job ends instead, the resume goes on in a successor job: test_resume_successor.py)."""
    batch_emulator = await start_emulator(["--time-scale", "100"])
    async with held_back_run(batch_emulator, azurite, tmp_path, seed=53) as held:
        texts, run_id, before = held.texts, held.run_id, held.before
        resume_started = datetime.now(UTC)
        normal = crash_environment(batch_emulator, azurite, tmp_path, TOPN_POOL_ID=held.pool_id)
        second, _ = await run_until(
            ["resume", run_id, "--json"], tmp_path, normal, None, on_event=held.release_once_submitted
        )
    credential = AzureNamedKeyCredential(batch_emulator.account_name, batch_emulator.account_key)
    assert second.exit_code == 0, second.stderr[-3000:]
    assert check_summary(second.summary(), texts) == []
    renewed = [event for event in second.events() if event["event"] == "tasks.resubmitted"]
    assert [
        (event["tasks"], event["missing"], event["running_kept"], event["reason"]) for event in renewed
    ] == [(FILES, 0, 0, "sas_expiring")]
    tasks = await job_tasks(
        batch_emulator.endpoint, batch_emulator.account_name, batch_emulator.account_key, f"topn-{run_id}"
    )
    # Exactly one task per work unit (one file each here), under its second generation's id, each run
    # once; the old ones are gone, and the journal maps every unit to the generation in the job.
    assert sorted(task.id for task in tasks) == sorted(f"{task_id}-g1" for task_id in before.task_ids)
    assert {task.state for task in tasks} == {"completed"}
    assert {task.execution_info.result for task in tasks} == {"success"}
    assert [task.execution_info.retry_count for task in tasks] == [0] * FILES
    staged_inputs = sorted([blob for task in tasks for blob in await task_input_blobs(task)])
    assert len(staged_inputs) == len(set(staged_inputs)) == FILES
    for task in tasks:
        urls = [resource.http_url for resource in task.resource_files]
        urls += [setting.value for setting in task.environment_settings if "sig=" in setting.value]
        urls += (await task_manifest(task))["sources"]  # the inputs' read SAS
        assert len(urls) >= 3  # the manifest, its inputs' container and the output container
        assert all(sas_expiry_of(url) > resume_started for url in urls), task.id
    async with BatchClient(batch_emulator.endpoint, credential) as client:
        job = await client.get_job(f"topn-{run_id}")
    # The job was created with the first run's 10 s wall clock; the resume made it last to its deadline.
    assert job.constraints is not None and job.constraints.max_wall_clock_time is not None
    assert job.creation_time + job.constraints.max_wall_clock_time > resume_started + timedelta(seconds=1700)
    after = await load_record(tmp_path / ".topn", run_id)
    assert after.state == "SUCCEEDED"
    assert dict(after.task_generations) == dict.fromkeys(before.task_ids, 1)
    assert set(after.sas_expiries) == set(before.sas_expiries)
    assert all(expiry > resume_started for expiry in after.sas_expiries.values())
    # Added before deleted, in the emulator's own request log: every task the resume added (its
    # requests on the job from when the resume started) was in the job before the first old task was
    # deleted, so a deleted task that lingers on the service can never stand in for its replacement.
    log_lines = (batch_emulator.log_dir / "emulator.stderr.log").read_text(encoding="utf-8").splitlines()
    served = [
        event
        for event in map(json.loads, filter(lambda line: line.startswith("{"), log_lines))
        if event.get("event") == "request.completed" and event.get("status", 500) < 300
    ]
    job_path = f"/jobs/topn-{run_id}"
    resumed_adds = [
        index
        for index, event in enumerate(served)
        if event["operation"] in ("create_task_collection", "create_task")
        and event["path"].startswith(f"{job_path}/")
        and datetime.fromisoformat(event["timestamp"]) >= resume_started
    ]
    deletes = [
        (event["path"].removeprefix(f"{job_path}/tasks/"), index)
        for index, event in enumerate(served)
        if event["operation"] == "delete_task" and event["path"].startswith(f"{job_path}/tasks/")
    ]
    assert resumed_adds, "the resume added no task"
    assert sorted(task_id for task_id, _ in deletes) == sorted(before.task_ids)  # each old one, once
    assert max(resumed_adds) < min(index for _, index in deletes), (resumed_adds, deletes)
