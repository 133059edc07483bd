"""Two runs at once in one process, on one kept pool: the pool keeper acts once, each run counts its own.

Real Azurite and the real emulator; the emulator's own request log (one `request.completed` event per
request, on its stderr) is the independent record the runs' request counts are checked against.
"""

from __future__ import annotations

import json
from collections import Counter
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from azure.batch.models import BatchJobCreateOptions, BatchPoolInfo
from azure.batch.models._models import BatchJobTerminateOptions  # not exported (SDK quirk)
from structlog.testing import capture_logs

from orchestrator import naming
from orchestrator.azure import pool
from orchestrator.azure.clients import open_clients
from orchestrator.errors import RunFailedError
from orchestrator.inputs import discover_inputs
from orchestrator.run.pipeline import run_pipeline
from orchestrator.service.poolkeeper import PoolKeeper
from tests.conftest import BatchEndpoint, StartEmulator, StorageEndpoint
from tests.integration.orchestrator.test_kept_pool_start_task import (
    FAST,
    kept_pool_settings,
    read_url,
    stage_script,
)
from tests.integration.orchestrator.test_pipeline_run import stand_in_node, words_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Batch operations a run makes on its own job (their paths name the job).
JOB_PATH_OPERATIONS = (
    "create_task_collection",
    "get_job_task_counts",
    "list_tasks",
    "update_job",
    "get_job",
)


def emulator_requests(batch: BatchEndpoint) -> list[dict[str, Any]]:
    """Every request the emulator served, from its own log."""
    lines = (batch.log_dir / "emulator.stderr.log").read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    return [event for event in events if event.get("event") == "request.completed"]


def write_texts(folder: Path, texts: dict[str, str]) -> None:
    folder.mkdir(parents=True)
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")


async def test_two_runs_at_once_share_one_pool_renewal_and_each_counts_only_its_own_requests(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    settings = kept_pool_settings(batch, azurite, tmp_path / "state", "shared-pool")
    script = stand_in_node()
    texts = {
        "one": {f"a{number}.txt": f"apple banana apple run{number}" for number in range(3)},
        "two": {f"b{number}.txt": f"cherry cherry date run{number}" for number in range(4)},
    }
    for name, files in texts.items():
        write_texts(tmp_path / name, files)
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        # An earlier process's pool whose start task SAS has already ended: it must be renewed, once.
        container, blob_name = await stage_script(clients, settings, script)
        expired = read_url(azurite, container, blob_name, timedelta(seconds=-1))
        assert await pool.ensure_pool(
            clients.batch, settings.pool, expired, naming.start_task_command_line(), FAST
        )
        keeper = PoolKeeper(settings, clients, script)
        summaries: dict[str, dict[str, Any]] = {}

        async def run(name: str) -> None:
            summaries[name] = await run_pipeline(
                settings, discover_inputs([tmp_path / name]), clients, tmp_path / f"out-{name}", pool=keeper
            )

        with capture_logs() as logs:
            async with anyio.create_task_group() as group:
                for name in texts:
                    group.start_soon(run, name)

    served = emulator_requests(batch)
    operations = [event["operation"] for event in served]
    assert operations.count("update_pool") == 1
    # POST /jobs names no job in its path: the two runs' counts add up to what the emulator served.
    assert sum(summary["totals"]["requests"]["batch"]["create_job"] for summary in summaries.values()) == (
        operations.count("create_job")
    )
    for name, files in texts.items():
        summary = summaries[name]
        assert summary["state"] == "SUCCEEDED"
        expected = Counter(word for text in files.values() for word in words_of(text))
        assert summary["top"] == [list(pair) for pair in expected.most_common(10)]
        job_path = f"/jobs/{naming.job_id(summary['run_id'])}"
        on_its_job = Counter(
            event["operation"]
            for event in served
            if event["path"] == job_path or event["path"].startswith(job_path + "/")
        )
        counted = summary["totals"]["requests"]["batch"]
        for operation in JOB_PATH_OPERATIONS:
            assert counted.get(operation, 0) == on_its_job.get(operation, 0), (name, operation)
        # run.completed comes after clean-up (summary.json before it): every request the run made
        # is on its job's path, but for its POST /jobs.
        # (captured events carry no bound run id: the runs differ by their number of files)
        (completed,) = [
            entry
            for entry in logs
            if entry["event"] == "run.completed" and entry["files_succeeded"] == len(files)
        ]
        assert completed["batch_requests"] == sum(on_its_job.values()) + 1
        # The pool is the keeper's: no run counts a pool request as its own.
        assert not {"create_pool", "update_pool", "list_nodes", "get_pool"} & set(counted)
        # Storage: one upload per input of this run and one manifest per task, none of the other's;
        # one result blob read per task.
        tasks = len({entry["task_id"] for entry in summary["files"]})
        storage = summary["totals"]["requests"]["storage"]
        assert storage["upload_blob"] == len(files) + tasks
        assert storage["download_blob"] == tasks


async def test_a_run_that_fails_never_deletes_the_pool_another_run_uses(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    settings = kept_pool_settings(batch, azurite, tmp_path / "state", "shared-failing")
    write_texts(tmp_path / "good", {"g.txt": "good good run"})
    write_texts(tmp_path / "bad", {"x.txt": "never counted"})
    doomed_run = naming.new_run_id()
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        # The doomed run's job already ended: adding its tasks fails (409 JobCompleted), not resumable.
        await clients.batch.create_job(
            BatchJobCreateOptions(
                id=naming.job_id(doomed_run), pool_info=BatchPoolInfo(pool_id="shared-failing")
            )
        )
        poller = await clients.batch.begin_terminate_job(
            naming.job_id(doomed_run),
            BatchJobTerminateOptions(termination_reason="test"),
            polling_interval=0.1,
        )
        await poller.result()
        keeper = PoolKeeper(settings, clients, stand_in_node())
        outcome: dict[str, Any] = {}

        async def doomed() -> None:
            with pytest.raises(RunFailedError) as failed:
                await run_pipeline(
                    settings,
                    discover_inputs([tmp_path / "bad"]),
                    clients,
                    tmp_path / "out-bad",
                    pool=keeper,
                    run_id=doomed_run,
                )
            outcome["failed"] = str(failed.value)

        async def good() -> None:
            outcome["good"] = await run_pipeline(
                settings, discover_inputs([tmp_path / "good"]), clients, tmp_path / "out-good", pool=keeper
            )

        async with anyio.create_task_group() as group:
            group.start_soon(doomed)
            group.start_soon(good)
        assert outcome["good"]["state"] == "SUCCEEDED"
        assert outcome["good"]["top"] == [["good", 2], ["run", 1]]
        kept = await clients.batch.get_pool("shared-failing")
        assert str(kept.state) in {"active", "PoolState.ACTIVE", "BatchPoolState.ACTIVE"}
    assert "delete_pool" not in [event["operation"] for event in emulator_requests(batch)]
