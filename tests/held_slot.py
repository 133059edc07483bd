"""A pool whose only task slot is held by another job's task until a file appears, and jobs to fill a quota.

Tests that need topn's tasks to wait in Batch (their job ended under them, the account's active-jobs
quota full) create the pool first: topn adopts it, adds its tasks, and they stay `active` until the
test touches `release`. Names are random per test (xdist-safe); everything is deleted at the end.
"""

from __future__ import annotations

import contextlib
import shlex
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
from azure.batch import models
from azure.batch.aio import BatchClient
from azure.batch.models._models import BatchJobTerminateOptions  # not exported (SDK quirk)
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceNotFoundError

from tests.conftest import BatchEndpoint


@dataclass
class HeldSlot:
    """The pool, the file that frees its slot, and a client on the emulator for the test's own moves."""

    pool_id: str
    release: Path
    client: BatchClient

    async def fill_job(self, prefix: str = "filler") -> str:
        """An empty active job on the pool: one more against the active-jobs quota."""
        job_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
        await self.client.create_job(
            models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=self.pool_id))
        )
        return job_id

    async def terminate_and_wait(self, job_id: str) -> None:
        """End a job as an operator would and wait until it is completed."""
        options = BatchJobTerminateOptions(termination_reason="StoppedByOperator")
        await self.client.begin_terminate_job(job_id, options)
        await self.wait_job_state(job_id, "completed")

    async def wait_job_state(self, job_id: str, wanted: str) -> None:
        with anyio.fail_after(60):
            while True:
                job = await self.client.get_job(job_id)
                if str(getattr(job.state, "value", job.state)) == wanted:
                    return
                await anyio.sleep(0.1)

    async def job_ids(self, prefix: str) -> list[str]:
        found = [str(job.id) async for job in self.client.list_jobs()]
        return sorted(job_id for job_id in found if job_id.startswith(prefix))


@asynccontextmanager
async def held_slot(batch: BatchEndpoint, root: Path) -> AsyncIterator[HeldSlot]:
    """A one-node, one-slot pool whose slot a blocker task holds until `release` exists."""
    pool_id, blocker_job = f"held-{uuid.uuid4().hex[:8]}", f"blocker-{uuid.uuid4().hex[:8]}"
    release = root / f"release-{pool_id}"
    credential = AzureNamedKeyCredential(batch.account_name, batch.account_key)
    async with BatchClient(batch.endpoint, credential) as client:
        await client.create_pool(
            models.BatchPoolCreateOptions(
                id=pool_id,
                vm_size="standard_d2s_v3",
                target_dedicated_nodes=1,
                task_slots_per_node=1,
                virtual_machine_configuration=models.VirtualMachineConfiguration(
                    image_reference=models.BatchVmImageReference(
                        publisher="canonical", offer="ubuntu-24_04-lts", sku="server"
                    ),
                    node_agent_sku_id="batch.node.ubuntu 24.04",
                ),
            )
        )
        await client.create_job(
            models.BatchJobCreateOptions(id=blocker_job, pool_info=models.BatchPoolInfo(pool_id=pool_id))
        )
        wait_loop = f"while [ ! -e {shlex.quote(str(release))} ]; do sleep 0.1; done"
        await client.create_task(
            blocker_job,
            models.BatchTaskCreateOptions(id="blocker", command_line=f"/bin/sh -c {shlex.quote(wait_loop)}"),
        )
        with anyio.fail_after(60):
            while True:
                if (await client.get_task(blocker_job, "blocker")).state == models.BatchTaskState.RUNNING:
                    break
                await anyio.sleep(0.1)
        try:
            yield HeldSlot(pool_id, release, client)
        finally:
            await anyio.Path(release).touch()
            for job in [job async for job in client.list_jobs()]:
                if job.pool_info is not None and job.pool_info.pool_id == pool_id:
                    with contextlib.suppress(ResourceNotFoundError):
                        await client.begin_delete_job(str(job.id))
            await client.begin_delete_pool(pool_id)
