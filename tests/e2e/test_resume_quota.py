"""A resume whose successor job meets the account's active-jobs quota waits for it, never fails.

The emulator allows 2 active jobs. topn's tasks wait in a pool whose only slot another job holds;
topn is killed once they are in, a user terminates the run's job, and a third job fills the quota.
`topn resume` journals the successor (`job.superseded`) and meets 409
`ActiveJobAndScheduleQuotaReached` creating it: with a short deadline it stops resumable (exit 1,
the run not failed, nothing cleaned up); the next resume waits (`job.quota_wait`) until the test
frees the quota, then finishes every file in the successor. Before the fix both were exit 2 and
the run was recorded FAILED.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import StartEmulator, StorageEndpoint
from tests.e2e.fault_support import check_summary, job_tasks, run_topn_live, write_corpus
from tests.e2e.test_crash_resume import crash_environment, load_record, run_id_in, run_until
from tests.e2e.test_resume import event_named
from tests.held_slot import held_slot

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(240)]

FILES = 3


async def test_a_successor_job_refused_by_the_job_quota_waits_for_room_and_finishes(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator(["--max-active-jobs", "2"])
    texts = write_corpus(tmp_path / "in", FILES, seed=83)
    async with held_slot(batch, tmp_path) as held:
        env = crash_environment(
            batch, azurite, tmp_path, TOPN_POOL_ID=held.pool_id, TOPN_DAEMON_QUOTA_BACKOFF_MAX_S="0.5"
        )
        first, killed = await run_until(
            ["run", "in", "--out", "out", "--json"], tmp_path, env, event_named("tasks.submitted")
        )
        assert killed and first.exit_code == -9, first.stderr[-3000:]
        run_id = run_id_in(first)
        first_job, successor = f"topn-{run_id}", f"topn-{run_id}-j2"
        # A user ends the run's job; another job takes its place under the quota (blocker + filler).
        await held.terminate_and_wait(first_job)
        filler = await held.fill_job()

        # Within a short deadline the quota never frees: resumable, exit 1, the run not failed.
        short = {**env, "TOPN_RUN_RUN_TIMEOUT_S": "4"}
        stopped, _ = await run_until(["resume", run_id, "--json"], tmp_path, short, None)
        assert stopped.exit_code == 1, stopped.stderr[-3000:]
        names = [event["event"] for event in stopped.events()]
        assert "job.superseded" in names and "job.quota_wait" in names, names
        (failed,) = [event for event in stopped.events() if event["event"] == "run.failed"]
        assert (failed["error_type"], failed["resumable"]) == ("RunDeadlineError", True), failed
        record = await load_record(tmp_path / ".topn", run_id)
        assert record.state not in ("FAILED", "CANCELLED") and record.job_number == 2
        assert record.last_error is not None and record.last_error["resumable"] is True
        assert await held.job_ids(first_job) == [first_job]  # the successor is not made yet

        # The next resume waits on the quota until the filler goes and the slot frees.
        waits: list[dict[str, Any]] = []

        async def free_the_quota_on_first_wait(event: dict[str, Any]) -> None:
            if event["event"] != "job.quota_wait":
                return
            waits.append(event)
            if len(waits) == 1:
                await held.client.begin_delete_job(filler)
                await anyio.Path(held.release).touch()

        with anyio.fail_after(180):
            final = await run_topn_live(
                ["resume", run_id, "--json"], tmp_path, env, free_the_quota_on_first_wait
            )
        assert final.exit_code == 0, final.stderr[-3000:]
        assert waits and all(wait["job_id"] == successor for wait in waits)
        assert [wait["refusals"] for wait in waits] == list(range(1, len(waits) + 1))
        assert check_summary(final.summary(), texts) == []
        assert await held.job_ids(first_job) == [first_job, successor]
        tasks = await job_tasks(batch.endpoint, batch.account_name, batch.account_key, successor)
        assert {(task.state, task.execution_info.result) for task in tasks} == {("completed", "success")}
        assert len(tasks) == FILES
    after = await load_record(tmp_path / ".topn", run_id)
    assert after.state == "SUCCEEDED"
    assert "FAILED" not in [change.state for change in after.state_history]
