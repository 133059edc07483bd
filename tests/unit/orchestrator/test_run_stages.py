"""Pure parts of the run's stages: the run context's work units, the journal's view of them, the
resumed job's wall clock, the summary's totals, and the errors a stopped run is explained with."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from orchestrator.azure.clients import BATCH, Clients, RequestCounter
from orchestrator.azure.retry import RetryPolicy, retry_call
from orchestrator.errors import InputError, RunFailedError, ServiceUnavailableError
from orchestrator.inputs import InputFile
from orchestrator.journal import JournalInput, RunRecord
from orchestrator.results import file_entry
from orchestrator.run.context import FileResult, RunContext, RunLedger, journal_inputs, new_run_context
from orchestrator.run.failures import RunDeadlineError, explain
from orchestrator.run.renewal import resumed_job_constraints
from orchestrator.run.summary import run_summary, written_summary
from orchestrator.service.poolkeeper import PoolKeeper
from orchestrator.settings import load_settings

PROJECT = Path(__file__).resolve().parents[3]
SETTINGS = load_settings(
    PROJECT / "config" / "local.toml",
    {"TOPN_BATCH_ENDPOINT": "http://127.0.0.1:9", "TOPN_STORAGE_BLOB_ENDPOINT": "http://127.0.0.1:7/acct"},
)


class _NoClients:
    """Stands in for Clients where a stage only reads the request counter."""

    def __init__(self) -> None:
        self.requests = RequestCounter()


def _keeper() -> PoolKeeper:
    """A pool keeper that never gets to talk to Batch (the stages here only ask it for sizes)."""
    return PoolKeeper(SETTINGS, cast(Clients, _NoClients()))


def context(
    sizes: list[int],
    *,
    resume: RunRecord | None = None,
    max_files_per_task: int = 0,
    out_dir: Path = Path("/r"),
) -> RunContext:
    inputs = [
        InputFile(Path(f"/data/f{index}.txt"), f"f{index}.txt", size) for index, size in enumerate(sizes)
    ]
    return new_run_context(
        SETTINGS,
        inputs,
        cast(Clients, _NoClients()),
        out_dir,
        pool=_keeper(),
        run_id="r1",
        journal=None,
        progress=None,
        max_files_per_task=max_files_per_task,
        resume=resume,
        started=time.monotonic(),
    )


@settings(max_examples=50)
@given(st.lists(st.integers(min_value=0, max_value=10_000_000), min_size=1, max_size=60), st.integers(0, 4))
def test_every_input_is_in_exactly_one_unit_and_journalled_with_that_units_task(
    sizes: list[int], max_files_per_task: int
) -> None:
    run = context(sizes, max_files_per_task=max_files_per_task)
    placed = sorted(index for unit in run.units for index in unit)
    assert placed == list(range(len(sizes)))
    assert len(set(run.task_ids)) == len(run.units)
    for entry in journal_inputs(run):
        assert entry.index in run.units[run.unit_by_task[entry.task_id]]
        assert entry.relpath == f"f{entry.index}.txt" and entry.size_bytes == sizes[entry.index]


def test_a_resumed_run_keeps_the_journals_work_units_not_a_new_plan() -> None:
    grouping = {0: "t-b", 1: "t-a", 2: "t-b"}  # no planner would pair the first and the last file so
    journalled = tuple(
        JournalInput(index, f"f{index}.txt", f"/data/f{index}.txt", 5, 1, None, f"b/f{index}", task)
        for index, task in grouping.items()
    )
    record = RunRecord(
        run_id="r1",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        state="RUNNING",
        state_history=(),
        settings_snapshot={},
        inputs=journalled,
        uploads={},
        sas_expiries={},
        submitted_task_ids=frozenset(),
        completed={},
        downloads={},
    )
    run = context([5, 5, 5], resume=record)
    assert dict(zip(run.task_ids, run.units, strict=True)) == {"t-a": [1], "t-b": [0, 2]}


def test_a_resumed_jobs_wall_clock_lasts_from_the_runs_creation_to_the_new_deadline() -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    record = RunRecord("r1", created, "RUNNING", (), {}, (), {}, {}, frozenset(), {}, {})
    run = context([1], resume=record)
    constraints = resumed_job_constraints(run, created + timedelta(hours=3, seconds=0.25))
    assert constraints.max_wall_clock_time == timedelta(seconds=3 * 3600 + 1)  # rounded up, never short
    assert constraints.max_task_retry_count == SETTINGS.run.task_max_retries


def test_the_summary_counts_what_the_ledger_holds() -> None:
    run = context([10, 20, 30])
    ledger = RunLedger(stage_s={"staging": 1.5})
    ledger.counts.add(0, [("a", 2), ("b", 1)])
    ledger.results[0] = FileResult.of(
        file_entry("f0.txt", task_id="t0", succeeded=True, words=3, invalid_bytes=0)
    )
    ledger.results[2] = FileResult.of(
        file_entry("f2.txt", task_id="t1", succeeded=False, error={"message": "x"})
    )
    run.requests.record(BATCH, "create_job")
    summary = run_summary(run, ledger, "FAILED")
    totals = summary["totals"]
    assert (summary["run_id"], summary["state"], summary["top"]) == ("r1", "FAILED", [["a", 2], ["b", 1]])
    assert [entry["path"] for entry in summary["files"]] == ["f0.txt", "f2.txt"]
    assert (totals["files"], totals["succeeded"], totals["failed"]) == (3, 1, 1)
    assert (totals["words"], totals["distinct_words"], totals["bytes"]) == (3, 2, 60)
    assert totals["stages_s"] == {"staging": 1.5} and totals["requests"]["batch"] == {"create_job": 1}
    assert ledger.failed_files() == 1


def test_a_pool_counts_as_broken_when_this_process_created_it_and_it_never_had_a_usable_node() -> None:
    keeper = _keeper()
    assert not keeper.broken()  # not ours to delete
    keeper.created = True
    assert keeper.broken()
    keeper.ever_usable = True
    assert not keeper.broken()


def test_an_unreadable_written_summary_names_the_run_and_the_file(tmp_path: Path) -> None:
    run = context([1], out_dir=tmp_path)
    (tmp_path / "summary.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(RunFailedError, match=r"run r1 was cleaning up but its summary .*summary\.json"):
        written_summary(run)


async def test_our_own_errors_are_shown_as_they_are() -> None:
    error = InputError("no input files to process")
    assert await explain(error, SETTINGS, time.monotonic()) is error


async def test_a_timeout_past_run_timeout_is_the_runs_deadline() -> None:
    long_ago = time.monotonic() - SETTINGS.run.run_timeout_s - 1
    explained = await explain(TimeoutError(), SETTINGS, long_ago)
    assert isinstance(explained, RunDeadlineError)
    assert "run_timeout_s" in str(explained)


async def test_a_connection_error_quoting_an_endpoint_names_that_service() -> None:
    error = ServiceRequestError("Cannot connect to host 127.0.0.1:7 ssl:default [Connection refused]")
    explained = await explain(error, SETTINGS, time.monotonic())
    assert isinstance(explained, ServiceUnavailableError)
    assert "the Storage endpoint http://127.0.0.1:7/acct stopped answering (ServiceRequestError)" in str(
        explained
    )


async def test_a_service_error_without_a_request_is_put_in_words() -> None:
    explained = await explain(HttpResponseError(message="boom"), SETTINGS, time.monotonic())
    assert type(explained) is RunFailedError
    assert str(explained).startswith("a Batch or Storage request failed: ")


async def test_retries_that_ran_out_of_attempts_say_so_and_name_the_limit() -> None:
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.0, max_delay_s=0.0, deadline_s=60.0)
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise ServiceRequestError("Cannot connect to host 127.0.0.1:7 ssl:default [Connection refused]")

    with capture_logs() as logs, pytest.raises(ServiceRequestError) as raised:
        await retry_call(policy, "upload_blob", refused)
    assert calls == 3
    retrying = [entry for entry in logs if entry["event"] == "request.retrying"]
    assert len(retrying) == 1 and retrying[0]["log_level"] == "info"
    assert (retrying[0]["operation"], retrying[0]["max_attempts"], retrying[0]["deadline_s"]) == (
        "upload_blob",
        3,
        60.0,
    )
    explained = str(await explain(raised.value, SETTINGS, time.monotonic()))
    assert f"after [retry] max_attempts = {SETTINGS.retry.max_attempts} attempts" in explained
    assert "deadline_s" not in explained


async def test_retries_cut_by_the_deadline_name_deadline_s() -> None:
    policy = RetryPolicy(max_attempts=100, base_delay_s=5.0, max_delay_s=5.0, deadline_s=1.0)

    async def refused() -> None:
        raise ServiceRequestError("Cannot connect to host 127.0.0.1:7 ssl:default [Connection refused]")

    with pytest.raises(ServiceRequestError) as raised:
        await retry_call(policy, "upload_blob", refused)
    explained = str(await explain(raised.value, SETTINGS, time.monotonic()))
    assert "[retry] deadline_s" in explained and "max_attempts" not in explained
