"""What the daemon leaves in Batch: done jobs for `job_retention_s`, the pool until `topn pool delete`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceNotFoundError

from tests.conftest import StartEmulator, StorageEndpoint
from tests.e2e.run_cli import run_topn, topn_environment
from tests.integration.daemon.support import (
    daemon_settings_for,
    files_under,
    folders_under,
    running_daemon,
    wait_async,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_completed_jobs_go_after_their_retention_and_the_pool_only_by_pool_delete(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    settings = daemon_settings_for(
        batch, azurite, tmp_path / "state", "kept-by-daemon", TOPN_DAEMON_JOB_RETENTION_S="7200"
    )
    folders = folders_under(tmp_path)
    credential = AzureNamedKeyCredential(batch.account_name, batch.account_key)
    async with BatchClient(batch.endpoint, credential) as client:

        async def job_ids() -> list[str]:
            return [str(job.id) async for job in client.list_jobs() if job.state != "deleting"]

        async with running_daemon(settings, folders):
            await anyio.Path(folders.inbox / "one.txt").write_text("one job", encoding="utf-8")

            async def done() -> bool:
                return len(await anyio.to_thread.run_sync(files_under, folders.done)) == 1

            await wait_async(done, "the file to be done", 60)
        assert len(await job_ids()) == 1  # kept after its run, for job_retention_s (2 h here)
        # Its tasks' folders are kept as long on the nodes (retentionTime, as the emulator stored it).
        tasks = [task async for task in client.list_tasks((await job_ids())[0])]
        assert [task.constraints.retention_time for task in tasks] == [timedelta(hours=2)]

        # The next start's janitor deletes it once its retention is over (0 s here).
        expired = daemon_settings_for(
            batch, azurite, tmp_path / "state", "kept-by-daemon", TOPN_DAEMON_JOB_RETENTION_S="0"
        )
        async with running_daemon(expired, folders):
            pass

        async def no_jobs() -> bool:
            return await job_ids() == []

        await wait_async(no_jobs, "the completed job to be deleted", 30)
        assert (await client.get_pool("kept-by-daemon")).id == "kept-by-daemon"  # the pool stays

        env = topn_environment(batch, azurite, tmp_path / "state", TOPN_POOL_ID="kept-by-daemon")
        result = await anyio.to_thread.run_sync(run_topn, ["pool", "delete"], tmp_path, env)
        assert result.exit_code == 0, result.stderr
        assert "deleting pool kept-by-daemon" in result.stdout

        async def gone() -> bool:
            try:
                await client.get_pool("kept-by-daemon")
            except ResourceNotFoundError:
                return True
            return False

        await wait_async(gone, "the pool to be deleted", 30)
