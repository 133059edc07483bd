"""A run whose tasks were submitted, then held back until their SAS expired while topn was down.

The pool has one node with one slot, held by a task of another job until a file exists; topn is
killed once its tasks are in, and the helper waits until the SAS they carry have expired (Storage
refuses them). The run's job was created with a wall clock of `run_timeout_s` (10 s; on a loaded
machine staging and submission alone once took 6 s): whether it survives that depends on the
emulator (`--time-scale` stretches it).
"""

from __future__ import annotations

import shlex
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import anyio
from azure.batch import models
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from orchestrator.journal import RunRecord
from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.fault_support import job_tasks, write_corpus
from tests.e2e.test_crash_resume import crash_environment, load_record, run_id_in, run_until

FILES = 4


def sas_expiry_of(url: str) -> datetime:
    """The `se=` (signed expiry) of a SAS URL."""
    values = parse_qs(urlsplit(url).query).get("se")
    assert values, "the URL carries no SAS expiry"
    return datetime.fromisoformat(values[0])


@dataclass
class HeldBack:
    """The killed run, and what the test needs to go on with it."""

    texts: dict[str, str]
    run_id: str
    before: RunRecord  # the journal right after the kill
    pool_id: str
    release: Path  # touch it to free the pool's only slot

    def release_once_submitted(self, event: dict[str, Any]) -> None:
        """An `on_event` hook: the resumed run's tasks may run once they are all in."""
        if event["event"] == "tasks.submitted":
            self.release.touch()


@asynccontextmanager
async def held_back_run(
    batch: BatchEndpoint, azurite: StorageEndpoint, root: Path, seed: int
) -> AsyncIterator[HeldBack]:
    """Set up the pool, run topn until its tasks are in, kill it, wait out the SAS; clean up after."""
    texts = write_corpus(root / "in", FILES, seed=seed)
    pool_id, blocker_job = f"sas-pool-{uuid.uuid4().hex[:8]}", f"sas-blocker-{uuid.uuid4().hex[:8]}"
    release = root / "release-the-slot"
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
            # SAS live run_timeout_s + sas_margin_s: a few seconds here.
            short = crash_environment(
                batch,
                azurite,
                root,
                TOPN_POOL_ID=pool_id,
                TOPN_RUN_RUN_TIMEOUT_S="10",
                TOPN_RUN_SAS_MARGIN_S="0",
            )
            first, killed = await run_until(
                ["run", "in", "--out", "out", "--json"],
                root,
                short,
                lambda event: bool(event["event"] == "tasks.submitted"),
            )
            assert killed and first.exit_code == -9, first.stderr[-3000:]
            run_id = run_id_in(first)
            before = await load_record(root / ".topn", run_id)
            assert before.submitted_task_ids == set(before.task_ids) and not before.completed
            old_expiry = min(before.sas_expiries.values())
            await anyio.sleep(max(0.0, (old_expiry - datetime.now(UTC)).total_seconds()) + 1.5)
            held = await job_tasks(batch.endpoint, batch.account_name, batch.account_key, f"topn-{run_id}")
            assert {task.state for task in held} == {"active"}
            # The setup really tests expiry: the old input SAS is refused by Storage now.
            async with (
                aiohttp.ClientSession() as session,
                session.get(held[0].resource_files[0].http_url) as got,
            ):
                assert got.status == 403
            yield HeldBack(texts, run_id, before, pool_id, release)
        finally:
            release.touch()
            await client.begin_delete_job(blocker_job)
            await client.begin_delete_pool(pool_id)
