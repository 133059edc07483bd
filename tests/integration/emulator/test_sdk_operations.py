"""The real azure.batch.aio.BatchClient against the emulator process: pools, jobs, tasks, files."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from azure.batch import models
from azure.batch.models._models import BatchJobTerminateOptions
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from tests.conftest import BatchEndpoint
from tests.integration.emulator.conftest import batch_client, pool_options, wait_for, wait_job_done

pytestmark = pytest.mark.asyncio(loop_scope="session")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_supported_images_list_ubuntu_22_and_24(batch_emulator: BatchEndpoint) -> None:
    async with batch_client(batch_emulator) as client:
        images = [image async for image in client.list_supported_images()]
        filtered = [image async for image in client.list_supported_images(filter="osType eq 'linux'")]
    skus = {image.node_agent_sku_id for image in images}
    assert {"batch.node.ubuntu 22.04", "batch.node.ubuntu 24.04"} <= skus
    assert all(image.os_type == models.OSType.LINUX for image in filtered)
    offers = {
        image.image_reference.offer
        for image in images
        if image.node_agent_sku_id == "batch.node.ubuntu 24.04"
    }
    assert "ubuntu-24_04-lts" in offers


async def test_pool_lifecycle(batch_emulator: BatchEndpoint) -> None:
    pool_id = unique("pool")
    async with batch_client(batch_emulator) as client:
        await client.create_pool(pool_options(pool_id, nodes=2, slots=3))
        assert await client.pool_exists(pool_id) is True
        with pytest.raises(ResourceExistsError) as exists:
            await client.create_pool(pool_options(pool_id))
        assert exists.value.error.code == "PoolExists"

        async def steady() -> bool:
            pool = await client.get_pool(pool_id)
            return bool(pool.allocation_state == models.AllocationState.STEADY)

        await wait_for(steady, what="allocation to reach steady")
        pool = await client.get_pool(pool_id)
        assert pool.state == models.BatchPoolState.ACTIVE
        assert pool.current_dedicated_nodes == 2
        assert pool.task_slots_per_node == 3
        assert pool.etag
        nodes = [node async for node in client.list_nodes(pool_id)]
        assert len(nodes) == 2
        assert {node.state for node in nodes} == {models.BatchNodeState.IDLE}
        for node in nodes:
            node_root = batch_emulator.root / pool_id / node.id
            for folder in ("startup", "shared", "workitems"):
                assert (node_root / folder).is_dir()
        poller = await client.begin_delete_pool(pool_id, polling_interval=0.1)
        await poller.result()
        with pytest.raises(ResourceNotFoundError):
            await client.pool_exists(pool_id)
        with pytest.raises(ResourceNotFoundError) as missing:
            await client.get_pool(pool_id)
        assert missing.value.error.code == "PoolNotFound"
    assert not (batch_emulator.root / pool_id).exists()


async def test_job_lifecycle_update_terminate_delete(batch_emulator: BatchEndpoint) -> None:
    job_id = unique("job")
    async with batch_client(batch_emulator) as client:
        await client.create_job(
            models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id="none"))
        )
        with pytest.raises(ResourceExistsError) as exists:
            await client.create_job(
                models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id="none"))
            )
        assert exists.value.error.code == "JobExists"
        await client.update_job(job_id, models.BatchJobUpdateOptions(priority=7))
        job = await client.get_job(job_id)
        assert job.priority == 7
        assert job.state == models.BatchJobState.ACTIVE
        await client.replace_job(
            job_id, models.BatchJob(pool_info=models.BatchPoolInfo(pool_id="elsewhere"), max_parallel_tasks=3)
        )
        job = await client.get_job(job_id)
        assert (job.priority, job.max_parallel_tasks, job.pool_info.pool_id) == (0, 3, "elsewhere")
        poller = await client.begin_terminate_job(
            job_id, BatchJobTerminateOptions(termination_reason="stopped by test"), polling_interval=0.1
        )
        await poller.result()
        job = await client.get_job(job_id)
        assert job.state == models.BatchJobState.COMPLETED
        assert job.execution_info.termination_reason == "stopped by test"
        poller = await client.begin_delete_job(job_id, polling_interval=0.1)
        await poller.result()
        with pytest.raises(ResourceNotFoundError) as missing:
            await client.get_job(job_id)
        assert missing.value.error.code == "JobNotFound"


async def test_terminatejob_with_zero_tasks_completes_at_once(batch_emulator: BatchEndpoint) -> None:
    job_id = unique("job")
    async with batch_client(batch_emulator) as client:
        await client.create_job(
            models.BatchJobCreateOptions(
                id=job_id,
                pool_info=models.BatchPoolInfo(pool_id="none"),
                all_tasks_complete_mode=models.BatchAllTasksCompleteMode.TERMINATE_JOB,
            )
        )
        job = await client.get_job(job_id)
        assert job.state == models.BatchJobState.COMPLETED
        assert job.execution_info.termination_reason == "AllTasksComplete"
        with pytest.raises(models.CreateTasksError) as failed:
            await client.create_tasks(
                job_id, [models.BatchTaskCreateOptions(id="t", command_line="/bin/true")]
            )
        assert [error.error.code for error in failed.value.errors] == ["JobCompleted"]


async def test_five_thousand_tasks_in_one_call_exist_exactly_once(batch_emulator: BatchEndpoint) -> None:
    job_id = unique("bulk")
    wanted = [f"task-{index:05d}" for index in range(5000)]
    async with batch_client(batch_emulator) as client:
        # A job on a pool that does not exist is accepted, and its tasks stay active.
        await client.create_job(
            models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=unique("nopool")))
        )
        result = await client.create_tasks(
            job_id,
            [models.BatchTaskCreateOptions(id=task_id, command_line="/bin/true") for task_id in wanted],
            max_concurrency=4,
        )
        assert sorted(item.task_id for item in result.result_values) == wanted
        counts = await client.get_job_task_counts(job_id)
        assert counts.task_counts.active == 5000
        assert counts.task_counts.running == counts.task_counts.completed == 0
        assert counts.task_slot_counts.active == 5000
        pages = client.list_tasks(
            job_id, filter="state eq 'active'", select=["id", "state"], max_results=700
        ).by_page()
        seen: list[str] = []
        page_count = 0
        async for page in pages:
            page_count += 1
            async for task in page:
                assert task.state == models.BatchTaskState.ACTIVE
                assert task.command_line is None  # $select kept on every page
                seen.append(task.id)
        assert page_count == 8
        assert sorted(seen) == wanted
        subset = [
            task.id
            async for task in client.list_tasks(job_id, filter="startswith(id,'task-049')", max_results=30)
        ]
        assert sorted(subset) == [task_id for task_id in wanted if task_id.startswith("task-049")]
        again = await client.create_tasks(
            job_id, [models.BatchTaskCreateOptions(id=wanted[0], command_line="x")]
        )
        assert again.result_values[0].error.code == "TaskExists"
        assert (await client.get_job_task_counts(job_id)).task_counts.active == 5000
        await (await client.begin_delete_job(job_id, polling_interval=0.1)).result()


async def test_filters_on_finished_tasks(batch_emulator: BatchEndpoint) -> None:
    pool_id, job_id = unique("pool"), unique("job")
    exit_codes = {f"t{index:02d}": index % 4 for index in range(12)}
    async with batch_client(batch_emulator) as client:
        await client.create_pool(pool_options(pool_id, nodes=1, slots=4))
        await client.create_job(
            models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id))
        )
        before = datetime.now(UTC)
        await client.create_task_collection(
            job_id,
            models.BatchTaskGroup(
                task_values=[
                    models.BatchTaskCreateOptions(id=task_id, command_line=f"/bin/sh -c 'exit {code}'")
                    for task_id, code in exit_codes.items()
                ]
            ),
        )
        counts = await wait_job_done(client, job_id, 12)
        assert (counts.succeeded, counts.failed) == (3, 9)

        async def ids(query: str) -> set[str]:
            return {task.id async for task in client.list_tasks(job_id, filter=query, max_results=5)}

        by_code = {code: {task for task, value in exit_codes.items() if value == code} for code in range(4)}
        assert await ids("executionInfo/result eq 'success'") == by_code[0]
        assert await ids("executionInfo/result eq 'failure'") == set(exit_codes) - by_code[0]
        assert await ids("executionInfo/exitCode ge 2") == by_code[2] | by_code[3]
        assert (
            await ids("executionInfo/exitCode lt 1 or executionInfo/exitCode gt 2") == by_code[0] | by_code[3]
        )
        assert await ids("(executionInfo/exitCode eq 1 or executionInfo/exitCode eq 2) and id le 't05'") == {
            task for task in by_code[1] | by_code[2] if task <= "t05"
        }
        assert await ids("state ne 'completed'") == set()
        assert await ids("id eq 't07' and state eq 'completed'") == {"t07"}
        stamp = before.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert await ids(f"stateTransitionTime gt datetime'{stamp}'") == set(exit_codes)
        assert await ids(f"stateTransitionTime lt datetime'{stamp}'") == set()

        failed = await client.get_task(job_id, "t03")
        assert failed.state == models.BatchTaskState.COMPLETED
        assert failed.execution_info.exit_code == 3
        assert failed.execution_info.result == models.BatchTaskExecutionResult.FAILURE
        assert failed.execution_info.failure_info.code == "FailureExitCode"
        assert failed.execution_info.retry_count == 0
        assert failed.node_info.pool_id == pool_id
        await (await client.begin_delete_pool(pool_id, polling_interval=0.1)).result()


async def test_task_files_node_files_and_terminate(batch_emulator: BatchEndpoint) -> None:
    pool_id, job_id = unique("pool"), unique("job")
    start_task = models.BatchStartTask(
        command_line="/bin/sh -c 'echo prepared node; echo start-warning >&2'", wait_for_success=True
    )
    async with batch_client(batch_emulator) as client:
        await client.create_pool(pool_options(pool_id, nodes=1, slots=2, start_task=start_task))
        await client.create_job(
            models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id))
        )
        await client.create_task(
            job_id,
            models.BatchTaskCreateOptions(
                id="writer",
                command_line="/bin/sh -c 'echo out-line; echo err-line >&2; echo data > result.txt'",
            ),
        )
        await client.create_task(job_id, models.BatchTaskCreateOptions(id="sleeper", command_line="sleep 60"))

        async def sleeper_running() -> bool:
            return bool((await client.get_task(job_id, "sleeper")).state == models.BatchTaskState.RUNNING)

        await wait_for(sleeper_running, what="the sleeper to run")
        await client.terminate_task(job_id, "sleeper")
        sleeper = await client.get_task(job_id, "sleeper")
        assert sleeper.state == models.BatchTaskState.COMPLETED
        assert sleeper.execution_info.result == models.BatchTaskExecutionResult.FAILURE
        assert sleeper.execution_info.failure_info.code == "TaskEnded"
        await wait_job_done(client, job_id, 2)

        async def read_task_file(path: str) -> bytes:
            return b"".join(
                [chunk async for chunk in await client.download_task_file(job_id, "writer", path)]
            )

        assert await read_task_file("stdout.txt") == b"out-line\n"
        assert await read_task_file("stderr.txt") == b"err-line\n"
        assert await read_task_file("wd/result.txt") == b"data\n"
        ranged = await client.download_task_file(job_id, "writer", "stdout.txt", ocp_range="bytes=4-7")
        assert b"".join([chunk async for chunk in ranged]) == b"line"
        names = {entry.name async for entry in client.list_task_files(job_id, "writer", recursive=True)}
        assert {"stdout.txt", "stderr.txt", "wd", "wd/result.txt"} <= names
        properties = await client.get_task_file_properties(job_id, "writer", "stdout.txt")
        assert int(properties.content_length) == len(b"out-line\n")
        with pytest.raises(ResourceNotFoundError):
            await client.download_task_file(job_id, "writer", "wd/missing.txt")

        node = (await client.get_task(job_id, "writer")).node_info.node_id
        node_state = await client.get_node(pool_id, node)
        assert node_state.start_task_info.result == models.BatchTaskExecutionResult.SUCCESS
        startup = b"".join(
            [chunk async for chunk in await client.download_node_file(pool_id, node, "startup/stdout.txt")]
        )
        assert startup == b"prepared node\n"
        node_files = {entry.name async for entry in client.list_node_files(pool_id, node, recursive=True)}
        assert {"startup/stdout.txt", "startup/stderr.txt", "shared"} <= node_files
        await (await client.begin_delete_pool(pool_id, polling_interval=0.1)).result()


async def test_resize_grows_and_shrinks_idle_nodes_first(batch_emulator: BatchEndpoint) -> None:
    pool_id, job_id = unique("pool"), unique("job")
    async with batch_client(batch_emulator) as client:
        await client.create_pool(pool_options(pool_id, nodes=1, slots=1))
        await client.create_job(
            models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id))
        )
        await client.create_task(job_id, models.BatchTaskCreateOptions(id="busy", command_line="sleep 60"))

        async def busy_running() -> bool:
            return bool((await client.get_task(job_id, "busy")).state == models.BatchTaskState.RUNNING)

        await wait_for(busy_running, what="the busy task to run")
        grow = await client.begin_resize_pool(
            pool_id, models.BatchPoolResizeOptions(target_dedicated_nodes=3), polling_interval=0.1
        )
        await grow.result()
        nodes = [node async for node in client.list_nodes(pool_id)]
        assert len(nodes) == 3
        busy_node = (await client.get_task(job_id, "busy")).node_info.node_id
        shrink = await client.begin_resize_pool(
            pool_id, models.BatchPoolResizeOptions(target_dedicated_nodes=1), polling_interval=0.1
        )
        await shrink.result()
        remaining = [node async for node in client.list_nodes(pool_id)]
        assert [node.id for node in remaining] == [busy_node]
        busy = await client.get_task(job_id, "busy")
        assert (busy.state, busy.execution_info.requeue_count) == (models.BatchTaskState.RUNNING, 0)
        pool = await client.get_pool(pool_id)
        assert (pool.target_dedicated_nodes, pool.current_dedicated_nodes) == (1, 1)
        await client.terminate_task(job_id, "busy")
        await (await client.begin_delete_pool(pool_id, polling_interval=0.1)).result()


async def test_task_retention_time_is_kept_as_given(batch_emulator: BatchEndpoint) -> None:
    """A task's retentionTime is stored and read back (7 days when not given), short ones included."""
    job_id = unique("job")
    async with batch_client(batch_emulator) as client:
        await client.create_job(
            models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id="none"))
        )
        short = models.BatchTaskConstraints(retention_time=timedelta(minutes=1))
        await client.create_task(
            job_id, models.BatchTaskCreateOptions(id="short", command_line="/bin/true", constraints=short)
        )
        await client.create_task(
            job_id, models.BatchTaskCreateOptions(id="default", command_line="/bin/true")
        )
        kept = {task.id: task.constraints.retention_time async for task in client.list_tasks(job_id)}
        assert kept == {"short": timedelta(minutes=1), "default": timedelta(days=7)}
        await client.begin_delete_job(job_id)
