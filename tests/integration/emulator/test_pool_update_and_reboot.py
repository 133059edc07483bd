"""update_pool (PATCH /pools/{id}) and node reboot with the real SDK.

New and rebooted nodes run the pool's current start task; nodes that already ran one keep it.
"""

from __future__ import annotations

import json
import shlex
import uuid

import aiohttp
import pytest
from azure.batch import models
from azure.batch.aio import BatchClient
from azure.batch.models._models import BatchNodeRebootOptions  # not exported (SDK quirk)
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from tests.conftest import BatchEndpoint, StartEmulator
from tests.integration.emulator.conftest import batch_client, pool_options, wait_for, wait_job_done

pytestmark = pytest.mark.asyncio(loop_scope="session")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def shell_start_task(command: str) -> models.BatchStartTask:
    """A start task running `command` in a shell, which the node must finish before taking tasks."""
    return models.BatchStartTask(command_line=f"/bin/sh -c {shlex.quote(command)}", wait_for_success=True)


def boot_marker(word: str) -> models.BatchStartTask:
    """A start task that appends `word` to shared/boots.txt, so the file tells which start tasks ran."""
    return shell_start_task(f'echo {word} >> "$AZ_BATCH_NODE_SHARED_DIR/boots.txt"')


async def node_file(client: BatchClient, pool_id: str, node_id: str, path: str) -> str:
    stream = await client.download_node_file(pool_id, node_id, path)
    return b"".join([chunk async for chunk in stream]).decode()


async def only_node(client: BatchClient, pool_id: str) -> models.BatchNode:
    nodes = [node async for node in client.list_nodes(pool_id)]
    assert len(nodes) == 1
    return nodes[0]


async def wait_node_state(client: BatchClient, pool_id: str, node_id: str, state: str) -> models.BatchNode:
    seen: list[models.BatchNode] = []

    async def reached() -> bool:
        seen.append(await client.get_node(pool_id, node_id))
        return bool(seen[-1].state == state)

    await wait_for(reached, what=f"node {node_id} to be {state}")
    return seen[-1]


async def wait_task_running(client: BatchClient, job_id: str, task_id: str) -> None:
    async def running() -> bool:
        return bool((await client.get_task(job_id, task_id)).state == models.BatchTaskState.RUNNING)

    await wait_for(running, what=f"task {task_id} to run")


def emulator_events(emulator: BatchEndpoint, event: str) -> list[dict[str, object]]:
    lines = (emulator.log_dir / "emulator.stderr.log").read_text(encoding="utf-8").splitlines()
    return [record for record in map(json.loads, lines) if record.get("event") == event]


async def emulator_stats(emulator: BatchEndpoint) -> dict[str, dict[str, int]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{emulator.endpoint}/_emulator/stats") as response,
    ):
        body: dict[str, dict[str, int]] = await response.json()
        return body


async def reboot(client: BatchClient, pool_id: str, node_id: str, option: str = "requeue") -> None:
    # Without options the SDK fails before sending (gotcha 5); the poller is not needed here.
    await client.begin_reboot_node(pool_id, node_id, BatchNodeRebootOptions(node_reboot_kind=option))


async def test_an_updated_start_task_reaches_rebooted_and_new_nodes_only(
    start_emulator: StartEmulator,
) -> None:
    emulator = await start_emulator()  # its own log, to read the node's state changes
    pool_id = unique("pool")
    async with batch_client(emulator) as client:
        await client.create_pool(
            pool_options(
                pool_id,
                nodes=1,
                start_task=boot_marker("first"),
                metadata=[models.BatchMetadataItem(name="owner", value="tests")],
            )
        )
        node = await only_node(client, pool_id)
        node = await wait_node_state(client, pool_id, str(node.id), "idle")
        node_id = str(node.id)

        await client.update_pool(pool_id, models.BatchPoolUpdateOptions(start_task=boot_marker("second")))
        pool = await client.get_pool(pool_id)
        assert pool.start_task is not None and "second" in str(pool.start_task.command_line)
        assert pool.start_task.wait_for_success is True
        assert [(item.name, item.value) for item in pool.metadata or []] == [("owner", "tests")]  # untouched
        # A node that already ran its start task keeps what it ran until it reboots.
        assert await node_file(client, pool_id, node_id, "shared/boots.txt") == "first\n"

        await client.update_pool(
            pool_id, models.BatchPoolUpdateOptions(metadata=[models.BatchMetadataItem(name="k", value="v")])
        )
        pool = await client.get_pool(pool_id)
        assert [(item.name, item.value) for item in pool.metadata or []] == [("k", "v")]  # replaced
        assert pool.start_task is not None and "second" in str(pool.start_task.command_line)  # kept

        await reboot(client, pool_id, node_id)
        rebooted = await wait_node_state(client, pool_id, node_id, "idle")
        assert await node_file(client, pool_id, node_id, "shared/boots.txt") == "first\nsecond\n"
        assert rebooted.last_boot_time is not None and node.last_boot_time is not None
        assert rebooted.last_boot_time > node.last_boot_time
        assert rebooted.start_task_info is not None and rebooted.start_task_info.result == "success"
        transitions = [
            (record["from_state"], record["to_state"])
            for record in emulator_events(emulator, "node.state_changed")
            if record["node_id"] == node_id
        ]
        assert ("idle", "rebooting") in transitions and ("rebooting", "waitingforstarttask") in transitions

        await client.begin_resize_pool(pool_id, models.BatchPoolResizeOptions(target_dedicated_nodes=2))

        async def second_node_idle() -> bool:
            nodes = [node async for node in client.list_nodes(pool_id)]
            return len(nodes) == 2 and all(node.state == "idle" for node in nodes)

        await wait_for(second_node_idle, what="the added node to be idle")
        added = [node async for node in client.list_nodes(pool_id) if node.id != node_id]
        assert await node_file(client, pool_id, str(added[0].id), "shared/boots.txt") == "second\n"
        stats = await emulator_stats(emulator)
        assert stats["requests"]["update_pool"] == 2 and stats["requests"]["reboot_node"] == 1


async def test_a_reboot_requeues_the_running_task_and_reruns_a_fixed_start_task(
    batch_emulator: BatchEndpoint,
) -> None:
    pool_id, job_id = unique("pool"), unique("job")
    failing = models.BatchStartTask(command_line="/bin/false", wait_for_success=True)
    async with batch_client(batch_emulator) as client:
        await client.create_pool(pool_options(pool_id, nodes=1, slots=1, start_task=failing))
        node_id = str((await only_node(client, pool_id)).id)
        failed = await wait_node_state(client, pool_id, node_id, "starttaskfailed")
        assert failed.start_task_info is not None and failed.start_task_info.exit_code == 1

        # The fix: a start task that leaves a mark the task below waits for.
        fixed = shell_start_task('touch "$AZ_BATCH_NODE_SHARED_DIR/fixed"')
        await client.update_pool(pool_id, models.BatchPoolUpdateOptions(start_task=fixed))
        # A failed start task stays failed until the node reboots.
        assert (await client.get_node(pool_id, node_id)).state == "starttaskfailed"
        await reboot(client, pool_id, node_id)
        await wait_node_state(client, pool_id, node_id, "idle")

        await client.create_job(
            models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id))
        )
        # Its first attempt outlives the test unless the reboot requeues it; the requeued run finds
        # the mark of the second reboot's start task and ends at once.
        waiting = 'test -e "$AZ_BATCH_NODE_SHARED_DIR/again" || sleep 300'
        await client.create_task(
            job_id, models.BatchTaskCreateOptions(id="t", command_line=f"/bin/sh -c {shlex.quote(waiting)}")
        )

        await wait_task_running(client, job_id, "t")
        again = shell_start_task('touch "$AZ_BATCH_NODE_SHARED_DIR/again"')
        await client.update_pool(pool_id, models.BatchPoolUpdateOptions(start_task=again))
        await reboot(client, pool_id, node_id)
        counts = await wait_job_done(client, job_id, 1)
        assert (counts.succeeded, counts.failed) == (1, 0)
        task = await client.get_task(job_id, "t")
        assert task.execution_info is not None
        assert (task.execution_info.requeue_count, task.execution_info.retry_count) == (1, 0)
        await client.begin_delete_pool(pool_id)


async def test_update_and_reboot_refuse_what_the_service_refuses(batch_emulator: BatchEndpoint) -> None:
    pool_id = unique("pool")
    async with batch_client(batch_emulator) as client:
        with pytest.raises(ResourceNotFoundError) as missing_pool:
            await client.update_pool(
                unique("nopool"), models.BatchPoolUpdateOptions(start_task=boot_marker("x"))
            )
        assert missing_pool.value.error is not None and missing_pool.value.error.code == "PoolNotFound"

        await client.create_pool(pool_options(pool_id, nodes=1))
        node_id = str((await only_node(client, pool_id)).id)
        await wait_node_state(client, pool_id, node_id, "idle")
        with pytest.raises(ResourceExistsError) as not_empty:
            await client.update_pool(pool_id, models.BatchPoolUpdateOptions(vm_size="standard_d4s_v3"))
        assert not_empty.value.error is not None
        assert not_empty.value.error.code == "OperationInvalidForCurrentState"
        with pytest.raises(HttpResponseError) as fixed_property:
            await client.update_pool(pool_id, models.BatchPoolUpdateOptions({"targetDedicatedNodes": 3}))
        assert fixed_property.value.status_code == 400
        assert fixed_property.value.error is not None
        assert fixed_property.value.error.code == "InvalidPropertyValue"
        details = {detail.code: detail.message for detail in fixed_property.value.error.details}
        assert details["PropertyName"] == "targetDedicatedNodes"
        assert (await client.get_pool(pool_id)).vm_size == "standard_d2s_v3"

        with pytest.raises(ResourceNotFoundError) as missing_node:
            await reboot(client, pool_id, "tvm-0000000000_9-20260101t000000z")
        assert missing_node.value.error is not None and missing_node.value.error.code == "NodeNotFound"
        with pytest.raises(HttpResponseError) as not_emulated:
            await reboot(client, pool_id, node_id, option="taskcompletion")
        assert not_emulated.value.status_code == 400
        assert (await client.get_node(pool_id, node_id)).state == "idle"  # a refused reboot changes nothing
        await client.begin_delete_pool(pool_id)


async def test_a_reboot_with_terminate_ends_the_running_task(batch_emulator: BatchEndpoint) -> None:
    pool_id, job_id = unique("pool"), unique("job")
    async with batch_client(batch_emulator) as client:
        await client.create_pool(pool_options(pool_id, nodes=1, slots=1))
        node_id = str((await only_node(client, pool_id)).id)
        await client.create_job(
            models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id))
        )
        await client.create_task(job_id, models.BatchTaskCreateOptions(id="t", command_line="sleep 300"))

        await wait_task_running(client, job_id, "t")
        await reboot(client, pool_id, node_id, option="terminate")
        counts = await wait_job_done(client, job_id, 1)
        assert (counts.succeeded, counts.failed) == (0, 1)
        info = (await client.get_task(job_id, "t")).execution_info
        assert info is not None and info.failure_info is not None
        assert (info.failure_info.code, info.requeue_count) == ("TaskEnded", 0)
        await wait_node_state(client, pool_id, node_id, "idle")  # no start task: idle once booted
        await client.begin_delete_pool(pool_id)
