"""The journal's range units (schema "10"): which work units count which byte range of a split input."""

from __future__ import annotations

from pathlib import Path

from orchestrator.journal import JOURNAL_FILENAME, Journal, JournalInput, JournalRange
from orchestrator.run.resume import failed_relpaths, retried_task_ids, unsubmitted_task_ids
from orchestrator.service.status import describe_run, describe_summary

RUN = "20261206t150000z-5p1175"


def inputs() -> list[JournalInput]:
    """a.txt (task t000000), big.txt split over t000001..t000003 (its own task: the first range's), c.txt."""
    return [
        JournalInput(index, relpath, f"/data/{relpath}", size, 1, None, f"runs/{RUN}/{relpath}", task_id)
        for index, (relpath, size, task_id) in enumerate(
            [("a.txt", 10, "t000000"), ("big.txt", 300, "t000001"), ("c.txt", 10, "t000004")]
        )
    ]


RANGES = [
    JournalRange("t000001", 1, 0, 100),
    JournalRange("t000002", 1, 100, 200),
    JournalRange("t000003", 1, 200, 300),
]


async def test_a_split_inputs_range_units_read_back_in_file_order(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path / JOURNAL_FILENAME) as journal:
        await journal.create_run(RUN, {}, inputs(), ranges=list(reversed(RANGES)))
        record = await journal.load_run(RUN)
    assert record is not None
    assert dict(record.ranges) == {part.task_id: part for part in RANGES}
    assert record.task_ids == ("t000000", "t000001", "t000002", "t000003", "t000004")
    big = record.inputs[1]
    assert [record.inputs_by_task[part.task_id] for part in RANGES] == [(big,), (big,), (big,)]
    assert record.inputs_by_task["t000004"] == (record.inputs[2],)
    assert unsubmitted_task_ids(record) == record.task_ids


async def test_a_range_units_outcome_is_recorded_and_a_failed_range_runs_again(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path / JOURNAL_FILENAME) as journal:
        await journal.create_run(RUN, {}, inputs(), ranges=RANGES)
        await journal.record_state(RUN, "RUNNING")
        await journal.record_tasks_submitted(RUN, ["t000000", "t000001", "t000002", "t000003", "t000004"])
        ok = {"status": "succeeded", "exit_code": 0}
        for task_id in ("t000000", "t000001", "t000003", "t000004"):
            await journal.record_task_completed(RUN, task_id, ok)
        failed = {"status": "failed", "exit_code": 2, "failure_code": None, "message": "range failed"}
        await journal.record_task_completed(RUN, "t000002", failed)
        await journal.record_file_failed(RUN, "big.txt", {"message": "cannot read blob (changed)"})
        record = await journal.load_run(RUN)
        assert record is not None
        assert failed_relpaths(record) == ("big.txt",)
        (summary,) = await journal.list_run_summaries()
        assert describe_summary(summary)["tasks"] == describe_run(record)["tasks"] == 5
        assert describe_summary(summary)["files_failed"] == describe_run(record)["files_failed"] == 1
        # Run again: the failed range, and its input's failure is forgotten with it.
        assert "t000002" in retried_task_ids(record, retry_failed=True)
        await journal.record_tasks_reopened(RUN, {"t000002": 1}, job_number=1, state="RUNNING")
        reopened = await journal.load_run(RUN)
    assert reopened is not None
    assert "t000002" not in reopened.completed and "big.txt" not in reopened.file_failures
    assert reopened.task_generations == {"t000002": 1}
