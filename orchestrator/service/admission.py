"""A batch's way into Batch, and the daemon's jobs after it: admission under the job quota, clean-up.

Admission creates the batch's job (`noaction`, exactly as a run creates it, so the run then finds it
with `JobExists`) before the run starts. Active jobs are an account quota: a 409
`ActiveJobAndScheduleQuotaReached` is a normal condition to wait out, so the batch stays queued in
the journal and is tried again with a doubling backoff - never a failure.

Jobs never end by themselves: a run switches its job to `terminatejob` after its last task, and
the janitor here deletes the daemon's completed jobs `job_retention_s` after they ended, and
terminates and deletes `topn-` jobs on the daemon's pool that the journal does not know (a crash
between a job's creation and its batch's journal row) once they are older than a grace period.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

import structlog
from azure.batch.models import BatchMetadataItem
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from orchestrator import naming
from orchestrator.azure.clients import Clients
from orchestrator.azure.quota import ACTIVE_JOBS_QUOTA_CODE
from orchestrator.azure.quota import quota_backoff_s as quota_backoff_s  # one rule for admission and resumes
from orchestrator.azure.retry import error_code_of, retry_call
from orchestrator.azure.sas import utc_now
from orchestrator.azure.states import JobState, job_state
from orchestrator.run.provisioning import job_create_options
from orchestrator.settings import Settings

JOB_PREFIX = naming.job_id("")

log = structlog.get_logger()

JOB_EXISTS_CODE = "JobExists"
OWNER_METADATA = "topn-daemon"


class Admission(enum.Enum):
    CREATED = "created"
    EXISTS = "exists"  # a resumed batch: its job is still there
    QUOTA = "quota"  # the account's active-jobs quota is full: wait and try again


def daemon_owner(settings: Settings) -> str:
    """Which daemon a job belongs to: its state folder (where its journal is), as a short hash.

    The CLI resolves the state folder once, before the event loop; no file system call here.
    """
    return hashlib.sha256(str(settings.local.state_dir).encode()).hexdigest()[:16]


async def admit(settings: Settings, clients: Clients, run_id: str) -> Admission:
    """Create the batch's job; QUOTA when the account's active-jobs quota refuses it."""
    job = job_create_options(settings.run, naming.job_id(run_id), settings.pool.id)
    # Reconciliation only ever touches jobs marked as this daemon's, never another topn's on the pool.
    job.metadata = [BatchMetadataItem(name=OWNER_METADATA, value=daemon_owner(settings))]
    try:
        await retry_call(settings.retry, "create_job", lambda: clients.batch.create_job(job))
    except HttpResponseError as error:
        # Both are 409s (azure-core raises ResourceExistsError for either): the code tells them apart.
        code = error_code_of(error)
        if code == ACTIVE_JOBS_QUOTA_CODE:
            return Admission.QUOTA
        if isinstance(error, ResourceExistsError) and code in (JOB_EXISTS_CODE, None):
            return Admission.EXISTS
        raise
    return Admission.CREATED


@dataclass(frozen=True)
class JobView:
    """What the janitor needs of one job."""

    job_id: str
    state: JobState
    pool_id: str | None
    created_at: datetime | None
    ended_at: datetime | None
    owner: str | None = None  # the `topn-daemon` metadata: which daemon created the job


def jobs_to_delete(
    jobs: Collection[JobView],
    known_run_ids: Collection[str],
    pool_id: str,
    *,
    owner: str,
    now: datetime,
    retention_s: float,
    grace_s: float,
) -> tuple[list[str], list[str]]:
    """(completed jobs past retention, unknown jobs of this daemon past the grace) on the daemon's pool."""
    expired: list[str] = []
    unknown: list[str] = []
    for job in jobs:
        if not job.job_id.startswith(JOB_PREFIX) or job.pool_id != pool_id:
            continue
        if job.state == JobState.DELETING:
            continue
        run_id = naming.run_id_of_job(job.job_id) or ""  # a resume's successor job is its run's too
        if run_id not in known_run_ids:
            if (
                job.owner == owner
                and job.created_at is not None
                and (now - job.created_at).total_seconds() >= grace_s
            ):
                unknown.append(job.job_id)
            continue
        ended = job.ended_at
        if (
            job.state == JobState.COMPLETED
            and ended is not None
            and (now - ended).total_seconds() >= retention_s
        ):
            expired.append(job.job_id)
    return expired, unknown


async def list_jobs(settings: Settings, clients: Clients) -> list[JobView]:
    async def listing() -> list[JobView]:
        views = []
        async for job in clients.batch.list_jobs():
            execution = getattr(job, "execution_info", None)
            pool_info = getattr(job, "pool_info", None)
            owners = [item.value for item in job.metadata or [] if item.name == OWNER_METADATA]
            views.append(
                JobView(
                    job_id=str(job.id),
                    state=job_state(job),
                    pool_id=getattr(pool_info, "pool_id", None),
                    created_at=getattr(job, "creation_time", None),
                    ended_at=getattr(execution, "end_time", None),
                    owner=owners[0] if owners else None,
                )
            )
        return views

    return await retry_call(settings.retry, "list_jobs", listing)


async def tidy_jobs(settings: Settings, clients: Clients, known_run_ids: Collection[str]) -> int:
    """Delete expired completed jobs; terminate and delete unknown ones (each with an event). Returns the
    number of active jobs seen (the `topn_active_jobs` gauge)."""
    jobs = await list_jobs(settings, clients)
    expired, unknown = jobs_to_delete(
        jobs,
        known_run_ids,
        settings.pool.id,
        owner=daemon_owner(settings),
        now=utc_now(),
        retention_s=settings.daemon.job_retention_s,
        grace_s=settings.daemon.reconcile_grace_s,
    )
    for job_id in unknown:
        log.warning("daemon.job_reconciled", job_id=job_id, action="deleted")
        await _delete(settings, clients, job_id)
    for job_id in expired:
        log.info("daemon.job_deleted", job_id=job_id)
        await _delete(settings, clients, job_id)
    return sum(1 for job in jobs if job.state in (JobState.ACTIVE, JobState.TERMINATING))


async def _delete(settings: Settings, clients: Clients, job_id: str) -> None:
    # Deleting an active job terminates its tasks first; the service does both.
    with contextlib.suppress(ResourceNotFoundError):
        await retry_call(settings.retry, "delete_job", lambda: clients.batch.begin_delete_job(job_id))
