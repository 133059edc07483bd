"""Reconciling Batch at start-up (issue 12 point 6): a stray job of this daemon is ended, others are not.

A crash between creating a batch's job and writing its journal row leaves a `topn-` job on the
daemon's pool that the journal does not know. Before the daemon starts, the test creates one, with
a task running on the pool, and three jobs that must be left alone: a `topn-` job of this daemon on
another pool, a `topn-` job of another daemon (another state folder) on this pool, and a job that is
not topn's. With a short grace, recovery terminates the stray job (its task's process ends) and
deletes it, with a `daemon.job_reconciled` event; the other three stay active.
"""

from __future__ import annotations

import shlex
import uuid
from pathlib import Path

import anyio
import pytest
from azure.batch import models
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceNotFoundError
from structlog.testing import capture_logs

from orchestrator import naming
from orchestrator.service.admission import OWNER_METADATA, daemon_owner
from tests.conftest import StartEmulator, StorageEndpoint
from tests.integration.daemon.support import daemon_settings_for, folders_under, running_daemon, wait_async

pytestmark = pytest.mark.asyncio(loop_scope="session")

GRACE_S = 1.0


def job_options(job_id: str, pool_id: str, owner: str | None) -> models.BatchJobCreateOptions:
    metadata = [models.BatchMetadataItem(name=OWNER_METADATA, value=owner)] if owner else None
    return models.BatchJobCreateOptions(
        id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id), metadata=metadata
    )


async def create_pool(client: BatchClient, pool_id: str) -> None:
    await client.create_pool(
        models.BatchPoolCreateOptions(
            id=pool_id,
            vm_size="standard_d2s_v3",
            target_dedicated_nodes=1,
            task_slots_per_node=2,
            virtual_machine_configuration=models.VirtualMachineConfiguration(
                image_reference=models.BatchVmImageReference(
                    publisher="canonical", offer="ubuntu-24_04-lts", sku="server"
                ),
                node_agent_sku_id="batch.node.ubuntu 24.04",
            ),
        )
    )


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended but not reaped yet, counts as ended); blocking."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


async def job_state(client: BatchClient, job_id: str) -> str | None:
    try:
        job = await client.get_job(job_id)
    except ResourceNotFoundError:
        return None
    return str(getattr(job.state, "value", job.state))


async def test_a_stray_job_of_this_daemon_is_terminated_and_deleted_and_no_other(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    pool_id = f"reconcile-{uuid.uuid4().hex[:8]}"
    settings = daemon_settings_for(
        batch, azurite, tmp_path / "state", pool_id, TOPN_DAEMON_RECONCILE_GRACE_S=str(GRACE_S)
    )
    owner = daemon_owner(settings)
    stray = naming.job_id(naming.new_run_id())
    kept = {
        naming.job_id(naming.new_run_id()): (f"{pool_id}-other", owner),  # this daemon's, another pool
        naming.job_id(naming.new_run_id()): (pool_id, "0" * 16),  # another daemon's, this pool
        f"nightly-{uuid.uuid4().hex[:8]}": (pool_id, owner),  # not a topn job
    }
    pid_file, release = tmp_path / "stray-task.pid", tmp_path / "release"
    script = (
        f"echo $$ > {shlex.quote(str(pid_file))}; "
        f"while [ ! -e {shlex.quote(str(release))} ]; do sleep 0.1; done"
    )
    credential = AzureNamedKeyCredential(batch.account_name, batch.account_key)
    async with BatchClient(batch.endpoint, credential) as client:
        try:
            await create_pool(client, pool_id)
            await client.create_job(job_options(stray, pool_id, owner))
            for job_id, (job_pool, job_owner) in kept.items():
                await client.create_job(job_options(job_id, job_pool, job_owner))
            created = anyio.current_time()
            await client.create_task(
                stray,
                models.BatchTaskCreateOptions(id="busy", command_line=f"/bin/sh -c {shlex.quote(script)}"),
            )

            async def stray_task_running() -> bool:
                task = await client.get_task(stray, "busy")
                return task.state == models.BatchTaskState.RUNNING and await anyio.Path(pid_file).exists()

            await wait_async(stray_task_running, "the stray job's task to run", 60)
            pid = int((await anyio.Path(pid_file).read_text(encoding="utf-8")).strip())
            assert await anyio.to_thread.run_sync(process_alive, pid)
            await anyio.sleep(max(0.0, created + GRACE_S + 0.5 - anyio.current_time()))  # past the grace

            with capture_logs() as events:
                async with running_daemon(settings, folders_under(tmp_path)):
                    # Ready means recovered, and recovery reconciles: the stray job is on its way out.
                    assert await job_state(client, stray) in (None, "deleting")

                    async def stray_gone() -> bool:
                        return await job_state(client, stray) is None

                    await wait_async(stray_gone, "the stray job to be deleted", 30)
                    await wait_async(
                        lambda: anyio.to_thread.run_sync(lambda: not process_alive(pid)),
                        "the stray job's task to be terminated",
                        30,
                    )
                    for job_id in kept:
                        assert await job_state(client, job_id) == "active", job_id
            reconciled = [event for event in events if event["event"] == "daemon.job_reconciled"]
            assert [(event["job_id"], event["action"]) for event in reconciled] == [(stray, "deleted")]
            assert reconciled[0]["log_level"] == "warning"
        finally:
            await anyio.Path(release).touch()
