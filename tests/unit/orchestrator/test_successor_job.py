"""A resume whose job ended under the run: when it needs a successor job, its id, and what is journalled."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator import naming
from orchestrator.azure.states import JobState
from orchestrator.journal import Journal, JournalError
from orchestrator.run.context import RunJobs
from orchestrator.run.resume import job_end_reason, unsubmitted_task_ids
from tests.unit.orchestrator.test_journal import RUN, make_inputs


@pytest.mark.parametrize(
    ("state", "reason", "expected"),
    [
        (JobState.ACTIVE, None, None),
        (JobState.DISABLED, None, None),  # whoever disabled it can enable it again
        (JobState.COMPLETED, "AllTasksComplete", None),  # it holds every result: collect them there
        (JobState.TERMINATING, "AllTasksComplete", None),
        (JobState.COMPLETED, "MaxWallClockTimeExpiry", "MaxWallClockTimeExpiry"),
        (JobState.COMPLETED, "UserTerminate", "UserTerminate"),
        (JobState.TERMINATING, "UserTerminate", "UserTerminate"),
        (JobState.COMPLETED, None, "completed"),
        (JobState.DELETING, "AllTasksComplete", "JobBeingDeleted"),  # its tasks go with it
        (JobState.DELETING, None, "JobBeingDeleted"),
    ],
)
def test_a_successor_is_needed_only_for_a_job_that_ended_before_its_tasks(
    state: JobState, reason: str | None, expected: str | None
) -> None:
    assert job_end_reason(state, reason) == expected


def test_job_ids_are_the_runs_first_then_numbered_successors() -> None:
    run_id = "20261206t112614z-0a1b2c"
    assert naming.job_id(run_id) == naming.job_id(run_id, 1) == f"topn-{run_id}"
    assert naming.job_id(run_id, 2) == f"topn-{run_id}-j2"
    with pytest.raises(ValueError, match="starts at 1"):
        naming.job_id(run_id, 0)
    assert naming.run_id_of_job("blocker") is None
    assert naming.run_id_of_job("topn-not-a-run-j2") == "not-a-run-j2"  # not a successor of a run id


@given(
    stamp=st.datetimes(datetime(2000, 1, 1), datetime(9999, 1, 1), timezones=st.just(UTC)),
    random_hex=st.text("0123456789abcdef", min_size=6, max_size=6),
    number=st.integers(1, 10_000),
)
def test_every_job_of_a_run_names_its_run(stamp: datetime, random_hex: str, number: int) -> None:
    run_id = naming.new_run_id(stamp, random_hex)
    job = naming.job_id(run_id, number)
    assert naming.run_id_of_job(job) == run_id
    assert len(job) <= 64  # Batch's limit for a job id


def test_run_jobs_track_the_current_job_and_where_each_unit_is() -> None:
    jobs = RunJobs("r")
    assert (jobs.current, jobs.every_job(), jobs.holding("t000000")) == ("topn-r", ["topn-r"], "topn-r")
    jobs.move(2, ["t000001", "t000002"])
    assert jobs.current == "topn-r-j2" and jobs.every_job() == ["topn-r", "topn-r-j2"]
    assert (jobs.holding("t000000"), jobs.holding("t000002")) == ("topn-r", "topn-r-j2")
    jobs.move(3, ["t000002"])
    assert jobs.every_job() == ["topn-r", "topn-r-j2", "topn-r-j3"]
    assert (jobs.holding("t000001"), jobs.holding("t000002")) == ("topn-r-j2", "topn-r-j3")


async def test_moved_units_are_journalled_with_their_job_and_count_as_unsubmitted(
    tmp_path: Path,
) -> None:
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, make_inputs(3))
        await journal.record_tasks_submitted(RUN, ["t000000", "t000001", "t000002"])
        await journal.record_task_completed(RUN, "t000000", {"status": "succeeded", "exit_code": 0})
        with pytest.raises(JournalError, match="t000000"):
            # A finished unit stays in the job where it finished (its task files are read there).
            await journal.record_successor_job(RUN, 2, ["t000000", "t000001"])
        with pytest.raises(ValueError, match="2 or more"):
            await journal.record_successor_job(RUN, 1, ["t000001"])
        with pytest.raises(JournalError, match="t000777"):
            await journal.record_successor_job(RUN, 2, ["t000777"])
        await journal.record_successor_job(RUN, 2, ["t000001", "t000002"])
        await journal.record_tasks_submitted(RUN, ["t000001"])  # added to the successor
    async with await Journal.open(tmp_path) as journal:
        record = await journal.load_run(RUN)
    assert record is not None
    assert dict(record.task_jobs) == {"t000001": 2, "t000002": 2} and record.job_number == 2
    assert unsubmitted_task_ids(record) == ("t000002",)
    assert record.submitted_task_ids == {"t000000", "t000001"}


async def test_a_run_that_never_moved_is_in_its_first_job(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, make_inputs(2))
        record = await journal.load_run(RUN)
    assert record is not None and record.job_number == 1 and dict(record.task_jobs) == {}
