"""Count lag never fails a good run (issue 14, point 5): the emulator serves job task counts as they
were long ago, as the service's counts may lag, and `topn run` still succeeds with exact results.

The lag outlasts the run, so every counts answer the run gets is the first one, taken before its
tasks finished: the run can only learn that its last tasks finished from the job having ended,
confirmed by a listing of its completed tasks. The test shows that this is the path taken (stale
counts in the run's own progress events; the job's state read after the job ended, then its tasks
listed, in the emulator's request log), so it fails against a monitor that trusts the counts: one
that fails a run whose job ended while counts still show unfinished tasks, or one that waits for
the counts to catch up (the run would then last the whole lag and report every task completed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from tests.conftest import BatchEndpoint, StartEmulator, StorageEndpoint
from tests.e2e.fault_support import check_summary, run_topn_live, write_corpus
from tests.e2e.run_cli import topn_environment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(240)]

LAG_S = 90.0  # longer than the run: the counts never catch up while it watches
FILES = 4


def emulator_events(batch: BatchEndpoint) -> list[dict[str, Any]]:
    """Everything the emulator logged, in order: served requests and state changes."""
    lines = (batch.log_dir / "emulator.stderr.log").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def first_index(events: list[dict[str, Any]], start: int, **fields: str) -> int | None:
    """Where the first event from `start` on with all of `fields` is, or None."""
    for index in range(start, len(events)):
        if all(events[index].get(name) == value for name, value in fields.items()):
            return index
    return None


async def test_a_run_succeeds_with_exact_results_while_task_counts_lag(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    # Two task processes at a time over all nodes: the tasks finish in two rounds, seconds after the
    # run's first counts request (made as soon as they are submitted), so that first and only answer
    # shows them unfinished.
    batch = await start_emulator(["--task-counts-lag-s", str(LAG_S), "--nodes-max-processes", "2"])
    texts = write_corpus(tmp_path / "in", FILES, seed=14)
    env = topn_environment(
        batch,
        azurite,
        tmp_path / ".topn",
        TOPN_POOL_ID="count-lag",
        TOPN_STORAGE_CONTAINER_PREFIX="countlag",
        TOPN_RUN_MAX_FILES_PER_TASK="1",
    )
    run = await run_topn_live(["run", "in", "--out", "out", "--json"], tmp_path, env)
    assert run.exit_code == 0, run.stderr[-3000:]
    summary = run.summary()
    assert check_summary(summary, texts) == []
    job_id = summary["totals"]["job_id"]

    # Stale counts were served: the run saw every task complete, but never in the counts.
    progress = [event for event in run.events() if event["event"] == "tasks.progress"]
    assert progress, run.stderr[-3000:]
    assert max(event["completed"] for event in progress) < FILES, progress
    # The monitor confirmed from the job and a listing: after the job ended (its last task done), it
    # read the job's state, then listed the job's tasks (a fresh run lists them only to find completed
    # ones, `state eq 'completed'`), and nothing else told it the last tasks were done.
    events = emulator_events(batch)
    ended = first_index(events, 0, event="job.terminated", job_id=job_id)
    assert ended is not None, "the job never ended on its own (terminatejob)"
    assert events[ended]["terminate_reason"] == "AllTasksComplete"
    state_read = first_index(
        events, ended, event="request.completed", operation="get_job", path=f"/jobs/{job_id}"
    )
    assert state_read is not None, "the job's state was never read after it ended"
    listed = first_index(
        events, state_read, event="request.completed", operation="list_tasks", path=f"/jobs/{job_id}/tasks"
    )
    assert listed is not None, "the job's tasks were not listed after its end was seen"
    assert events[listed]["status"] == 200
    assert summary["totals"]["requests"]["batch"]["list_tasks"] >= 1

    # The flag was in force: on a fresh job, a task added right after the first counts poll is not in
    # the next poll's counts (the first answer stands for the lag), though the task is there.
    credential = AzureNamedKeyCredential(batch.account_name, batch.account_key)
    async with BatchClient(batch.endpoint, credential) as client:
        await client.create_job(
            models.BatchJobCreateOptions(id="lag-probe", pool_info=models.BatchPoolInfo(pool_id="count-lag"))
        )
        first = await client.get_job_task_counts("lag-probe")
        await client.create_task("lag-probe", models.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
        second = await client.get_job_task_counts("lag-probe")
        assert (await client.get_task("lag-probe", "t")).id == "t"
    total = first.task_counts.active + first.task_counts.running + first.task_counts.completed
    assert total == 0
    assert second.task_counts.as_dict() == first.task_counts.as_dict()
