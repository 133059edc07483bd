"""The daemon's kept, autoscaled pool against the emulator's autoscale at 100x speed (--time-scale 0.01).

From zero nodes, files arriving make tasks pending and the formula grows the pool; when the work is
done it goes back to zero, with `taskcompletion` (no running task killed on the way down). A user
formula that does not evaluate stops the start with its error shown.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from orchestrator.errors import ConfigError, first_leaf
from tests.conftest import StartEmulator, StorageEndpoint
from tests.integration.daemon.support import (
    daemon_settings_for,
    files_under,
    folders_under,
    running_daemon,
    wait_async,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

FILES = 6
AUTOSCALE = {
    "TOPN_DAEMON_AUTOSCALE": "true",
    "TOPN_DAEMON_MAX_NODES": "2",
    "TOPN_DAEMON_AUTOSCALE_INTERVAL_S": "300",  # the service's minimum: 3 s at --time-scale 0.01
}


async def test_the_pool_grows_from_zero_for_work_and_shrinks_to_zero_without_killing_tasks(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator(["--time-scale", "0.01"])
    settings = daemon_settings_for(batch, azurite, tmp_path / "state", "autoscale-pool", **AUTOSCALE)
    folders = folders_under(tmp_path)
    credential = AzureNamedKeyCredential(batch.account_name, batch.account_key)
    async with BatchClient(batch.endpoint, credential) as observer:

        async def nodes() -> int:
            return len([node async for node in observer.list_nodes("autoscale-pool")])

        async with running_daemon(settings, folders):
            pool = await observer.get_pool("autoscale-pool")
            assert pool.enable_auto_scale and "taskcompletion" in str(pool.auto_scale_formula)
            assert await nodes() == 0  # nothing pending: no node
            for index in range(FILES):
                await anyio.Path(folders.inbox / f"a{index}.txt").write_text(
                    f"scale{index} up", encoding="utf-8"
                )
            grown = await wait_async(lambda: _at_least(nodes, 1), "the pool to grow from zero", 60)
            assert grown <= 2  # max_nodes

            async def all_done() -> bool:
                return len(await anyio.to_thread.run_sync(files_under, folders.done)) == FILES

            await wait_async(all_done, "every file done", 90)
            await wait_async(lambda: _exactly(nodes, 0), "the pool to shrink to zero when idle", 60)

        async for job in observer.list_jobs():
            async for task in observer.list_tasks(str(job.id)):
                info = task.execution_info
                assert info is not None and info.requeue_count == 0 and info.result == "success", task.id


async def _at_least(count: Callable[[], Awaitable[int]], minimum: int) -> int | None:
    value = await count()
    return value if value >= minimum else None


async def _exactly(count: Callable[[], Awaitable[int]], wanted: int) -> bool:
    return await count() == wanted


async def test_a_user_formula_that_does_not_evaluate_is_refused_with_its_error(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator(["--time-scale", "0.01"])
    good = daemon_settings_for(batch, azurite, tmp_path / "state", "formula-pool", **AUTOSCALE)
    async with running_daemon(good, folders_under(tmp_path / "first")):
        pass  # the pool now autoscales with the default formula
    bad = daemon_settings_for(
        batch,
        azurite,
        tmp_path / "state",
        "formula-pool",
        **AUTOSCALE,
        TOPN_DAEMON_AUTOSCALE_FORMULA="$TargetDedicatedNodes = $NoSuchVariable * 2;",
    )
    with pytest.raises(BaseExceptionGroup) as refused:
        async with running_daemon(bad, folders_under(tmp_path / "second")):
            pass
    leaf = first_leaf(refused.value)
    assert isinstance(leaf, ConfigError) and leaf.exit_code == 2
    assert "autoscale_formula does not evaluate" in str(leaf) and "NoSuchVariable" in str(leaf)
