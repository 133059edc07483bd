"""Count lag never fails a good run (issue 14, point 5): the emulator serves job task counts as they
were seconds ago, as the service's counts may lag, and `topn run` still succeeds with exact results."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure.batch import models
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from tests.conftest import StartEmulator, StorageEndpoint
from tests.e2e.fault_support import check_summary, run_topn_live, write_corpus
from tests.e2e.run_cli import topn_environment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(240)]

LAG_S = 3.0
FILES = 6


async def test_a_run_succeeds_with_exact_results_while_task_counts_lag(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator(["--task-counts-lag-s", str(LAG_S)])
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
    assert check_summary(run.summary(), texts) == []
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
