"""Which failed work units `topn resume` runs again, and what the journal forgets so that it does."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.azure.states import JobState
from orchestrator.errors import UsageError
from orchestrator.journal import Journal
from orchestrator.run.resume import (
    failed_by_infrastructure,
    failed_relpaths,
    job_end_reason,
    retried_task_ids,
    unsubmitted_task_ids,
)
from orchestrator.run.retrying import reopen_for_retry
from tests.unit.orchestrator.test_journal import RUN, make_inputs

DOWNLOAD_CODES = ["BlobNotFound", "BlobAccessDenied", "BlobDownloadTimedOut", "BlobDownloadMiscError"]
FAILED_EXIT_7: dict[str, Any] = {"status": "failed", "exit_code": 7, "failure_code": "FailureExitCode"}
SUCCEEDED: dict[str, Any] = {"status": "succeeded", "exit_code": 0}


@pytest.mark.parametrize("code", DOWNLOAD_CODES)
def test_a_resource_file_not_downloaded_is_an_infrastructure_failure(code: str) -> None:
    assert failed_by_infrastructure({"status": "failed", "exit_code": None, "failure_code": code})


def test_the_nodes_upload_failure_is_one_and_other_failures_are_not() -> None:
    assert failed_by_infrastructure({"status": "failed", "exit_code": 3, "failure_code": "FailureExitCode"})
    assert not failed_by_infrastructure(FAILED_EXIT_7)
    assert not failed_by_infrastructure(
        {"status": "failed", "exit_code": 2, "failure_code": "FailureExitCode"}
    )
    assert not failed_by_infrastructure({"status": "failed", "exit_code": None, "failure_code": "TaskEnded"})
    assert not failed_by_infrastructure(SUCCEEDED)


@given(
    exit_code=st.one_of(st.none(), st.integers(-1, 300)),
    code=st.one_of(st.none(), st.sampled_from([*DOWNLOAD_CODES, "FailureExitCode", "TaskEnded", "Unknown"])),
)
def test_an_infrastructure_failure_is_exactly_a_download_code_or_exit_3(
    exit_code: int | None, code: str | None
) -> None:
    outcome = {"status": "failed", "exit_code": exit_code, "failure_code": code}
    assert failed_by_infrastructure(outcome) == (code in DOWNLOAD_CODES or exit_code == 3)


def test_a_job_that_ended_with_its_tasks_takes_none_new_so_tasks_to_add_need_a_successor() -> None:
    assert job_end_reason(JobState.COMPLETED, "AllTasksComplete") is None
    assert job_end_reason(JobState.COMPLETED, "AllTasksComplete", tasks_to_add=True) == "AllTasksComplete"
    assert job_end_reason(JobState.ACTIVE, None, tasks_to_add=True) is None


async def journal_with_outcomes(
    tmp_path: Path, outcomes: Mapping[str, Mapping[str, Any]], state: str
) -> Journal:
    journal = await Journal.open(tmp_path)
    await journal.create_run(
        RUN, {"run": {"delete_run_blobs": False}}, make_inputs(4), out_dir=tmp_path / "out"
    )
    await journal.record_tasks_submitted(RUN, ["t000000", "t000001", "t000002", "t000003"])
    for task_id, outcome in outcomes.items():
        await journal.record_task_completed(RUN, task_id, outcome)
    path = ["PREPARING", "SUBMITTING", "RUNNING", "COLLECTING", "CLEANING", "FAILED"]
    for step in path[: path.index(state) + 1]:
        await journal.record_state(RUN, step)
    return journal


async def test_infrastructure_failures_reopen_a_failed_run_in_running_and_others_stay(tmp_path: Path) -> None:
    download = {"status": "failed", "exit_code": None, "failure_code": "BlobDownloadMiscError"}
    upload = {"status": "failed", "exit_code": 3, "failure_code": "FailureExitCode"}
    outcomes = {"t000000": SUCCEEDED, "t000001": download, "t000002": FAILED_EXIT_7, "t000003": upload}
    journal = await journal_with_outcomes(tmp_path, outcomes, "FAILED")
    async with journal:
        record = await journal.load_run(RUN)
        assert record is not None
        await journal.record_file_failed(RUN, "a/file 1.txt", {"message": "download failed"})
        await journal.record_task_generations(RUN, {"t000003": 1})  # re-issued once already
        record = await journal.load_run(RUN)
        assert record is not None
        assert retried_task_ids(record) == ("t000001", "t000003")
        assert retried_task_ids(record, retry_failed=True) == ("t000001", "t000002", "t000003")
        reopened = await reopen_for_retry(journal, record, retry_failed=False)
    assert reopened.state == "RUNNING" and not reopened.is_finished
    assert [change.state for change in reopened.state_history][-2:] == ["FAILED", "RUNNING"]
    assert set(reopened.completed) == {"t000000", "t000002"}
    assert dict(reopened.task_generations) == {"t000001": 1, "t000003": 2}
    assert unsubmitted_task_ids(reopened) == ("t000001", "t000003")
    assert "a/file 1.txt" not in reopened.file_failures and "a/file 1.txt" not in failed_relpaths(reopened)
    assert retried_task_ids(reopened) == ()  # nothing left to reopen: a second resume changes nothing


async def test_nothing_to_retry_changes_nothing(tmp_path: Path) -> None:
    journal = await journal_with_outcomes(
        tmp_path, {"t000000": SUCCEEDED, "t000001": FAILED_EXIT_7}, "FAILED"
    )
    async with journal:
        record = await journal.load_run(RUN)
        assert record is not None
        assert await reopen_for_retry(journal, record, retry_failed=False) is record
        again = await journal.load_run(RUN)
    assert again == record


async def test_a_run_whose_blobs_went_at_clean_up_is_not_reopened(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {"run": {"delete_run_blobs": True}}, make_inputs(1), out_dir=tmp_path)
        await journal.record_task_completed(RUN, "t000000", FAILED_EXIT_7)
        for step in ("PREPARING", "SUBMITTING", "RUNNING", "COLLECTING", "CLEANING", "FAILED"):
            await journal.record_state(RUN, step)
        record = await journal.load_run(RUN)
        assert record is not None
        with pytest.raises(UsageError, match="delete_run_blobs"):
            await reopen_for_retry(journal, record, retry_failed=True)
        assert await journal.load_run(RUN) == record


async def test_the_journal_refuses_a_generation_below_one(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, make_inputs(1))
        with pytest.raises(ValueError, match="1 or more"):
            await journal.record_tasks_reopened(RUN, {"t000000": 0}, job_number=1, state=None)
