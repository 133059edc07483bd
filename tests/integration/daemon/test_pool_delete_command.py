"""`topn pool delete`: the explicit way to remove the kept pool the daemon never deletes."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceNotFoundError

from tests.conftest import StartEmulator, StorageEndpoint
from tests.e2e.run_cli import run_topn, topn_environment
from tests.integration.daemon.support import daemon_settings_for, folders_under, running_daemon, wait_async

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_the_daemon_keeps_its_pool_and_pool_delete_removes_it(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    settings = daemon_settings_for(batch, azurite, tmp_path / "state", "kept-by-daemon")
    async with running_daemon(settings, folders_under(tmp_path)):
        pass
    credential = AzureNamedKeyCredential(batch.account_name, batch.account_key)
    async with BatchClient(batch.endpoint, credential) as client:
        assert (await client.get_pool("kept-by-daemon")).id == "kept-by-daemon"  # still there after exit
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
