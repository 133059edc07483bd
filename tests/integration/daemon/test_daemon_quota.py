"""The active-jobs quota (issue 12 point 5): 2 active jobs allowed, 5 batches waiting.

409 `ActiveJobAndScheduleQuotaReached` keeps a batch queued (retried with backoff, counted), never
failed; every file ends in done/ and Batch never holds more than 2 active jobs.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from tests.conftest import StartEmulator, StorageEndpoint
from tests.integration.daemon.support import (
    daemon_settings_for,
    files_under,
    folders_under,
    get_json,
    running_daemon,
    wait_async,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

FILES = 5


async def test_a_quota_of_two_active_jobs_queues_batches_and_finishes_them_all(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator(["--max-active-jobs", "2"])
    settings = daemon_settings_for(
        batch,
        azurite,
        tmp_path / "state",
        "quota-pool",
        TOPN_DAEMON_BATCH_MAX_FILES="1",  # one batch (one job) per file
        TOPN_DAEMON_QUOTA_BACKOFF_MAX_S="0.5",
    )
    folders = folders_under(tmp_path)
    most_active = 0
    credential = AzureNamedKeyCredential(batch.account_name, batch.account_key)
    async with (
        BatchClient(batch.endpoint, credential) as observer,
        running_daemon(settings, folders) as daemon,
    ):
        for index in range(FILES):
            await anyio.Path(folders.inbox / f"q{index}.txt").write_text(f"quota{index} q", encoding="utf-8")

        async def finished() -> bool:
            nonlocal most_active
            active = [job async for job in observer.list_jobs() if job.state in ("active", "terminating")]
            most_active = max(most_active, len(active))
            done = await anyio.to_thread.run_sync(files_under, folders.done)
            return len(done) == FILES

        await wait_async(finished, "every file done under the quota", 120)
        assert daemon.state.listen_url is not None
        metrics_url = f"{daemon.state.listen_url}/metrics"

        async def all_batches_counted() -> str | None:
            # A batch's files reach done/ just before the batch is counted as ended.
            status, metrics = await get_json(metrics_url)
            assert status == 200
            lines = metrics.splitlines()
            ended = sum(float(line.split()[-1]) for line in lines if line.startswith("topn_batches_total{"))
            return metrics if ended >= FILES else None

        metrics = await wait_async(all_batches_counted, "every batch counted as ended", 30)
        refusals = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("topn_quota_refusals_total")
        )
        assert refusals >= 1  # the quota was met, and waited out
        assert 'topn_batches_total{outcome="succeeded"} 5.0' in metrics
        assert 'topn_batches_total{outcome="failed"} 0.0' in metrics
    assert 1 <= most_active <= 2
    assert await anyio.to_thread.run_sync(files_under, folders.failed) == {}
