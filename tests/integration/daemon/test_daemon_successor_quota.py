"""A daemon batch whose job ended under it goes on in a successor job, waiting out the job quota.

The emulator allows 2 active jobs; the batch's tasks wait in a pool whose only slot another job
holds. The test terminates the batch's job (as a user would) and fills the quota with a third job:
the daemon's run stops (`JobEndedError`, resumable), the batch is tried again through the resume
path, and creating its successor meets 409 `ActiveJobAndScheduleQuotaReached`. That is a wait
(counted in `topn_quota_refusals_total`), never a failure: once the quota frees, every file ends in
done/ with its result. Before the fix the batch failed and its files went to failed/.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.conftest import StartEmulator, StorageEndpoint
from tests.held_slot import held_slot
from tests.integration.daemon.support import (
    daemon_settings_for,
    files_under,
    folders_under,
    get_json,
    running_daemon,
    wait_async,
    wait_for,
)

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(240)]

TEXTS = {"heron.txt": "heron egret heron", "stork.txt": "stork stork heron"}


def quota_refusals(metrics: str) -> float:
    lines = metrics.splitlines()
    return next(float(line.split()[-1]) for line in lines if line.startswith("topn_quota_refusals_total"))


async def test_a_batch_whose_job_ended_waits_out_the_job_quota_for_its_successor(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator(["--max-active-jobs", "2"])
    folders = folders_under(tmp_path)
    async with held_slot(batch, tmp_path) as held:
        settings = daemon_settings_for(
            batch,
            azurite,
            tmp_path / "state",
            held.pool_id,
            TOPN_DAEMON_QUOTA_BACKOFF_MAX_S="0.5",
            TOPN_RUN_POLL_MAX_S="0.5",
            TOPN_DAEMON_BATCH_MAX_WAIT_S="3",  # both files in one batch, one job
        )
        async with running_daemon(settings, folders) as daemon:
            for name, text in TEXTS.items():
                await anyio.Path(folders.inbox / name).write_text(text, encoding="utf-8")
            batch_id = await wait_for(
                lambda: next(iter(daemon.state.in_flight), None), "the batch to start", 60
            )
            first_job = f"topn-{batch_id}"

            async def tasks_in_first_job() -> bool:
                if first_job not in await held.job_ids(first_job):
                    return False
                return len([task async for task in held.client.list_tasks(first_job)]) == len(TEXTS)

            await wait_async(tasks_in_first_job, "the batch's tasks in its job", 60)
            assert daemon.state.listen_url is not None
            metrics_url = f"{daemon.state.listen_url}/metrics"
            _, metrics = await get_json(metrics_url)
            assert quota_refusals(metrics) == 0  # admitted at once: blocker + this job fit

            await held.terminate_and_wait(first_job)
            filler = await held.fill_job()

            async def refused_again() -> bool:
                _, metrics = await get_json(metrics_url)
                return quota_refusals(metrics) >= 2  # the successor waits, and waits again

            await wait_async(refused_again, "the successor's job to meet the quota", 90)
            assert await anyio.to_thread.run_sync(files_under, folders.failed) == {}
            await held.client.begin_delete_job(filler)
            await anyio.Path(held.release).touch()

            async def settled() -> bool:
                done = await anyio.to_thread.run_sync(files_under, folders.done)
                failed = await anyio.to_thread.run_sync(files_under, folders.failed)
                return len(done) + len(failed) >= len(TEXTS)

            await wait_async(settled, "every file done or failed", 90)
            assert await anyio.to_thread.run_sync(files_under, folders.failed) == {}
            assert await anyio.to_thread.run_sync(files_under, folders.done) == TEXTS
            assert await held.job_ids(first_job) == [first_job, f"{first_job}-j2"]
        outputs = await anyio.to_thread.run_sync(files_under, folders.outbox / batch_id)
    assert sorted(name for name in outputs if name.endswith("_OUTPUT.txt")) == [
        "heron_OUTPUT.txt",
        "stork_OUTPUT.txt",
    ]
    assert "heron:\t2" in outputs["heron_OUTPUT.txt"]
