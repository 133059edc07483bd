"""`topn resume` runs failed work units again: those the infrastructure failed, or all with --retry-failed.

A task that failed because a resource file could not be downloaded, or because the node could not
upload an output (exit status 3), failed for Storage, not for its file: after an outage longer than
the retry budget those files are what the "resumable" message promised to finish. Before the run is
driven again, the journal forgets those units' outcomes (docs/journal.md, "Failed tasks run again"):
each gets its next task generation (`<id>-g<n>`) in the run's current job, so the pipeline adds it
with fresh SAS and awaits it like any unfinished unit; a finished or collecting run goes back to
RUNNING. Units still in flight whose task the job shows failed by the infrastructure are re-issued
by renewal.py once the run is resumed.
"""

from __future__ import annotations

import structlog

from orchestrator.errors import UsageError
from orchestrator.journal import Journal, RunRecord
from orchestrator.run.resume import retried_task_ids

log = structlog.get_logger()

# States a run goes back from to RUNNING when units run again: it has nothing left to watch there.
_REOPENED_STATES = frozenset({"COLLECTING", "CLEANING", "FAILED"})


def reopen_problem(record: RunRecord) -> str | None:
    """Why a run's failed units cannot run again, or None: its blobs went at clean-up."""
    run = record.settings_snapshot.get("run")
    deleted_blobs = isinstance(run, dict) and run.get("delete_run_blobs") is True
    if deleted_blobs and record.state.upper() in ("CLEANING", "FAILED"):
        return (
            f"run {record.run_id} deleted its blobs at clean-up ([run] delete_run_blobs = true), so its "
            "saved results cannot be merged again; run the failed files again with `topn run`"
        )
    return None


async def reopen_for_retry(journal: Journal, record: RunRecord, *, retry_failed: bool) -> RunRecord:
    """Journal the run's failed units as to run again (see the module); the record as it is then."""
    units = retried_task_ids(record, retry_failed=retry_failed)
    if not units:
        return record
    problem = reopen_problem(record)
    if problem is not None:
        raise UsageError(problem)
    generations = {task_id: record.task_generations.get(task_id, 0) + 1 for task_id in units}
    state = "RUNNING" if record.state.upper() in _REOPENED_STATES else None
    await journal.record_tasks_reopened(record.run_id, generations, job_number=record.job_number, state=state)
    with structlog.contextvars.bound_contextvars(run_id=record.run_id):
        log.info(
            "tasks.retried",
            tasks=len(units),
            reason="retry_failed" if retry_failed else "infrastructure",
            from_state=record.state,
        )
    reloaded = await journal.load_run(record.run_id)
    assert reloaded is not None, "a run the journal just wrote to is there"
    return reloaded
