"""Helpers for driving the emulator with the real azure-batch client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from azure.batch import models
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from tests.conftest import BatchEndpoint

UBUNTU = models.VirtualMachineConfiguration(
    image_reference=models.BatchVmImageReference(
        publisher="canonical", offer="ubuntu-24_04-lts", sku="server"
    ),
    node_agent_sku_id="batch.node.ubuntu 24.04",
)


def batch_client(
    emulator: BatchEndpoint, retries: int = 0, key: str | None = None, **options: Any
) -> BatchClient:
    """A real SDK client; no retries by default so an expected error surfaces at once."""
    credential = AzureNamedKeyCredential(emulator.account_name, key or emulator.account_key)
    return BatchClient(emulator.endpoint, credential, retry_total=retries, **options)


def pool_options(pool_id: str, nodes: int = 1, slots: int = 2, **extra: Any) -> models.BatchPoolCreateOptions:
    return models.BatchPoolCreateOptions(
        id=pool_id,
        vm_size="standard_d2s_v3",
        target_dedicated_nodes=nodes,
        task_slots_per_node=slots,
        virtual_machine_configuration=UBUNTU,
        **extra,
    )


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout_s: float = 30.0, what: str = "condition"
) -> None:
    """Poll `check` until it holds; fail with `what` after `timeout_s` (a deadline, not a speed check)."""
    try:
        with anyio.fail_after(timeout_s):
            while True:
                if await check():
                    return
                await anyio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


async def wait_job_done(
    client: BatchClient, job_id: str, total: int, timeout_s: float = 60.0
) -> models.BatchTaskCounts:
    """Wait until all `total` tasks of the job are completed; returns the final counts."""
    counts: list[models.BatchTaskCounts] = []

    async def done() -> bool:
        result = await client.get_job_task_counts(job_id)
        counts.append(result.task_counts)
        return bool(result.task_counts.completed == total)

    await wait_for(done, timeout_s, f"{total} tasks of {job_id} to complete")
    return counts[-1]
