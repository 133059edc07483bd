"""`topn status` without a run id: summaries counted in SQL, a bounded number of queries, same rows.

The oracle is the whole-record path (`describe_run` on `load_run`), which applies the salvage rules
of orchestrator/run/resume.py in Python; the summaries must agree with it on every run.
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.cli import render_runs
from orchestrator.journal import JOURNAL_FILENAME, Journal, RunRecord
from orchestrator.service.status import describe_run, describe_summary, recent_runs, recent_runs_in
from tests.journal_factory import run_id_of, varied_journal, write_varied_run

T = TypeVar("T")

STATUS_RECENT_RUNS = 20


async def count_statements(journal: Journal, work: Callable[[], Awaitable[T]]) -> tuple[T, list[str]]:
    """What `work` returns, and every SQL statement it made the journal's connection execute."""
    statements: list[str] = []
    connection: sqlite3.Connection = journal._connection  # type: ignore[assignment]
    connection.set_trace_callback(statements.append)
    try:
        result = await work()
    finally:
        connection.set_trace_callback(None)
    return result, statements


def expected_row(record: RunRecord) -> dict[str, Any]:
    """The keys of a summary row, as the whole-record path describes the run."""
    described = describe_run(record)
    return {key: described[key] for key in SUMMARY_KEYS}


SUMMARY_KEYS = (
    "run_id",
    "state",
    "finished",
    "created_at",
    "updated_at",
    "out_dir",
    "files",
    "bytes",
    "tasks",
    "files_succeeded",
    "files_failed",
    "tasks_succeeded",
    "tasks_failed",
    "tasks_in_flight",
)


@pytest.fixture(scope="module")
def thousand_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("status") / JOURNAL_FILENAME
    run_ids = anyio.run(varied_journal, path, 1000)
    return path, run_ids


async def test_the_status_list_makes_the_same_few_queries_for_one_run_or_a_thousand(
    thousand_runs: tuple[Path, list[str]], tmp_path: Path
) -> None:
    path, run_ids = thousand_runs
    small = tmp_path / JOURNAL_FILENAME
    await varied_journal(small, 1)
    async with await Journal.open(small) as journal:
        one, for_one = await count_statements(
            journal, lambda: recent_runs(journal, STATUS_RECENT_RUNS, False)
        )
    async with await Journal.open(path) as journal:
        latest, for_latest = await count_statements(
            journal, lambda: recent_runs(journal, STATUS_RECENT_RUNS, False)
        )
        every, for_every = await count_statements(journal, lambda: journal.list_run_summaries())
    assert len(one) == 1 and len(latest) == STATUS_RECENT_RUNS and len(every) == 1000
    # BEGIN, four aggregate queries, COMMIT: however many runs there are or are asked for.
    assert len(for_one) == len(for_latest) == len(for_every) == 6, for_every
    assert [run["run_id"] for run in latest] == run_ids[-STATUS_RECENT_RUNS:]


async def test_the_json_list_loads_only_the_runs_it_shows(
    thousand_runs: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """`topn status --json` shows whole records of the latest runs only: its queries do not grow."""
    path, _ = thousand_runs
    smaller = tmp_path / JOURNAL_FILENAME
    await varied_journal(smaller, STATUS_RECENT_RUNS + 5)
    counts = []
    for journal_file in (smaller, path):
        async with await Journal.open(journal_file) as journal:
            runs, statements = await count_statements(
                journal, lambda journal=journal: recent_runs(journal, STATUS_RECENT_RUNS, True)
            )
        assert len(runs) == STATUS_RECENT_RUNS and "stages" in runs[0]
        counts.append(len(statements))
    assert counts[0] == counts[1]


async def test_every_summary_row_equals_what_the_whole_record_gives(
    thousand_runs: tuple[Path, list[str]],
) -> None:
    path, run_ids = thousand_runs
    async with await Journal.open(path) as journal:
        rows = [describe_summary(summary) for summary in await journal.list_run_summaries()]
        # The 40 runs written through the API, and a sample of their clones.
        sample = run_ids[:40] + random.Random(3).sample(run_ids[40:], 60)
        records = {record.run_id: record for record in await journal.load_runs(sample)}
    assert [row["run_id"] for row in rows] == run_ids
    by_id = {row["run_id"]: row for row in rows}
    assert [by_id[run_id] for run_id in sample] == [expected_row(records[run_id]) for run_id in sample]
    # The sample holds every kind of count the rules distinguish (else the comparison proves little).
    for key in ("files_failed", "tasks_failed", "tasks_succeeded", "tasks_in_flight", "files_succeeded"):
        assert any(by_id[run_id][key] > 0 for run_id in sample), key
    assert {by_id[run_id]["finished"] for run_id in sample} == {True, False}


async def test_the_status_table_is_the_one_the_whole_records_gave(
    thousand_runs: tuple[Path, list[str]],
) -> None:
    path, _ = thousand_runs
    async with await Journal.open(path) as journal:
        table = render_runs(await recent_runs(journal, STATUS_RECENT_RUNS, False))
        # What `topn status` did before: every run loaded whole, the last 20 described.
        before = render_runs(
            [describe_run(record) for record in await journal.list_runs()][-STATUS_RECENT_RUNS:]
        )
    assert table == before
    assert table.count("\n") > STATUS_RECENT_RUNS


async def test_a_missing_journal_is_no_runs_and_is_not_created(tmp_path: Path) -> None:
    journal_file = tmp_path / "state" / JOURNAL_FILENAME
    assert await recent_runs_in(journal_file, STATUS_RECENT_RUNS, False) == []
    assert not journal_file.parent.exists()


async def test_a_limit_picks_the_latest_runs_and_a_negative_one_is_refused(tmp_path: Path) -> None:
    run_ids = await varied_journal(tmp_path / JOURNAL_FILENAME, 5)
    async with await Journal.open(tmp_path) as journal:
        assert [summary.run_id for summary in await journal.list_run_summaries(2)] == run_ids[-2:]
        assert await journal.list_run_summaries(0) == []
        with pytest.raises(ValueError, match="negative"):
            await journal.list_run_summaries(-1)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_summaries_follow_the_salvage_rules_for_any_run(seed: int) -> None:
    """Any run the journal can hold is counted in SQL as the Python rules count it."""

    async def check(folder: Path) -> None:
        rng = random.Random(seed)
        async with await Journal.open(folder) as journal:
            run_ids = [run_id_of(number) for number in range(3)]
            for run_id in run_ids:
                await write_varied_run(journal, run_id, rng)
            rows = [describe_summary(summary) for summary in await journal.list_run_summaries()]
            records = await journal.load_runs(run_ids)
        assert rows == [expected_row(record) for record in records]

    # A fresh journal per example (hypothesis may replay a seed while shrinking).
    with tempfile.TemporaryDirectory(prefix="topn-status-") as folder:
        anyio.run(check, Path(folder))


def test_the_summary_queries_search_the_listed_runs_and_scan_no_table(
    thousand_runs: tuple[Path, list[str]],
) -> None:
    """Their cost follows the runs listed, not the journal: no input, task or download table is scanned."""
    from orchestrator.journal import queries

    path, _ = thousand_runs
    connection = sqlite3.connect(path)
    try:
        for query in (queries._RUNS, queries._FILE_COUNTS, queries._TASK_COUNTS, queries._IN_FLIGHT):
            steps = [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {query}", {"limit": 20})]
            scans = [step for step in steps if step.startswith("SCAN ")]
            # `runs` is read backwards along its key and stops at the limit; `recent` is those runs.
            assert scans and all(
                scan in ("SCAN recent", "SCAN runs USING INDEX sqlite_autoindex_runs_1") for scan in scans
            ), steps
    finally:
        connection.close()
