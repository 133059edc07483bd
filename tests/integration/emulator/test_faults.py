"""Fault injection: transient request errors, slow allocation, start-task failures, preemption."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from tests.conftest import BatchEndpoint, StartEmulator
from tests.integration.emulator.conftest import batch_client, pool_options, wait_for, wait_job_done

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def stats(emulator: BatchEndpoint) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{emulator.endpoint}/_emulator/stats") as response,
    ):
        body: dict[str, Any] = await response.json(content_type=None)
        return body


async def test_transient_request_faults_are_survived_by_sdk_retries(start_emulator: StartEmulator) -> None:
    # With seed 1 the first five distinct requests already draw a 503, a 500 and a 429, so every
    # kind is exercised however few polls the run needs.
    emulator = await start_emulator(
        [
            "--fault-seed",
            "1",
            "--fault-503",
            "0.2",
            "--fault-500",
            "0.15",
            "--fault-429",
            "0.15",
            "--fault-retry-after-s",
            "0",
        ]
    )
    async with batch_client(emulator, retries=5, retry_backoff_factor=0.01) as client:
        await client.create_pool(pool_options("p", slots=4))
        await client.create_job(
            models.BatchJobCreateOptions(id="j", pool_info=models.BatchPoolInfo(pool_id="p"))
        )
        tasks = [
            models.BatchTaskCreateOptions(id=f"t{index:03d}", command_line="/bin/true")
            for index in range(150)
        ]
        result = await client.create_tasks("j", tasks, max_concurrency=2)
        assert len(result.result_values) == 150
        counts = await wait_job_done(client, "j", 150)
        assert counts.succeeded == 150
        listed = [task.id async for task in client.list_tasks("j", select=["id"], max_results=40)]
        assert sorted(listed) == [task.id for task in tasks]
    numbers = await stats(emulator)
    faults = numbers["faults_injected"]
    assert faults["503"] > 0 and faults["500"] > 0 and faults["429"] > 0
    assert numbers["responses_by_status"]["503"] == faults["503"]
    assert numbers["tasks"] == {"added": 150, "completed": 150, "running": 0}


async def test_allocation_delay_start_task_failures_preemption_and_failing_tasks(
    start_emulator: StartEmulator,
) -> None:
    emulator = await start_emulator(
        [
            "--pool-allocation-delay-s",
            "1.0",  # long enough that the first get_pool surely comes before the nodes
            "--fault-start-task-failures",
            "1",
            "--fault-seed",
            "5",
            "--fault-preempt",
            "0.4",
            "--fault-task-fail-match",
            "NEEDLE",
            "--fault-task-fail-exit-code",
            "42",
        ]
    )
    start_task = models.BatchStartTask(
        command_line="/bin/sh -c 'echo node ready'", wait_for_success=True, max_task_retry_count=1
    )
    async with batch_client(emulator) as client:
        await client.create_pool(pool_options("guarded", nodes=2, slots=2, start_task=start_task))
        pool = await client.get_pool("guarded")
        assert pool.allocation_state == models.AllocationState.RESIZING
        assert [node async for node in client.list_nodes("guarded")] == []

        async def start_tasks_done() -> bool:
            nodes = [node async for node in client.list_nodes("guarded")]
            return len(nodes) == 2 and all(
                node.state in (models.BatchNodeState.IDLE, models.BatchNodeState.START_TASK_FAILED)
                for node in nodes
            )

        await wait_for(start_tasks_done, what="both start tasks to finish")
        assert (await client.get_pool("guarded")).allocation_state == models.AllocationState.STEADY
        nodes = {node.state: node async for node in client.list_nodes("guarded")}
        failed_node = nodes[models.BatchNodeState.START_TASK_FAILED]
        good_node = nodes[models.BatchNodeState.IDLE]
        info = failed_node.start_task_info
        assert (info.result, info.exit_code, info.retry_count) == (
            models.BatchTaskExecutionResult.FAILURE,
            1,
            1,
        )
        assert info.failure_info.code == "FailureExitCode"
        stderr = b"".join(
            [
                chunk
                async for chunk in await client.download_node_file(
                    "guarded", failed_node.id, "startup/stderr.txt"
                )
            ]
        )
        assert stderr == b"emulator: injected start task failure\n"

        await client.create_job(
            models.BatchJobCreateOptions(id="j", pool_info=models.BatchPoolInfo(pool_id="guarded"))
        )
        tasks = [
            models.BatchTaskCreateOptions(id=f"t{index:02d}", command_line="/bin/true") for index in range(20)
        ]
        tasks.append(
            models.BatchTaskCreateOptions(
                id="chosen",
                command_line="/bin/echo NEEDLE",
                constraints=models.BatchTaskConstraints(max_task_retry_count=1),
            )
        )
        await client.create_tasks("j", tasks)
        counts = await wait_job_done(client, "j", 21)
        assert (counts.succeeded, counts.failed) == (20, 1)
        finished = {task.id: task async for task in client.list_tasks("j")}
        assert {task.node_info.node_id for task in finished.values()} == {good_node.id}
        chosen = finished.pop("chosen").execution_info
        assert (chosen.exit_code, chosen.retry_count) == (42, 1)
        stderr = b"".join(
            [chunk async for chunk in await client.download_task_file("j", "chosen", "stderr.txt")]
        )
        assert stderr == b"emulator: injected task failure\n"
        requeued = [task.id for task in finished.values() if task.execution_info.requeue_count == 1]
        assert requeued, "a 0.4 preemption fraction over 21 tasks should preempt some"
        assert all(task.execution_info.requeue_count <= 1 for task in finished.values())
    numbers = await stats(emulator)
    assert numbers["faults_injected"]["preempt"] == len(requeued)


async def test_a_sub_second_retry_after_is_announced_exactly_and_never_as_zero(
    start_emulator: StartEmulator,
) -> None:
    emulator = await start_emulator(
        ["--fault-seed", "3", "--fault-429", "0.9", "--fault-retry-after-s", "0.25"]
    )
    throttled: list[HttpResponseError] = []
    async with batch_client(emulator) as client:
        for attempt in range(20):  # distinct requests: a retried one is answered normally by design
            try:
                await client.get_pool(f"pool-{attempt}")
            except HttpResponseError as error:
                if error.status_code == 429:
                    throttled.append(error)
                    break
    assert throttled, "no request drew the 429 fault"
    headers = throttled[0].response.headers
    assert headers["retry-after-ms"] == "250"
    assert headers["Retry-After"] == "1"  # whole seconds, rounded up so nobody retries early
