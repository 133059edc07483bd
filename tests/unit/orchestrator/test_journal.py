"""The journal: what it records survives reopening, records are idempotent and atomic, secrets never land."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import tempfile
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.errors import TopnError
from orchestrator.journal import (
    JOURNAL_FILENAME,
    SCHEMA_VERSION,
    DownloadRecord,
    Journal,
    JournalError,
    JournalInput,
    RunRecord,
    StateChange,
    UploadRecord,
)
from orchestrator.run.resume import (
    failed_relpaths,
    incomplete_task_ids,
    pending_uploads,
    undownloaded_relpaths,
    unsubmitted_task_ids,
)
from orchestrator.secrets import strip_secrets
from orchestrator.service.status import describe_run
from tests.secret_scan import find_secrets

RUN = "20261122t001500z-abc123"


def make_inputs(count: int, *, files_per_task: int = 1) -> list[JournalInput]:
    """`count` inputs in two folders, grouped `files_per_task` to a work unit."""
    return [
        JournalInput(
            index=index,
            relpath=f"{'a' if index % 2 else 'b'}/file {index}.txt",
            path=f"/data/{'a' if index % 2 else 'b'}/file {index}.txt",
            size_bytes=100 + index,
            mtime_ns=1_700_000_000_000_000_000 + index,
            md5_hex=None,
            blob_name=f"runs/{RUN}/{'a' if index % 2 else 'b'}/file {index}.txt",
            task_id=f"t{index // files_per_task:06d}",
        )
        for index in range(count)
    ]


def md5_of(number: int) -> str:
    return f"{number:032x}"


def journal_bytes(path: Path) -> str:
    """The database and its write-ahead log as text, for scanning."""
    parts = [candidate for candidate in (path, Path(f"{path}-wal")) if candidate.exists()]
    return "".join(part.read_bytes().decode("utf-8", errors="replace") for part in parts)


# ----------------------------------------------------------------------------- round trips


async def test_a_created_run_reads_back_with_its_inputs_and_settings(tmp_path: Path) -> None:
    inputs = make_inputs(4)
    snapshot = {"run": {"top": 10, "tokenizer": "words"}, "local": {"state_dir": Path(".topn")}}
    async with await Journal.open(tmp_path / JOURNAL_FILENAME) as journal:
        await journal.create_run(RUN, snapshot, inputs)
    async with await Journal.open(tmp_path / JOURNAL_FILENAME) as journal:
        record = await journal.load_run(RUN)
    assert record is not None
    assert record.run_id == RUN
    assert record.state == "CREATED"
    assert [change.state for change in record.state_history] == ["CREATED"]
    assert record.inputs == tuple(inputs)
    assert record.settings_snapshot == {
        "run": {"top": 10, "tokenizer": "words"},
        "local": {"state_dir": ".topn"},
    }
    assert record.created_at.tzinfo is not None
    assert record.uploads == {}
    assert record.submitted_task_ids == frozenset()
    assert [item.relpath for item in pending_uploads(record)] == [item.relpath for item in inputs]
    assert unsubmitted_task_ids(record) == ("t000000", "t000001", "t000002", "t000003")


async def test_every_kind_of_record_survives_reopening(tmp_path: Path) -> None:
    inputs = make_inputs(3)
    expiry = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, inputs)
        await journal.record_state(RUN, "PREPARING")
        await journal.record_upload(RUN, inputs[0].relpath, md5_of(1), inputs[0].blob_name)
        await journal.record_sas_expiry(RUN, "output", expiry)
        await journal.record_tasks_submitted(RUN, ["t000000", "t000001"])
        await journal.record_task_completed(RUN, "t000000", {"status": "succeeded", "exit_code": 0})
        await journal.record_output_downloaded(RUN, inputs[0].relpath, "/out/b/file 0_OUTPUT.txt", 321)
    async with await Journal.open(tmp_path) as journal:
        record = await journal.load_run(RUN)
    assert record is not None
    assert record.state == "PREPARING"
    assert record.uploads == {inputs[0].relpath: UploadRecord(md5_of(1), inputs[0].blob_name)}
    assert record.uploaded_md5 == {inputs[0].relpath: md5_of(1)}
    assert record.sas_expiries == {"output": expiry}
    assert record.submitted_task_ids == frozenset({"t000000", "t000001"})
    assert record.completed == {"t000000": {"status": "succeeded", "exit_code": 0}}
    assert record.downloads == {inputs[0].relpath: DownloadRecord("/out/b/file 0_OUTPUT.txt", 321)}
    assert unsubmitted_task_ids(record) == ("t000002",)
    assert incomplete_task_ids(record) == ("t000001",)
    assert undownloaded_relpaths(record) == ()


async def test_the_results_folder_and_saved_outputs_are_kept_absolute_for_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (item,) = make_inputs(1)
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, [item], out_dir=Path("results") / RUN)
        await journal.create_run("other", {}, [item])
        await journal.record_output_downloaded(RUN, item.relpath, f"results/{RUN}/x_OUTPUT.txt", 5)
        record = await journal.load_run(RUN)
        other = await journal.load_run("other")
    assert record is not None and other is not None
    assert record.out_dir == str(tmp_path / "results" / RUN)
    assert record.downloads[item.relpath].local_path == str(tmp_path / "results" / RUN / "x_OUTPUT.txt")
    assert other.out_dir is None


async def test_what_skip_unreadable_left_out_is_kept_with_the_run_and_only_once(tmp_path: Path) -> None:
    inputs = make_inputs(2)
    left_out = [("in/locked", "unreadable: Permission denied"), ("in/a b.txt", "unreadable: I/O error")]
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, inputs, skipped=left_out)
        await journal.create_run(RUN, {}, inputs, skipped=[("in/other", "unreadable: later")])  # no-op
        await journal.create_run("other", {}, inputs)
    async with await Journal.open(tmp_path) as journal:
        record = await journal.load_run(RUN)
        other = await journal.load_run("other")
    assert record is not None and other is not None
    assert dict(record.skipped) == dict(left_out)
    assert list(record.skipped) == sorted(path for path, _ in left_out)
    assert dict(other.skipped) == {}


async def test_a_state_folder_can_be_given_instead_of_the_file(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, make_inputs(1))
    assert (tmp_path / JOURNAL_FILENAME).is_file()
    async with await Journal.open(tmp_path / JOURNAL_FILENAME) as journal:
        assert await journal.load_run(RUN) is not None


async def test_missing_state_folders_are_created(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state" / JOURNAL_FILENAME
    async with await Journal.open(path) as journal:
        await journal.create_run(RUN, {}, make_inputs(1))
    assert path.is_file()


async def test_an_unknown_run_loads_as_none(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        assert await journal.load_run("nope") is None
        assert await journal.list_runs() == []


async def test_list_runs_returns_every_run_oldest_id_first(tmp_path: Path) -> None:
    ids = ["20261122t010000z-000002", "20261121t230000z-ffffff", "20261122t000000z-000001"]
    async with await Journal.open(tmp_path) as journal:
        for run_id in ids:
            await journal.create_run(run_id, {}, make_inputs(2))
        await journal.record_state(ids[0], "RUNNING")
        runs = await journal.list_runs()
    assert [run.run_id for run in runs] == sorted(ids)
    assert {run.run_id: run.state for run in runs}[ids[0]] == "RUNNING"


# ----------------------------------------------------------------------------- states


async def test_state_history_keeps_every_transition_in_order(tmp_path: Path) -> None:
    states = ["PREPARING", "SUBMITTING", "RUNNING", "COLLECTING", "CLEANING", "SUCCEEDED"]
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, make_inputs(1))
        for state in states:
            await journal.record_state(RUN, state)
        record = await journal.load_run(RUN)
    assert record is not None
    assert [change.state for change in record.state_history] == ["CREATED", *states]
    moments = [change.at for change in record.state_history]
    assert all(moment.tzinfo is not None for moment in moments)
    assert record.state == "SUCCEEDED"
    assert record.is_finished


async def test_recording_the_current_state_again_adds_nothing(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, make_inputs(1))
        await journal.record_state(RUN, "RUNNING")
        await journal.record_state(RUN, "RUNNING")
        record = await journal.load_run(RUN)
    assert record is not None
    assert [change.state for change in record.state_history] == ["CREATED", "RUNNING"]


@pytest.mark.parametrize("bad_state", ["", "running now", "1ST", "RUN;DROP"])
async def test_a_malformed_state_name_is_refused(tmp_path: Path, bad_state: str) -> None:
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, make_inputs(1))
        with pytest.raises(ValueError, match="invalid run state"):
            await journal.record_state(RUN, bad_state)


# ----------------------------------------------------------------------------- refusals


async def test_records_for_a_run_that_was_never_created_are_refused(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        with pytest.raises(JournalError, match="not in the journal"):
            await journal.record_state("ghost", "RUNNING")
        with pytest.raises(JournalError, match="not in the journal"):
            await journal.record_tasks_submitted("ghost", ["t000000"])
        with pytest.raises(JournalError, match="not in the journal"):
            await journal.record_sas_expiry("ghost", "output", datetime.now(UTC))


async def test_records_about_unknown_inputs_or_tasks_are_refused(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, make_inputs(2))
        with pytest.raises(JournalError, match=r"no input 'elsewhere\.txt'"):
            await journal.record_upload(RUN, "elsewhere.txt", md5_of(1), "runs/x/elsewhere.txt")
        with pytest.raises(JournalError, match="no input"):
            await journal.record_output_downloaded(RUN, "elsewhere.txt", "/out/x", 1)
        with pytest.raises(JournalError, match="no task 't999999'"):
            await journal.record_task_completed(RUN, "t999999", {"status": "succeeded"})


async def test_a_batch_with_one_unknown_task_records_nothing(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, make_inputs(3))
        with pytest.raises(JournalError, match="t000777"):
            await journal.record_tasks_submitted(RUN, ["t000000", "t000001", "t000777"])
        record = await journal.load_run(RUN)
    assert record is not None
    assert record.submitted_task_ids == frozenset()


async def test_creating_the_same_run_twice_is_harmless_but_other_inputs_are_refused(tmp_path: Path) -> None:
    inputs = make_inputs(3)
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {"run": {"top": 3}}, inputs)
        await journal.record_state(RUN, "RUNNING")
        await journal.create_run(RUN, {"run": {"top": 3}}, inputs)
        with pytest.raises(JournalError, match="already in the journal"):
            await journal.create_run(RUN, {}, inputs[:2])
        record = await journal.load_run(RUN)
    assert record is not None
    assert record.state == "RUNNING"
    assert record.inputs == tuple(inputs)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("md5_hex", "not-an-md5", "32 hex digits"),
        ("size_bytes", -1, "negative size_bytes"),
        ("relpath", "", "empty relpath"),
        ("task_id", "", "empty task_id"),
    ],
)
async def test_malformed_inputs_are_refused_with_the_reason(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    good = make_inputs(1)[0]
    bad = JournalInput(**{**good.__dict__, field: value})
    async with await Journal.open(tmp_path) as journal:
        with pytest.raises(ValueError, match=message):
            await journal.create_run(RUN, {}, [bad])
        assert await journal.load_run(RUN) is None


async def test_two_inputs_with_one_relpath_are_refused(tmp_path: Path) -> None:
    first, second = make_inputs(2)
    clash = JournalInput(**{**second.__dict__, "relpath": first.relpath})
    async with await Journal.open(tmp_path) as journal:
        with pytest.raises(ValueError, match="share the relpath"):
            await journal.create_run(RUN, {}, [first, clash])


async def test_a_naive_sas_expiry_is_refused_and_an_aware_one_is_kept_in_utc(tmp_path: Path) -> None:
    paris_winter = timezone(timedelta(hours=1))
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, make_inputs(1))
        with pytest.raises(ValueError, match="timezone-aware"):
            await journal.record_sas_expiry(RUN, "input", datetime(2026, 11, 22, 3, 0))
        await journal.record_sas_expiry(RUN, "input", datetime(2026, 11, 22, 3, 0, tzinfo=paris_winter))
        record = await journal.load_run(RUN)
    assert record is not None
    assert record.sas_expiries == {"input": datetime(2026, 11, 22, 2, 0, tzinfo=UTC)}


async def test_a_later_sas_replaces_the_recorded_expiry(tmp_path: Path) -> None:
    first = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
    reminted = first + timedelta(hours=3)
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, make_inputs(1))
        await journal.record_sas_expiry(RUN, "output", first)
        await journal.record_sas_expiry(RUN, "output", reminted)
        record = await journal.load_run(RUN)
    assert record is not None
    assert record.sas_expiries == {"output": reminted}


async def test_a_reupload_with_a_new_md5_replaces_the_old_one(tmp_path: Path) -> None:
    (item,) = make_inputs(1)
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, [item])
        await journal.record_upload(RUN, item.relpath, md5_of(1), item.blob_name)
        await journal.record_upload(RUN, item.relpath, md5_of(2).upper(), item.blob_name)
        record = await journal.load_run(RUN)
    assert record is not None
    assert record.uploaded_md5 == {item.relpath: md5_of(2)}


async def test_a_file_failure_and_a_later_download_replace_each_other(tmp_path: Path) -> None:
    """A resumed run may salvage a file recorded as failed, or learn that a saved file is bad."""
    first, second = (JournalInput(**{**item.__dict__, "task_id": "t000000"}) for item in make_inputs(2))
    error = {"exit_code": 3, "message": "upload to https://x/o?sv=1&sig=SeCrEtSiGnAtUrE123 failed"}
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, [first, second])
        await journal.record_task_completed(RUN, "t000000", {"status": "failed", "exit_code": 3})
        await journal.record_file_failed(RUN, second.relpath, error)
        await journal.record_file_failed(RUN, second.relpath, error)
        failed = await journal.load_run(RUN)
        await journal.record_output_downloaded(RUN, second.relpath, "/out/second", 7)
        salvaged = await journal.load_run(RUN)
        await journal.record_file_failed(RUN, second.relpath, {"message": "the saved file was truncated"})
        failed_again = await journal.load_run(RUN)
        with pytest.raises(JournalError, match="no input"):
            await journal.record_file_failed(RUN, "elsewhere.txt", {})
    assert failed is not None and salvaged is not None and failed_again is not None
    assert failed.file_failures == {
        second.relpath: {"exit_code": 3, "message": "upload to https://x/o?sv=1&sig=REDACTED failed"}
    }
    assert failed_relpaths(failed) == (second.relpath,)
    assert undownloaded_relpaths(failed) == (first.relpath,)
    assert salvaged.file_failures == {}
    assert salvaged.downloads == {second.relpath: DownloadRecord("/out/second", 7)}
    assert failed_relpaths(salvaged) == ()
    assert failed_again.downloads == {}
    assert failed_relpaths(failed_again) == (second.relpath,)
    assert "SeCrEtSiGnAtUrE123" not in journal_bytes(tmp_path / JOURNAL_FILENAME)


async def test_an_upload_whose_md5_differs_from_the_known_one_is_still_pending(tmp_path: Path) -> None:
    known = JournalInput(**{**make_inputs(1)[0].__dict__, "md5_hex": md5_of(7)})
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, [known])
        await journal.record_upload(RUN, known.relpath, md5_of(8), known.blob_name)
        stale = await journal.load_run(RUN)
        await journal.record_upload(RUN, known.relpath, md5_of(7), known.blob_name)
        fresh = await journal.load_run(RUN)
    assert stale is not None and fresh is not None
    assert pending_uploads(stale) == (known,)
    assert pending_uploads(fresh) == ()


async def test_a_closed_journal_refuses_work_and_closing_twice_is_harmless(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path)
    await journal.create_run(RUN, {}, make_inputs(1))
    await journal.close()
    await journal.close()
    with pytest.raises(JournalError, match="closed"):
        await journal.record_state(RUN, "RUNNING")
    with pytest.raises(JournalError, match="closed"):
        await journal.load_run(RUN)


def test_journal_errors_are_topn_errors_so_the_cli_reports_them() -> None:
    assert issubclass(JournalError, TopnError)


# ----------------------------------------------------------------------------- the file itself


async def test_the_journal_uses_wal_and_records_its_schema_version(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, make_inputs(1))
        with sqlite3.connect(tmp_path / JOURNAL_FILENAME) as reader:
            mode = reader.execute("PRAGMA journal_mode").fetchone()[0]
            versions = [row[0] for row in reader.execute("SELECT version FROM schema_version")]
        reader.close()
    assert mode == "wal"
    assert versions == list(range(1, SCHEMA_VERSION + 1))


async def test_reopening_does_not_reapply_the_schema(tmp_path: Path) -> None:
    for _ in range(3):
        async with await Journal.open(tmp_path):
            pass
    reader = sqlite3.connect(tmp_path / JOURNAL_FILENAME)
    versions = [row[0] for row in reader.execute("SELECT version FROM schema_version")]
    reader.close()
    assert versions == list(range(1, SCHEMA_VERSION + 1))


async def test_a_journal_from_a_newer_topn_is_refused_with_the_fix(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path):
        pass
    writer = sqlite3.connect(tmp_path / JOURNAL_FILENAME)
    writer.execute("INSERT INTO schema_version VALUES (?, 'later')", (SCHEMA_VERSION + 1,))
    writer.commit()
    writer.close()
    with pytest.raises(JournalError, match="upgrade topn") as raised:
        await Journal.open(tmp_path)
    assert raised.value.exit_code == 2


async def test_a_file_that_is_not_a_journal_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_FILENAME
    path.write_bytes(b"this is a text file, not SQLite\n" * 200)
    with pytest.raises(JournalError, match="move it aside") as raised:
        await Journal.open(path)
    assert raised.value.exit_code == 2


async def test_a_state_folder_that_cannot_be_created_names_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(JournalError, match="state_dir") as raised:
        await Journal.open(blocker / "sub" / JOURNAL_FILENAME)
    assert raised.value.exit_code == 2


async def test_two_journals_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    """Two processes (here two connections) share a state folder: `topn status` next to a run."""
    async with await Journal.open(tmp_path) as writer, await Journal.open(tmp_path) as reader:
        await writer.create_run(RUN, {}, make_inputs(2))
        await writer.record_state(RUN, "RUNNING")
        seen = await reader.load_run(RUN)
        assert seen is not None and seen.state == "RUNNING"
        await reader.record_tasks_submitted(RUN, ["t000001"])
        assert (await writer.load_run(RUN)).submitted_task_ids == {"t000001"}  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- scale and concurrency


async def test_thousands_of_task_ids_are_recorded_in_one_call(tmp_path: Path) -> None:
    inputs = make_inputs(5000)
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, inputs)
        await journal.record_tasks_submitted(RUN, [item.task_id for item in inputs])
        record = await journal.load_run(RUN)
    assert record is not None
    assert len(record.submitted_task_ids) == 5000
    assert unsubmitted_task_ids(record) == ()
    assert len(incomplete_task_ids(record)) == 5000


async def test_many_concurrent_records_from_a_task_group_all_land(tmp_path: Path) -> None:
    inputs = make_inputs(120)
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, inputs)

        async def one_file(item: JournalInput) -> None:
            await journal.record_upload(RUN, item.relpath, md5_of(item.index), item.blob_name)
            await journal.record_tasks_submitted(RUN, [item.task_id])
            await journal.record_task_completed(RUN, item.task_id, {"status": "succeeded", "exit_code": 0})
            await journal.record_output_downloaded(RUN, item.relpath, f"/out/{item.index}", item.index)

        async with anyio.create_task_group() as group:
            for item in inputs:
                group.start_soon(one_file, item)
            group.start_soon(journal.record_state, RUN, "RUNNING")
        record = await journal.load_run(RUN)
    assert record is not None
    assert record.uploaded_md5 == {item.relpath: md5_of(item.index) for item in inputs}
    assert record.submitted_task_ids == {item.task_id for item in inputs}
    assert set(record.completed) == {item.task_id for item in inputs}
    assert {relpath: download.size_bytes for relpath, download in record.downloads.items()} == {
        item.relpath: item.index for item in inputs
    }
    assert record.state == "RUNNING"


async def test_a_write_waiting_on_the_disk_does_not_block_the_event_loop(tmp_path: Path) -> None:
    """Another process holds the write lock; the journal waits on its thread while the loop runs on."""
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, make_inputs(1))
        other_process = sqlite3.connect(tmp_path / JOURNAL_FILENAME, isolation_level=None)
        other_process.execute("BEGIN IMMEDIATE")
        written = anyio.Event()

        async def write() -> None:
            await journal.record_state(RUN, "RUNNING")
            written.set()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                group.start_soon(write)
                loop_turns = 0
                for _ in range(20):
                    await anyio.sleep(0.005)
                    loop_turns += 1
                # The loop kept turning while the write could not possibly have committed.
                assert loop_turns == 20
                assert not written.is_set()
                other_process.execute("ROLLBACK")
                other_process.close()
                await written.wait()
        record = await journal.load_run(RUN)
    assert record is not None and record.state == "RUNNING"


async def test_cancelling_a_caller_lets_the_write_in_progress_finish(tmp_path: Path) -> None:
    """Ctrl-C while a state is being written: the write still commits, whole, and nothing tears."""
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, make_inputs(3))
        other_process = sqlite3.connect(tmp_path / JOURNAL_FILENAME, isolation_level=None)
        other_process.execute("BEGIN IMMEDIATE")
        # Know, rather than guess, that the journal's thread is inside its write: SQLite's trace
        # hook fires when the journal starts its transaction (which then waits for the lock).
        writing = threading.Event()
        journal._connection.set_trace_callback(  # type: ignore[union-attr]
            lambda statement: writing.set() if statement.startswith("BEGIN") else None
        )
        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                group.start_soon(journal.record_tasks_submitted, RUN, ["t000000", "t000001", "t000002"])
                assert await anyio.to_thread.run_sync(writing.wait, 10)
                group.cancel_scope.cancel()
                other_process.execute("ROLLBACK")
                other_process.close()
        record = await journal.load_run(RUN)
    assert record is not None
    assert record.submitted_task_ids == {"t000000", "t000001", "t000002"}


# ----------------------------------------------------------------------------- secrets

SECRET_NAMES = ["account_key", "accountKey", "SAS_TOKEN", "client_secret", "password", "sasToken", "keys"]
SAFE_NAMES = ["endpoint", "tokenizer", "top", "vm_size", "account_name", "auth", "blob_endpoint"]


async def test_settings_secrets_are_stripped_and_durations_kept(tmp_path: Path) -> None:
    secret = "c2VjcmV0LWtleS12YWx1ZS10aGF0LW11c3Qtbm90LWxlYWs="
    snapshot = {
        "batch": {"endpoint": "https://b.example", "account_key": secret, "auth": "shared_key"},
        "storage": {"account_key": None, "connection": f"AccountKey={secret};BlobEndpoint=x"},
        "run": {"tokenizer": "words", "sas_margin_s": 3600.0, "top": 10},
        "identity": {"client_secret": secret, "Password": secret, "sasToken": secret},
    }
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, snapshot, make_inputs(1))
        record = await journal.load_run(RUN)
    assert record is not None
    assert record.settings_snapshot == {
        "batch": {"endpoint": "https://b.example", "auth": "shared_key"},
        "storage": {"connection": "AccountKey=REDACTED;BlobEndpoint=x"},
        "run": {"tokenizer": "words", "sas_margin_s": 3600.0, "top": 10},
        "identity": {},
    }
    assert secret not in journal_bytes(tmp_path / JOURNAL_FILENAME)


async def test_sas_signatures_in_task_outcomes_never_reach_the_file(tmp_path: Path) -> None:
    signature = "sig=AbCdEfGhIjKlMnOpQrStUvWxYz0123456789%2B%2F%3D"
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, make_inputs(1))
        await journal.record_task_completed(
            RUN,
            "t000000",
            {
                "status": "failed",
                "exit_code": 3,
                "stderr_tail": f"upload to https://x/c?sv=1&{signature} failed",
            },
        )
        record = await journal.load_run(RUN)
    assert record is not None
    assert record.completed["t000000"]["stderr_tail"] == "upload to https://x/c?sv=1&sig=REDACTED failed"
    text = journal_bytes(tmp_path / JOURNAL_FILENAME)
    assert find_secrets([("journal", text)], keys=[]) == []


secret_values = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=24, max_size=40).map(
    lambda body: f"S3CR3T{body}"
)
safe_values = st.one_of(st.integers(), st.booleans(), st.text(alphabet="abcdefgh-._/", max_size=12))


@st.composite
def snapshots(draw: st.DrawFn, depth: int = 2) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """A nested settings mapping, the same mapping with secret-named text removed, and the secrets."""
    given_map: dict[str, Any] = {}
    expected: dict[str, Any] = {}
    planted: list[str] = []
    for name in draw(st.lists(st.sampled_from(SAFE_NAMES), unique=True, max_size=4)):
        if depth > 0 and draw(st.booleans()):
            inner, inner_expected, inner_planted = draw(snapshots(depth - 1))
            given_map[name], expected[name] = inner, inner_expected
            planted += inner_planted
        else:
            value = draw(safe_values)
            given_map[name] = expected[name] = value
    for name in draw(st.lists(st.sampled_from(SECRET_NAMES), unique=True, max_size=3)):
        secret = draw(secret_values)
        given_map[name] = secret
        planted.append(secret)
    return given_map, expected, planted


@settings(max_examples=60, deadline=None)
@given(snapshots())
def test_no_secret_named_text_survives_stripping_at_any_depth(
    case: tuple[dict[str, Any], dict[str, Any], list[str]],
) -> None:
    given_map, expected, planted = case
    stripped = strip_secrets(given_map)
    assert stripped == expected
    text = repr(stripped)
    assert not [secret for secret in planted if secret in text]
    assert strip_secrets(stripped) == stripped


# ----------------------------------------------------------------------------- idempotence, as a property

PROPERTY_INPUTS = make_inputs(6, files_per_task=2)  # three work units of two files each
PROPERTY_TASKS = sorted({item.task_id for item in PROPERTY_INPUTS})
PROPERTY_RELPATHS = [item.relpath for item in PROPERTY_INPUTS]


@st.composite
def record_plans(draw: st.DrawFn) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
    """A set of records (one value per key), shuffled with duplicates, and what the journal must hold."""
    uploads = draw(st.dictionaries(st.sampled_from(PROPERTY_RELPATHS), st.integers(0, 2**64)))
    expiries = draw(
        st.dictionaries(
            st.sampled_from(["input", "output", "app"]), st.integers(0, 10**6).map(_minutes_later)
        )
    )
    batches = draw(st.lists(st.lists(st.sampled_from(PROPERTY_TASKS), max_size=3), max_size=3))
    completed = draw(
        st.dictionaries(
            st.sampled_from(PROPERTY_TASKS),
            st.fixed_dictionaries(
                {"status": st.sampled_from(["succeeded", "failed"]), "exit_code": st.integers(0, 9)}
            ),
        )
    )
    downloads = draw(st.dictionaries(st.sampled_from(PROPERTY_RELPATHS), st.integers(0, 10**9)))
    file_failures = draw(
        st.dictionaries(
            st.sampled_from([relpath for relpath in PROPERTY_RELPATHS if relpath not in downloads] or [""]),
            st.fixed_dictionaries(
                {"exit_code": st.integers(1, 9), "message": st.text(alphabet="abc xyz", max_size=20)}
            ),
        ).map(lambda failures: {relpath: error for relpath, error in failures.items() if relpath})
    )
    operations: list[tuple[Any, ...]] = [
        *(("upload", relpath, md5_of(number)) for relpath, number in uploads.items()),
        *(("sas", purpose, moment) for purpose, moment in expiries.items()),
        *(("submitted", batch) for batch in batches),
        *(("completed", task_id, outcome) for task_id, outcome in completed.items()),
        *(("downloaded", relpath, size) for relpath, size in downloads.items()),
        *(("file_failed", relpath, error) for relpath, error in file_failures.items()),
    ]
    repeated = [op for op in operations for _ in range(draw(st.integers(1, 3)))]
    shuffled = draw(st.permutations(repeated))
    blob_by_relpath = {item.relpath: item.blob_name for item in PROPERTY_INPUTS}
    expected = {
        "uploads": {
            relpath: UploadRecord(md5_of(number), blob_by_relpath[relpath])
            for relpath, number in uploads.items()
        },
        "sas_expiries": expiries,
        "submitted": frozenset(task for batch in batches for task in batch) | frozenset(completed),
        "completed": completed,
        "downloads": {
            relpath: DownloadRecord(f"/out/{relpath}", size) for relpath, size in downloads.items()
        },
        "file_failures": file_failures,
    }
    return list(shuffled), expected


def _minutes_later(minutes: int) -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)


async def _apply(journal: Journal, operations: Sequence[tuple[Any, ...]]) -> None:
    blob_by_relpath = {item.relpath: item.blob_name for item in PROPERTY_INPUTS}
    for operation in operations:
        match operation:
            case ("upload", relpath, md5):
                await journal.record_upload(RUN, relpath, md5, blob_by_relpath[relpath])
            case ("sas", purpose, moment):
                await journal.record_sas_expiry(RUN, purpose, moment)
            case ("submitted", batch):
                await journal.record_tasks_submitted(RUN, batch)
            case ("completed", task_id, outcome):
                await journal.record_task_completed(RUN, task_id, outcome)
            case ("downloaded", relpath, size):
                await journal.record_output_downloaded(RUN, relpath, f"/out/{relpath}", size)
            case ("file_failed", relpath, error):
                await journal.record_file_failed(RUN, relpath, error)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record_plans(), st.booleans())
def test_any_order_of_repeated_records_yields_the_same_run_record(
    plan: tuple[list[tuple[Any, ...]], dict[str, Any]], concurrently: bool
) -> None:
    """In sequence, or all at once from one task group (as the pipeline's concurrent stages do)."""
    operations, expected = plan

    async def scenario(folder: Path) -> RunRecord | None:
        async with await Journal.open(folder) as journal:
            await journal.create_run(RUN, {"run": {"top": 5}}, PROPERTY_INPUTS)
            if concurrently:
                async with anyio.create_task_group() as group:
                    for operation in operations:
                        group.start_soon(_apply, journal, [operation])
            else:
                await _apply(journal, operations)
            return await journal.load_run(RUN)

    with tempfile.TemporaryDirectory() as folder:
        record = anyio.run(scenario, Path(folder))
    assert record is not None
    assert record.uploads == expected["uploads"]
    assert record.sas_expiries == expected["sas_expiries"]
    assert record.submitted_task_ids == expected["submitted"]
    assert record.completed == expected["completed"]
    assert record.downloads == expected["downloads"]
    assert record.file_failures == expected["file_failures"]
    assert [change.state for change in record.state_history] == ["CREATED"]


# ----------------------------------------------------------------------------- describe_run (pure)


def test_describe_run_counts_each_stage_and_lists_failed_files() -> None:
    """A hand-built record: 6 files in 5 work units, in every condition a run can hold.

    t000000 (file 0) failed; t000001 (file 1) runs; t000002 (file 2) is not submitted; t000003
    (files 3 and 4) failed but file 3 was salvaged and file 4 recorded as failed; t000004 (file 5)
    succeeded and its output is not saved yet.
    """
    inputs = make_inputs(6)
    unit_of = {0: "t000000", 1: "t000001", 2: "t000002", 3: "t000003", 4: "t000003", 5: "t000004"}
    inputs = [JournalInput(**{**item.__dict__, "task_id": unit_of[item.index]}) for item in inputs]
    relpath = [item.relpath for item in inputs]
    created = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
    record = RunRecord(
        run_id=RUN,
        created_at=created,
        state="RUNNING",
        state_history=(
            StateChange("CREATED", created),
            StateChange("PREPARING", created + timedelta(seconds=1)),
            StateChange("RUNNING", created + timedelta(seconds=9)),
        ),
        settings_snapshot={},
        inputs=tuple(inputs),
        uploads={item.relpath: UploadRecord(md5_of(item.index), item.blob_name) for item in inputs[:5]},
        sas_expiries={"output": created + timedelta(hours=3)},
        submitted_task_ids=frozenset({"t000000", "t000001", "t000003", "t000004"}),
        completed={
            "t000000": {
                "status": "failed",
                "exit_code": 42,
                "failure_code": "FailureExitCode",
                "message": "the task exited with code 42",
                "stderr_tail": "boom",
            },
            "t000003": {"status": "failed", "exit_code": 3},
            "t000004": {"exit_code": 0},
        },
        downloads={relpath[3]: DownloadRecord("/out/3", 10)},
        out_dir="/out",
        file_failures={relpath[4]: {"exit_code": 3, "message": "its output is missing"}},
    )
    described = describe_run(record)
    assert described["state"] == "RUNNING"
    assert described["finished"] is False
    assert described["out_dir"] == "/out"
    assert described["files"] == 6
    assert described["tasks"] == 5
    assert described["bytes"] == sum(range(100, 106))
    assert described["stages"] == {
        "staging": {"done": 5, "total": 6},
        "submitting": {"done": 4, "total": 5},
        "running": {"done": 3, "total": 5},
        "collecting": {"done": 3, "total": 4},
    }
    assert described["files_succeeded"] == 1
    assert described["files_failed"] == 2
    assert (described["tasks_succeeded"], described["tasks_failed"], described["tasks_in_flight"]) == (
        1,
        2,
        1,
    )
    assert described["failures"] == [
        {
            "file": relpath[0],
            "task_id": "t000000",
            "exit_code": 42,
            "failure_code": "FailureExitCode",
            "message": "the task exited with code 42",
            "stderr_tail": "boom",
        },
        {
            "file": relpath[4],
            "task_id": "t000003",
            "exit_code": 3,
            "failure_code": None,
            "message": "its output is missing",
            "stderr_tail": None,
        },
    ]
    assert described["created_at"] == "2026-11-22T00:00:00.000000+00:00"
    assert described["updated_at"] == "2026-11-22T00:00:09.000000+00:00"
    assert described["sas_expiries"] == {"output": "2026-11-22T03:00:00.000000+00:00"}
    assert [entry["state"] for entry in described["history"]] == ["CREATED", "PREPARING", "RUNNING"]
    assert undownloaded_relpaths(record) == (relpath[5],)
    assert unsubmitted_task_ids(record) == ("t000002",)
    assert incomplete_task_ids(record) == ("t000001",)
    json.dumps(described)


def test_once_finished_a_failed_units_unsaved_files_count_as_failed() -> None:
    """While running, a failed unit of two files may still yield the second; once finished, it has not."""
    first, second = (JournalInput(**{**item.__dict__, "task_id": "t000000"}) for item in make_inputs(2))
    created = datetime(2026, 11, 22, tzinfo=UTC)
    running = RunRecord(
        run_id=RUN,
        created_at=created,
        state="RUNNING",
        state_history=(StateChange("RUNNING", created),),
        settings_snapshot={},
        inputs=(first, second),
        uploads={},
        sas_expiries={},
        submitted_task_ids=frozenset({"t000000"}),
        completed={"t000000": {"status": "failed", "exit_code": 3, "message": "one input was unreadable"}},
        downloads={first.relpath: DownloadRecord("/out/first", 1)},
    )
    finished = dataclasses.replace(running, state="FAILED")
    assert undownloaded_relpaths(running) == (second.relpath,)
    assert failed_relpaths(running) == ()
    assert undownloaded_relpaths(finished) == ()
    assert failed_relpaths(finished) == (second.relpath,)
    assert describe_run(finished)["failures"] == [
        {
            "file": second.relpath,
            "task_id": "t000000",
            "exit_code": 3,
            "failure_code": None,
            "message": "one input was unreadable",
            "stderr_tail": None,
        }
    ]


async def test_a_journal_written_at_schema_1_is_migrated_and_keeps_its_runs(tmp_path: Path) -> None:
    """What an older topn left behind opens in this one: the migration adds, and nothing is lost."""
    from orchestrator.journal.schema import MIGRATIONS

    path = tmp_path / JOURNAL_FILENAME
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode = WAL")
    old.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    for statement in MIGRATIONS[0]:
        old.execute(statement)
    old.execute("INSERT INTO schema_version VALUES (1, '2026-11-01T00:00:00+00:00')")
    old.execute("INSERT INTO runs VALUES ('old-run', '2026-11-01T00:00:00+00:00', 'RUNNING', '{}')")
    old.execute(
        "INSERT INTO state_changes (run_id, state, at)"
        " VALUES ('old-run', 'RUNNING', '2026-11-01T00:00:00+00:00')"
    )
    old.execute(
        "INSERT INTO inputs VALUES"
        " ('old-run', 0, 'a.txt', '/data/a.txt', 5, 1, NULL, 'runs/old-run/a.txt', 't000000')"
    )
    old.close()

    async with await Journal.open(path) as journal:
        await journal.record_tasks_submitted("old-run", ["t000000"])
        record = await journal.load_run("old-run")
    assert record is not None
    assert record.state == "RUNNING"
    assert record.submitted_task_ids == {"t000000"}
    reader = sqlite3.connect(path)
    versions = [row[0] for row in reader.execute("SELECT version FROM schema_version ORDER BY version")]
    indexes = {row[0] for row in reader.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    plan = reader.execute(
        "EXPLAIN QUERY PLAN SELECT 1 FROM inputs WHERE run_id = 'old-run' AND task_id = 't000000'"
    ).fetchall()
    reader.close()
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert record.out_dir is None  # older journals did not know the results folder
    assert "inputs_by_task" in indexes
    assert "inputs_by_task" in repr(plan)


async def test_re_issued_task_generations_are_kept_by_unit_and_the_latest_wins(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, make_inputs(3))
        await journal.record_task_generations(RUN, {"t000000": 1, "t000002": 1})
        await journal.record_task_generations(RUN, {"t000002": 2})
        with pytest.raises(JournalError, match="t000777"):
            await journal.record_task_generations(RUN, {"t000777": 1})
        with pytest.raises(ValueError, match="1 or more"):
            await journal.record_task_generations(RUN, {"t000001": 0})
    async with await Journal.open(tmp_path) as journal:
        record = await journal.load_run(RUN)
    assert record is not None
    assert dict(record.task_generations) == {"t000000": 1, "t000002": 2}


async def test_the_error_that_ended_a_run_is_kept_redacted_and_the_latest_wins(tmp_path: Path) -> None:
    sas = "https://acct.blob.core.windows.net/c/b?sv=2023-11-03&sp=r&sig=c2VjcmV0c2lnbmF0"
    async with await Journal.open(tmp_path / "journal.sqlite3") as journal:
        await journal.create_run("20261206t010203z-abcdef", {}, [], out_dir=tmp_path / "out")
        await journal.record_run_error(
            "20261206t010203z-abcdef", error_type="X", message="first", resumable=False, state="RUNNING"
        )
        await journal.record_run_error(
            "20261206t010203z-abcdef",
            error_type="ServiceUnavailableError",
            message=f"gone: {sas}",
            resumable=True,
            state="COLLECTING",
        )
    async with await Journal.open(tmp_path / "journal.sqlite3") as journal:
        record = await journal.load_run("20261206t010203z-abcdef")
    assert record is not None and record.last_error is not None
    assert record.last_error["error_type"] == "ServiceUnavailableError"
    assert record.last_error["state"] == "COLLECTING" and record.last_error["resumable"] is True
    assert "c2VjcmV0c2lnbmF0" not in json.dumps(record.last_error)
    assert (
        describe_run(record)["last_error"]["next_step"]
        == "once the cause is fixed: topn resume 20261206t010203z-abcdef"
    )
