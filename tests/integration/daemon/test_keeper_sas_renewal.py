"""The pool keeper renews the start task's script SAS on its own timer, before it expires, unasked.

With a SAS that lives seconds (the daemon's lives 24 h and is renewed with 12 h left), the pool's
start task gets a fresh SAS again and again, each time before the one it had ends.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from orchestrator.azure.pool import sas_expiry, staged_script_url
from orchestrator.service.keeping import SasTimer, keep_pool
from orchestrator.service.poolkeeper import PoolKeeper
from orchestrator.service.shell import open_services
from tests.conftest import StartEmulator, StorageEndpoint
from tests.integration.daemon.support import daemon_settings_for, wait_async
from tests.integration.orchestrator.test_pipeline_run import stand_in_node

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_the_keeper_renews_the_script_sas_before_it_expires_on_its_own_timer(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    settings = daemon_settings_for(batch, azurite, tmp_path / "state", "sas-pool")
    node_script = stand_in_node()
    credential = AzureNamedKeyCredential(batch.account_name, batch.account_key)
    async with (
        open_services(settings, node_script) as services,
        BatchClient(batch.endpoint, credential) as client,
    ):
        keeper = PoolKeeper(
            services.settings, services.clients, node_script, script_sas_lifetime=timedelta(seconds=4)
        )
        timer = SasTimer(margin=timedelta(seconds=2), check_every_s=0.2)
        expiries: list[datetime] = []

        async def renewed_twice() -> bool:
            pool = await client.get_pool("sas-pool")
            url = staged_script_url(pool.start_task)
            assert url is not None
            expiry = sas_expiry(url)
            assert expiry is not None
            if not expiries or expiry > expiries[-1]:
                if expiries:  # a fresh SAS, seen while the one it replaces still worked
                    assert datetime.now(UTC) < expiries[-1], (expiries, expiry)
                expiries.append(expiry)
            return len(expiries) >= 3

        async with anyio.create_task_group() as group:
            await group.start(
                functools.partial(keep_pool, timer=timer), services.settings, services.clients, keeper
            )
            await wait_async(renewed_twice, "the keeper to renew the start task's SAS twice", 20)
            group.cancel_scope.cancel()
        assert expiries[1] - expiries[0] >= timedelta(seconds=1)
        assert keeper.script_sas_expires_at is not None and keeper.script_sas_expires_at >= expiries[-1]
