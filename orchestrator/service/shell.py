"""The process shell: what a command needs, opened once per process and closed shielded after.

`open_services` gives the local services (local mode), the clients after their credential check,
the journal and the pool keeper; `run_once` is one `topn run`/`topn resume` on them, with the pool
left or deleted as config says. Nothing here prints or knows exit statuses: that is the CLI's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from orchestrator import blobinputs, naming
from orchestrator.azure.clients import Clients, check_credentials, endpoint_port, open_clients
from orchestrator.azure.states import job_state
from orchestrator.errors import TopnError
from orchestrator.inputs import InputFile, SkippedInput
from orchestrator.journal import Journal, RunRecord, journal_path
from orchestrator.local import services as local_services
from orchestrator.results import check_result_paths_fit
from orchestrator.run.context import ProgressSink
from orchestrator.run.pipeline import leaves_run_resumable, run_pipeline
from orchestrator.secrets import redact_text
from orchestrator.service.poolkeeper import PoolKeeper
from orchestrator.settings import CLEANUP_TIMEOUT_S, PoolSettings, Settings

LIVE_JOB_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Services:
    """What a command works with; `settings` has the endpoints local mode resolved."""

    settings: Settings
    clients: Clients
    journal: Journal
    pool: PoolKeeper


@asynccontextmanager
async def open_services(settings: Settings, node_script: bytes | None = None) -> AsyncIterator[Services]:
    """Local services, clients (credentials checked), journal and pool keeper; all closed, shielded, after.

    `node_script` replaces the packed node script the pool's start task stages (tests).
    """
    stack = AsyncExitStack()
    try:
        resolved = await local_services.ensure_services(settings, stack)
        clients = await open_clients(resolved, stack)
        await check_credentials(clients, resolved)
        await anyio.Path(resolved.local.state_dir).mkdir(parents=True, exist_ok=True)
        journal = await Journal.open(journal_path(resolved.local.state_dir))
        stack.push_async_callback(journal.close)
        yield Services(resolved, clients, journal, PoolKeeper(resolved, clients, node_script))
    finally:
        # Clean-up runs even when the work is being cancelled (Ctrl-C), but never hangs forever.
        with anyio.move_on_after(CLEANUP_TIMEOUT_S, shield=True):
            await stack.aclose()


async def run_once(
    services: Services,
    inputs: Sequence[InputFile],
    out_dir: Path,
    *,
    run_id: str | None = None,
    resume_run_id: str | None = None,
    progress: ProgressSink | None = None,
    skipped: Sequence[SkippedInput] = (),
    listing: blobinputs.ListingStart | None = None,
) -> dict[str, Any]:
    """One run as the process's only work (`topn run`, `topn resume`); the pool is released after.

    `skipped`: what `--skip-unreadable` left out of a new run (a resumed run has its own, journalled).
    """
    resume: RunRecord | None = None
    if resume_run_id is not None:
        resume = await services.journal.load_run(resume_run_id)  # what the journal holds now
    try:
        summary = await run_pipeline(
            services.settings,
            inputs,
            services.clients,
            out_dir,
            pool=services.pool,
            run_id=run_id,
            journal=services.journal,
            progress=progress,
            resume=resume,
            skipped=skipped,
            listing=listing,
        )
    except BaseException as error:
        if not leaves_run_resumable(error):
            await release_pool(services.pool, services.settings.pool)
        raise
    await release_pool(services.pool, services.settings.pool)
    return summary


async def start_blob_listing(
    services: Services, local: Sequence[InputFile], arguments: Sequence[str], out_dir: Path
) -> blobinputs.ListingStart:
    """`topn run az://…`: the local inputs and each prefix's first page (InputError: exit 2, nothing created).

    The run lists the rest while its first tasks run (run/listing.py).
    """
    start = await blobinputs.start_listing(services.settings, services.clients.blob_service, local, arguments)
    await anyio.to_thread.run_sync(check_result_paths_fit, out_dir, [item.relpath for item in start.inputs])
    return start


async def release_pool(keeper: PoolKeeper, settings: PoolSettings) -> None:
    """After a finished run: delete the pool if config says so, or if this process made it and it never ran.

    Never for a run left to resume: its pool is what `topn resume` goes on with.
    """
    if settings.delete_after_run or keeper.broken():
        with anyio.move_on_after(CLEANUP_TIMEOUT_S, shield=True):
            await keeper.delete()


async def read_live_job(settings: Settings, run_id: str, job_number: int = 1) -> dict[str, Any]:
    """The run's current job as Batch sees it (state, task counts), or why not; starts nothing."""
    job_id = naming.job_id(run_id, job_number)
    if settings.local.enabled and endpoint_port(settings.batch.endpoint) == 0:
        recorded = local_services.read_recorded(settings).get(local_services.EMULATOR)
        if recorded is None:
            return {"job_id": job_id, "reachable": False, "note": "no local services (run `topn local up`)"}
        endpoint = local_services.with_port(settings.batch.endpoint, recorded.endpoint)
        settings = replace(settings, batch=replace(settings.batch, endpoint=endpoint))
    try:
        with anyio.fail_after(LIVE_JOB_TIMEOUT_S):
            async with AsyncExitStack() as stack:
                clients = await open_clients(settings, stack)
                job = await clients.batch.get_job(job_id)
                counts = (await clients.batch.get_job_task_counts(job_id)).task_counts
    except ResourceNotFoundError:
        return {"job_id": job_id, "reachable": True, "exists": False}
    except (HttpResponseError, TimeoutError, OSError, TopnError) as error:
        return {"job_id": job_id, "reachable": False, "note": redact_text(str(error).splitlines()[0][:200])}
    return {
        "job_id": job_id,
        "reachable": True,
        "exists": True,
        "state": job_state(job).value,
        "tasks": {
            "active": counts.active,
            "running": counts.running,
            "completed": counts.completed,
            "succeeded": counts.succeeded,
            "failed": counts.failed,
        },
    }
