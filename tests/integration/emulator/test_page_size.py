"""`--max-page-size`: the emulator answers fewer items than `maxresults` asks, as the service may."""

from __future__ import annotations

import aiohttp
import pytest
from azure.batch import models

from tests.conftest import BatchEndpoint, StartEmulator
from tests.integration.emulator.conftest import batch_client, pool_options

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def task_listings(emulator: BatchEndpoint) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{emulator.endpoint}/_emulator/stats") as response,
    ):
        requests: dict[str, int] = (await response.json(content_type=None))["requests"]
        return requests.get("list_tasks", 0)


async def test_a_client_that_follows_next_links_gets_every_item_in_small_pages(
    start_emulator: StartEmulator,
) -> None:
    emulator = await start_emulator(["--max-page-size", "3"])
    async with batch_client(emulator) as client:
        await client.create_pool(pool_options("p", nodes=0))
        await client.create_job(
            models.BatchJobCreateOptions(id="j", pool_info=models.BatchPoolInfo(pool_id="p"))
        )
        ids = [f"t{index}" for index in range(7)]
        await client.create_tasks(
            "j", [models.BatchTaskCreateOptions(id=i, command_line="/bin/true") for i in ids]
        )
        for asked in (5, None):  # more than a page, and the service's default of 1,000
            before = await task_listings(emulator)
            listed = [task.id async for task in client.list_tasks("j", select=["id"], max_results=asked)]
            assert sorted(listed) == ids
            assert await task_listings(emulator) - before == 3  # 3 + 3 + 1
