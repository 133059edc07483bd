"""Pure parts of resuming: which settings come from the run's snapshot, its inputs and results folder,
and how the state machine skips the states a resumed run has already passed."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from orchestrator.console import render_run, render_runs
from orchestrator.errors import ConfigError, UsageError
from orchestrator.journal import JournalInput, RunRecord
from orchestrator.run.pipeline import RunState, RunStateMachine, TransitionError
from orchestrator.run.resume import (
    RESULT_SHAPING,
    SasRefreshPlan,
    plan_sas_refresh,
    resumed_inputs,
    resumed_out_dir,
    resumed_settings,
    sas_expire_before,
    units_to_run,
    unknown_run,
)
from orchestrator.settings import load_settings

PROJECT = Path(__file__).resolve().parents[3]
CURRENT = load_settings(PROJECT / "config" / "local.toml", {"TOPN_BATCH_ENDPOINT": "http://127.0.0.1:9"})


def record(
    inputs: list[JournalInput], out_dir: str | None = "/results/r1", state: str = "RUNNING"
) -> RunRecord:
    return RunRecord(
        run_id="r1",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        state=state,
        state_history=(),
        settings_snapshot={},
        inputs=tuple(inputs),
        uploads={},
        sas_expiries={},
        submitted_task_ids=frozenset(),
        completed={},
        downloads={},
        out_dir=out_dir,
    )


def journal_input(index: int, relpath: str) -> JournalInput:
    return JournalInput(
        index, relpath, f"/data/{relpath}", 10 + index, 5, None, f"runs/r1/{relpath}", "t000000"
    )


def test_result_shaping_settings_come_from_the_snapshot_and_endpoints_from_now() -> None:
    snapshot = {
        "run": {"top": 3, "tokenizer": "tutorial", "max_files_per_task": 1, "upload_concurrency": 99},
        "storage": {"container_prefix": "old", "blob_endpoint": "http://elsewhere:1"},
        "pool": {"id": "the-old-pool"},
        "batch": {"endpoint": "http://elsewhere:2"},
    }
    settings = resumed_settings(CURRENT, snapshot)
    assert (settings.run.top, settings.run.tokenizer, settings.run.max_files_per_task) == (3, "tutorial", 1)
    assert settings.storage.container_prefix == "old" and settings.pool.id == "the-old-pool"
    # Not result-shaping: as configured now.
    assert settings.run.upload_concurrency == CURRENT.run.upload_concurrency
    assert settings.storage.blob_endpoint == CURRENT.storage.blob_endpoint
    assert settings.batch.endpoint == "http://127.0.0.1:9"


def test_a_snapshot_value_no_configuration_may_hold_is_refused() -> None:
    with pytest.raises(ConfigError, match="tokenizer"):
        resumed_settings(CURRENT, {"run": {"tokenizer": "emoji"}})
    with pytest.raises(ConfigError, match="top"):
        resumed_settings(CURRENT, {"run": {"top": 0}})


def test_snapshot_values_of_the_wrong_type_are_ignored() -> None:
    snapshot = {"run": {"top": "ten", "task_max_wall_clock_s": 60, "task_max_retries": True}, "pool": "x"}
    settings = resumed_settings(CURRENT, snapshot)
    assert settings.run.top == CURRENT.run.top
    assert settings.run.task_max_wall_clock_s == 60  # an int stands in for a float
    assert settings.run.task_max_retries == CURRENT.run.task_max_retries  # a bool is not a count
    assert settings.pool == CURRENT.pool


JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 500), st.floats(0, 1e4), st.text(max_size=8)
)


# Real setting names (endpoints, keys, concurrency, ...) as well as junk: with junk names alone the
# property almost never met a key resumed_settings could take, so it held for any implementation.
SETTING_NAMES = sorted(
    {
        name
        for section in ("batch", "storage", "pool", "run", "local", "retry")
        for name in vars(getattr(CURRENT, section))
    }
)
SNAPSHOT_KEYS = st.one_of(st.sampled_from(SETTING_NAMES), st.text(min_size=1, max_size=24))


@example({"run": {"top": 3, "upload_concurrency": 1}, "batch": {"endpoint": "http://elsewhere:1"}})
@given(
    st.dictionaries(
        st.sampled_from(["run", "storage", "pool", "batch", "local", "retry"]),
        st.dictionaries(SNAPSHOT_KEYS, JSON_VALUES, max_size=6),
        max_size=6,
    )
)
def test_only_result_shaping_keys_ever_change(snapshot: dict[str, dict[str, Any]]) -> None:
    try:
        settings = resumed_settings(CURRENT, snapshot)
    except ConfigError:
        return  # a value no configuration may hold is refused, never used
    for section in ("batch", "storage", "pool", "run", "local", "retry"):
        before, after = getattr(CURRENT, section), getattr(settings, section)
        for name in vars(before):
            if getattr(before, name) != getattr(after, name):
                assert name in RESULT_SHAPING.get(section, ()), (section, name)
                assert snapshot[section][name] == getattr(after, name)


def test_inputs_keep_their_journalled_order_paths_and_sizes() -> None:
    inputs = resumed_inputs(record([journal_input(1, "b.txt"), journal_input(0, "z.txt")]))
    assert [(item.relpath, str(item.path), item.size_bytes) for item in inputs] == [
        ("z.txt", "/data/z.txt", 10),
        ("b.txt", "/data/b.txt", 11),
    ]


def test_the_results_folder_is_the_recorded_one_or_a_clear_error() -> None:
    assert resumed_out_dir(record([])) == Path("/results/r1")
    with pytest.raises(UsageError, match="no results folder in the journal"):
        resumed_out_dir(record([], out_dir=None))


def test_an_unknown_run_names_the_journal_and_is_a_usage_error() -> None:
    error = unknown_run("r9", Path("/state/journal.sqlite3"))
    assert isinstance(error, UsageError) and error.exit_code == 2
    assert "no run r9 in /state/journal.sqlite3" in str(error) and "topn status" in str(error)


class Recorder:
    def __init__(self) -> None:
        self.states: list[str] = []

    async def record_state(self, run_id: str, state: str) -> None:
        self.states.append(state)


async def test_a_resumed_machine_skips_the_states_already_passed_and_records_the_rest() -> None:
    recorder = Recorder()
    machine = RunStateMachine("r1", recorder, RunState.SUBMITTING)
    await machine.advance(RunState.PREPARING)
    await machine.advance(RunState.SUBMITTING)
    assert recorder.states == [] and machine.state == RunState.SUBMITTING
    await machine.advance(RunState.RUNNING)
    await machine.advance(RunState.COLLECTING)
    await machine.advance(RunState.CLEANING)
    assert recorder.states == ["RUNNING", "COLLECTING", "CLEANING"]


@given(st.sampled_from(list(RunState)), st.sampled_from(list(RunState)))
def test_reached_follows_the_forward_order(current: RunState, target: RunState) -> None:
    order = [RunState.CREATED, RunState.PREPARING, RunState.SUBMITTING, RunState.RUNNING]
    order += [RunState.COLLECTING, RunState.CLEANING]
    machine = RunStateMachine("r1", None, current)
    if current in order and target in order:
        assert machine.reached(target) == (order.index(current) >= order.index(target))
    elif current not in order:  # a finished run has passed everything
        assert machine.reached(target)


async def test_advance_never_jumps_over_a_state() -> None:
    machine = RunStateMachine("r1", None, RunState.PREPARING)
    with pytest.raises(TransitionError):
        await machine.advance(RunState.RUNNING)


def described(state: str, finished: bool) -> dict[str, Any]:
    return {
        "run_id": "20261122t000000z-abcdef",
        "state": state,
        "finished": finished,
        "created_at": "2026-11-22T00:00:00.000000+00:00",
        "updated_at": "2026-11-22T00:01:00.000000+00:00",
        "out_dir": "/abs/results/x",
        "files": 6,
        "bytes": 615,
        "tasks": 5,
        "stages": {"staging": {"done": 6, "total": 6}, "running": {"done": 3, "total": 5}},
        "files_succeeded": 3,
        "files_failed": 1,
        "tasks_succeeded": 3,
        "tasks_failed": 1,
        "tasks_in_flight": 1,
        "failures": [
            {"file": "b/f 0.txt", "exit_code": 42, "failure_code": "FailureExitCode", "message": "m"}
        ],
    }


def test_the_run_list_names_each_run_and_how_to_continue_an_unfinished_one() -> None:
    text = render_runs([described("SUCCEEDED", True), {**described("RUNNING", False), "run_id": "r2"}])
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["RUN", "STATE", "CREATED"]
    assert lines[1].split()[:2] == ["20261122t000000z-abcdef", "SUCCEEDED"] and "/abs/results/x" in lines[1]
    assert lines[-1] == "Unfinished: continue one with `topn resume r2`."
    assert "No runs" in render_runs([])


def test_one_run_shows_counts_the_live_job_and_its_failures() -> None:
    live = {"job_id": "topn-x", "reachable": True, "exists": True, "state": "active"}
    live["tasks"] = {"active": 1, "running": 1, "completed": 3, "succeeded": 3, "failed": 0}
    text = render_run({**described("RUNNING", False), "job": live})
    assert "Run 20261122t000000z-abcdef: RUNNING (unfinished)" in text
    assert "job topn-x: active - 1 active, 1 running, 3 completed (3 succeeded, 0 failed)" in text
    assert "b/f 0.txt: exit code 42, failure FailureExitCode: m" in text
    assert text.rstrip().endswith("`topn resume 20261122t000000z-abcdef`.")
    gone = render_run(
        {**described("SUCCEEDED", True), "job": {"job_id": "topn-x", "reachable": False, "note": "n"}}
    )
    assert "job topn-x: not reachable (n)" in gone and "topn resume" not in gone


DEADLINE = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def test_sas_that_outlive_the_deadline_need_nothing() -> None:
    later = DEADLINE + timedelta(seconds=1)
    assert not sas_expire_before({"input_read": later, "output_write": later}, DEADLINE)
    # Ending exactly at the deadline is still valid up to it.
    assert not sas_expire_before({"input_read": DEADLINE, "output_write": DEADLINE}, DEADLINE)


def test_one_sas_ending_before_the_deadline_or_an_unrecorded_one_needs_a_refresh() -> None:
    later, earlier = DEADLINE + timedelta(hours=1), DEADLINE - timedelta(seconds=1)
    assert sas_expire_before({"input_read": later, "output_write": earlier}, DEADLINE)
    assert sas_expire_before({"input_read": earlier, "output_write": later}, DEADLINE)
    assert sas_expire_before({"input_read": later}, DEADLINE)  # output_write never recorded
    assert sas_expire_before({}, DEADLINE)


def test_active_tasks_are_replaced_started_ones_kept_missing_ones_added_finished_ones_left() -> None:
    states = {
        "t000000": "completed",
        "t000001": "active",
        "t000002": "running",
        "t000003": "preparing",
        "t000005": "active",
        "t000009": "active",  # not awaited (its completion is journalled): not touched
    }
    awaited = ["t000000", "t000001", "t000002", "t000003", "t000004", "t000005"]
    assert plan_sas_refresh(awaited, states) == SasRefreshPlan(
        replace=("t000001", "t000005"), add=("t000004",), kept_started=("t000002", "t000003")
    )


def test_nothing_awaited_means_nothing_to_do() -> None:
    assert plan_sas_refresh([], {"t000000": "active"}) == SasRefreshPlan((), (), ())


task_ids = st.lists(st.integers(0, 40).map(lambda number: f"t{number:06d}"), max_size=30)
task_states = st.dictionaries(
    st.integers(0, 40).map(lambda number: f"t{number:06d}"),
    st.sampled_from(["active", "preparing", "running", "completed"]),
    max_size=30,
)


@given(task_ids, task_states)
def test_every_awaited_task_lands_in_at_most_one_bucket_by_its_state(
    awaited: list[str], states: dict[str, str]
) -> None:
    plan = plan_sas_refresh(awaited, states)
    buckets = [*plan.replace, *plan.add, *plan.kept_started]
    assert len(buckets) == len(set(buckets))  # an id twice in `awaited` is still one task
    assert set(buckets) <= set(awaited)
    for task_id in set(awaited):
        state = states.get(task_id)
        where = (task_id in plan.replace, task_id in plan.add, task_id in plan.kept_started)
        expected = (state == "active", state is None, state in ("preparing", "running"))
        assert where == expected, (task_id, state)
    # Order follows `awaited` (first occurrence), so re-added tasks keep the run's submission order.
    first_seen = list(dict.fromkeys(awaited))
    assert list(plan.replace) == [task_id for task_id in first_seen if task_id in plan.replace]


@given(st.integers(1, 12), st.sets(st.integers(0, 11)), st.booleans())
def test_units_to_run_are_those_without_an_outcome_in_unit_order(
    count: int, finished: set[int], succeeded: bool
) -> None:
    inputs = [
        JournalInput(index, f"f{index}.txt", f"/data/f{index}.txt", 1, 5, None, f"b{index}", f"t{index:06d}")
        for index in range(count)
    ]
    outcome = {"status": "succeeded" if succeeded else "failed"}
    resumed = dataclasses.replace(
        record(inputs), completed={f"t{index:06d}": outcome for index in finished if index < count}
    )
    left = units_to_run(resumed)
    assert left == tuple(f"t{index:06d}" for index in range(count) if index not in finished)
    # A failed outcome is an outcome too: only `--retry-failed` (which forgets it) runs it again.
    assert (left == ()) == all(index in finished for index in range(count))
