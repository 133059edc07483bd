"""CLEANING: delete what config says to (job, run blobs), bounded and shielded from cancellation.

The pool is not the run's: whether it goes after the run is the process shell's decision.
"""

from __future__ import annotations

import contextlib

import anyio
from azure.core.exceptions import HttpResponseError

from orchestrator.azure import staging
from orchestrator.azure.retry import retry_call
from orchestrator.run.context import RunContext, RunLedger
from orchestrator.settings import CLEANUP_TIMEOUT_S


async def clean_up(run: RunContext, ledger: RunLedger) -> None:
    """Delete what config says to: the run's jobs and its two containers."""
    settings = run.settings.run
    with anyio.move_on_after(CLEANUP_TIMEOUT_S, shield=True):
        async with anyio.create_task_group() as group:
            if ledger.job_created and settings.delete_job:
                # Every job of the run: a resume that went on in a successor left the old ones for now.
                for job_id in run.jobs.every_job():
                    group.start_soon(_delete_job, run, job_id)
            if settings.delete_run_blobs:
                group.start_soon(_delete_run_blobs, run)


async def _delete_job(run: RunContext, job_id: str) -> None:
    # Start the deletion and move on: the service finishes it, nobody needs to wait (or it is gone).
    with contextlib.suppress(HttpResponseError):
        await retry_call(run.retry, "delete_job", lambda: run.batch.begin_delete_job(job_id))


async def _delete_run_blobs(run: RunContext) -> None:
    # Both containers are the run's own: two requests, whatever the number of files.
    await staging.delete_container(run.blobs, run.input_container, run.retry)
    await staging.delete_container(run.blobs, run.output_container, run.retry)
