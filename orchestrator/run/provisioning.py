"""Provisioning, half of PREPARING: node script → pool → job → usable nodes."""

from __future__ import annotations

import importlib
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import anyio
import structlog
from azure.batch.models import BatchJobConstraints, BatchJobCreateOptions, BatchPoolInfo
from azure.core.exceptions import ResourceExistsError

from orchestrator import naming
from orchestrator.azure import pool, staging
from orchestrator.azure.retry import retry_call
from orchestrator.run.context import RunContext, RunLedger

log = structlog.get_logger()


def build_node_script() -> bytes:
    """Pack the node script (node.pack builds the zipapp; no node code runs in this process)."""
    pack = importlib.import_module("node.pack")
    with tempfile.TemporaryDirectory(prefix="topn-node-") as folder:
        path: Path = pack.build_zipapp(Path(folder) / "node.pyz")
        return path.read_bytes()


async def provision(
    run: RunContext, ledger: RunLedger, minter: staging.SasMinter, node_script: bytes | None
) -> str | None:
    """Stage the node script, make sure of the pool and the job, wait for usable nodes.

    Returns the node script's URL when each task must bring it along (a reused pool whose nodes hold
    another one), else None. `node_script` replaces the packed node (tests).
    """
    started = time.monotonic()
    script = node_script if node_script is not None else await anyio.to_thread.run_sync(build_node_script)
    blob_name = await staging.stage_node_script(run.blobs, run.app_container, script, run.retry)
    script_url = minter.blob_read_url(run.app_container, blob_name)
    pool_settings = run.settings.pool
    start_command = pool_settings.start_task_command or naming.start_task_command_line()
    task_script_url: str | None = None
    ledger.pool_created = await pool.ensure_pool(
        run.batch, pool_settings, script_url, start_command, run.retry
    )
    if not ledger.pool_created:
        # A kept pool: its start task's SAS was minted by an earlier run (and ends with it).
        reused = await pool.refresh_reused_pool(
            run.batch,
            pool_settings.id,
            blob_name=blob_name,
            node_script_url=script_url,
            needed_until=minter.expires_at,  # this run's deadline plus [run] sas_margin_s
            retry=run.retry,
        )
        if reused.tasks_bring_script:
            # Its nodes may hold another node script: each task brings this one along.
            log.warning("pool.node_script_outdated", pool_id=pool_settings.id, node_script_blob=blob_name)
            task_script_url = script_url
    await _create_job(run, ledger)  # tasks may queue while the nodes boot
    await pool.wait_until_usable(
        run.batch,
        pool_settings.id,
        timeout_s=pool_settings.ready_timeout_s,
        retry=run.retry,
        created=ledger.pool_created,
        # A kept pool's nodes that failed the old start task get one reboot into the renewed one.
        reboot_failed_nodes=not ledger.pool_created,
    )
    ledger.stage_s["provisioning"] = round(time.monotonic() - started, 3)
    return task_script_url


async def _create_job(run: RunContext, ledger: RunLedger) -> None:
    settings = run.settings.run
    job = BatchJobCreateOptions(
        id=run.job_id,
        pool_info=BatchPoolInfo(pool_id=run.settings.pool.id),
        # noaction until every task is added: a job with zero tasks counts as complete.
        all_tasks_complete_mode="noaction",
        constraints=BatchJobConstraints(
            max_wall_clock_time=timedelta(seconds=settings.run_timeout_s),
            max_task_retry_count=settings.task_max_retries,
        ),
    )
    # JobExists means a resumed run: the job is ours (its id holds our run id).
    try:
        await retry_call(run.retry, "create_job", lambda: run.batch.create_job(job))
        ledger.job_is_new = True
    except ResourceExistsError:
        ledger.job_is_new = False
    ledger.job_created = True
