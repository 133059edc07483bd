"""Pool, submission and monitoring against the real emulator (and Azurite for the start task's file).

The real azure.batch.aio.BatchClient talks to the emulator over HTTP; tasks are tiny shell commands,
so these tests exercise the orchestrator's stages, not the node script.
"""

from __future__ import annotations

import shlex
from collections.abc import AsyncIterator

import anyio
import pytest
import pytest_asyncio
from azure.batch.aio import BatchClient
from azure.batch.models import (
    BatchJobCreateOptions,
    BatchJobUpdateOptions,
    BatchPoolInfo,
    BatchTaskCreateOptions,
)
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob.aio import BlobServiceClient

from orchestrator import naming
from orchestrator.azure import staging
from orchestrator.azure.monitor import TaskOutcome, watch_job
from orchestrator.azure.pool import ensure_pool, wait_until_usable
from orchestrator.azure.retry import SDK_RETRY_KWARGS, RetryPolicy
from orchestrator.azure.submit import submit_tasks
from orchestrator.errors import PoolError
from orchestrator.settings import PoolSettings
from tests.conftest import BatchEndpoint, StartEmulator, StorageEndpoint

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAST = RetryPolicy(max_attempts=4, base_delay_s=0.05, max_delay_s=0.5, deadline_s=30)


def batch_client(endpoint: BatchEndpoint) -> BatchClient:
    credential = AzureNamedKeyCredential(endpoint.account_name, endpoint.account_key)
    return BatchClient(endpoint.endpoint, credential, **SDK_RETRY_KWARGS)


@pytest_asyncio.fixture(loop_scope="session")
async def script_url(azurite: StorageEndpoint) -> AsyncIterator[str]:
    """A read SAS URL of a small stand-in for node.pyz in Azurite."""
    async with BlobServiceClient.from_connection_string(
        azurite.connection_string, **SDK_RETRY_KWARGS
    ) as blobs:
        await staging.ensure_containers(blobs, ["topnstages-app"], FAST)
        blob_name = await staging.stage_node_script(blobs, "topnstages-app", b"stand-in node script", FAST)
        minter = await staging.make_sas_minter(
            account_url=azurite.endpoint,
            account_name=azurite.account_name,
            account_key=azurite.account_key,
            delegation_source=None,
            run_timeout_s=600,
            margin_s=60,
        )
        yield minter.blob_read_url("topnstages-app", blob_name)


def shell(command: str) -> str:
    return f"/bin/sh -c {shlex.quote(command)}"


async def test_pool_becomes_usable_with_the_script_staged_and_is_reused(
    start_emulator: StartEmulator, script_url: str
) -> None:
    endpoint = await start_emulator()
    settings = PoolSettings(id="stages-pool", dedicated_nodes=1, task_slots_per_node=4)
    async with batch_client(endpoint) as batch:
        created = await ensure_pool(
            batch, settings, script_url, shell('cp node.pyz "$AZ_BATCH_NODE_SHARED_DIR/node.pyz"'), FAST
        )
        assert created
        with anyio.fail_after(60):
            usable = await wait_until_usable(batch, settings.id, timeout_s=60, retry=FAST, created=created)
        assert usable == 1
        assert not await ensure_pool(batch, settings, script_url, "unused", FAST)  # reused, not recreated
    staged = list(endpoint.root.rglob("shared/node.pyz"))
    assert [path.read_bytes() for path in staged] == [b"stand-in node script"]


async def test_start_task_failure_ends_the_wait_with_the_stderr_tail(
    start_emulator: StartEmulator, script_url: str
) -> None:
    endpoint = await start_emulator()
    settings = PoolSettings(id="broken-pool", dedicated_nodes=1)
    command = shell("echo 'cannot install the widget: disk on fire' >&2; exit 7")
    async with batch_client(endpoint) as batch:
        await ensure_pool(batch, settings, script_url, command, FAST)
        with anyio.fail_after(30), pytest.raises(PoolError) as failure:
            await wait_until_usable(batch, settings.id, timeout_s=600, retry=FAST, created=True)
    message = str(failure.value)
    assert "disk on fire" in message
    assert "exit code 7" in message


async def test_tasks_are_submitted_in_bulk_and_every_completion_is_seen(
    start_emulator: StartEmulator, script_url: str
) -> None:
    endpoint = await start_emulator(["--max-tasks-per-request", "100"])
    settings = PoolSettings(id="work-pool", dedicated_nodes=2, task_slots_per_node=4)
    count = 130
    failing = {"t000007", "t000100"}
    tasks = [
        BatchTaskCreateOptions(
            id=naming.task_id(index),
            command_line=shell("exit 5" if naming.task_id(index) in failing else "exit 0"),
        )
        for index in range(count)
    ]
    async with batch_client(endpoint) as batch:
        await ensure_pool(batch, settings, script_url, shell("true"), FAST)
        await batch.create_job(
            BatchJobCreateOptions(
                id="job-1", pool_info=BatchPoolInfo(pool_id=settings.id), all_tasks_complete_mode="noaction"
            )
        )
        report = await submit_tasks(batch, "job-1", tasks, concurrency=3, retry=FAST)
        assert report.tasks_added == count and report.requests == 2
        again = await submit_tasks(batch, "job-1", tasks[:10], concurrency=1, retry=FAST)
        assert again.already_existed == 10
        await batch.update_job("job-1", BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))

        send, receive = anyio.create_memory_object_stream[TaskOutcome](count)
        outcomes: list[TaskOutcome] = []
        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:
                group.start_soon(
                    lambda: watch_job(
                        batch,
                        "job-1",
                        [task.id for task in tasks],
                        send,
                        poll_min_s=0.1,
                        poll_max_s=1.0,
                        retry=FAST,
                    )
                )
                async with receive:
                    async for outcome in receive:
                        outcomes.append(outcome)
    assert sorted(outcome.task_id for outcome in outcomes) == sorted(task.id for task in tasks)
    assert {outcome.task_id for outcome in outcomes if not outcome.succeeded} == failing
    assert {outcome.exit_code for outcome in outcomes if not outcome.succeeded} == {5}
