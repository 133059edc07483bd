"""`topn` as a user runs it (a subprocess in a temporary folder): usage and config errors, wrong keys,
and `topn local up` / `down` around a run."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from azure.storage.blob.aio import BlobServiceClient

from orchestrator.local.processes import AZURITE_ACCOUNT_KEY, EMULATOR_ACCOUNT_KEY
from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.secret_scan import find_secrets, texts_under

PROJECT = Path(__file__).resolve().parents[2]
LOCAL_CONFIG = PROJECT / "config" / "local.toml"
EXAMPLES = PROJECT / "examples" / "texts"
WRONG_KEY = base64.b64encode(b"a key that belongs to no account at all").decode()
TOPN = [sys.executable, "-m", "orchestrator"]


def user_environment(**overrides: str) -> dict[str, str]:
    """The test process's environment without any TOPN_ setting, plus `overrides`."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith("TOPN_")}
    environ.update(overrides)
    return environ


def topn(cwd: Path, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TOPN, *args],
        cwd=cwd,
        env=dict(env or user_environment()),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def topn_async(cwd: Path, *args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    done = await anyio.run_process([*TOPN, *args], cwd=cwd, env=dict(env), check=False)
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode("utf-8"), done.stderr.decode("utf-8")
    )


def events(stderr: str) -> list[dict[str, Any]]:
    """stderr as JSON events; a line that is not JSON fails the test (the stream must stay parseable)."""
    return [json.loads(line) for line in stderr.splitlines() if line.strip()]


def failure_message(stderr: str) -> str:
    failed = [event for event in events(stderr) if event["event"] == "command.failed"]
    assert len(failed) == 1, stderr
    assert failed[0]["exit_code"] == 2
    return str(failed[0]["error"])


def texts_folder(root: Path) -> Path:
    folder = root / "texts"
    folder.mkdir()
    (folder / "one.txt").write_text("red green red\n", encoding="utf-8")
    return folder


# --- usage and configuration errors: exit 2, the problem named, nothing created ------------------


def test_a_bad_config_value_names_the_key_and_the_file(tmp_path: Path) -> None:
    config = tmp_path / "mine.toml"
    config.write_text(
        LOCAL_CONFIG.read_text(encoding="utf-8").replace("top = 10", "top = 0"), encoding="utf-8"
    )
    done = topn(tmp_path, "run", str(texts_folder(tmp_path)), "--config", str(config))
    assert done.returncode == 2, done.stderr
    message = failure_message(done.stderr)
    assert "[run] top" in message and str(config) in message
    assert done.stdout == ""
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine.toml", "texts"]  # nothing created


def test_a_bad_environment_override_names_the_variable(tmp_path: Path) -> None:
    env = user_environment(TOPN_POOL_DEDICATED_NODES="two")
    done = topn(tmp_path, "run", str(texts_folder(tmp_path)), env=env)
    assert done.returncode == 2
    assert "TOPN_POOL_DEDICATED_NODES" in failure_message(done.stderr)


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    done = topn(tmp_path, "run", str(texts_folder(tmp_path)), "--config", "nowhere.toml")
    assert done.returncode == 2
    assert "nowhere.toml" in failure_message(done.stderr)


def test_a_missing_input_path_is_named(tmp_path: Path) -> None:
    done = topn(tmp_path, "run", "no-such-folder")
    assert done.returncode == 2
    assert "no-such-folder" in failure_message(done.stderr)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_folder_is_refused(tmp_path: Path) -> None:
    # Only a hidden file: the folder has nothing topn would read. Its name must not be a word the
    # message could hold anyway ("empty" is in "results folder ... is not empty").
    (tmp_path / "drafts").mkdir()
    (tmp_path / "drafts" / ".hidden.txt").write_text("skipped\n", encoding="utf-8")
    done = topn(tmp_path, "run", "drafts")
    assert done.returncode == 2
    message = failure_message(done.stderr)
    assert "drafts" in message and "no files to process" in message, message
    assert [path.name for path in tmp_path.iterdir()] == ["drafts"]


def test_an_occupied_results_folder_is_refused_before_services_start(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("someone's file", encoding="utf-8")
    done = topn(tmp_path, "run", str(texts_folder(tmp_path)), "--out", "out")
    assert done.returncode == 2
    assert "not empty" in failure_message(done.stderr)
    assert [event["event"] for event in events(done.stderr)] == ["command.failed"]  # nothing started
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_a_results_folder_that_cannot_be_created_is_refused_before_services_start(tmp_path: Path) -> None:
    (tmp_path / "report.txt").write_text("a user's file", encoding="utf-8")
    done = topn(tmp_path, "run", str(texts_folder(tmp_path)), "--out", "report.txt/run1")
    assert done.returncode == 2, done.stderr
    message = failure_message(done.stderr)
    assert "report.txt is not a folder" in message and "--out" in message, message
    assert [event["event"] for event in events(done.stderr)] == ["command.failed"]  # nothing started
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.txt", "texts"]
    assert (tmp_path / "report.txt").read_text(encoding="utf-8") == "a user's file"


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    done = topn(tmp_path, "run", "x", "--top", "0")
    # The usage line always lists "--top"; the error line must say what was wrong with it.
    assert done.returncode == 2 and "argument --top: must be 1 or more, got 0" in done.stderr, done.stderr
    done = topn(tmp_path, "run")
    assert done.returncode == 2 and "at least one file or folder" in failure_message(done.stderr)


def test_console_errors_are_one_readable_line(tmp_path: Path) -> None:
    done = topn(tmp_path, "run", "no-such-folder", "--log-format", "console")
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()  # one line, no traceback, no event noise
    assert line.startswith("topn: error: ") and "no-such-folder" in line
    assert done.stdout == ""


# --- wrong keys: exit 2 at the first request, no retries, nothing created -----------------------

session_loop = pytest.mark.asyncio(loop_scope="session")


async def emulator_stats(endpoint: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{endpoint}/_emulator/stats") as response:
        stats: dict[str, Any] = await response.json()
        return stats


async def containers_with_prefix(azurite: StorageEndpoint, prefix: str) -> list[str]:
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        return [container.name async for container in service.list_containers(name_starts_with=prefix)]


def services_environment(
    azurite: StorageEndpoint, emulator: BatchEndpoint, prefix: str, **overrides: str
) -> dict[str, str]:
    return user_environment(
        TOPN_BATCH_ENDPOINT=emulator.endpoint,
        TOPN_STORAGE_BLOB_ENDPOINT=azurite.endpoint,
        TOPN_STORAGE_CONTAINER_PREFIX=prefix,
        TOPN_POOL_ID=f"{prefix}-pool",
        **overrides,
    )


@session_loop
async def test_a_wrong_batch_key_stops_at_one_request(
    tmp_path: Path, azurite: StorageEndpoint, batch_emulator: BatchEndpoint
) -> None:
    before = await emulator_stats(batch_emulator.endpoint)
    env = services_environment(azurite, batch_emulator, "wrongbatch", TOPN_BATCH_ACCOUNT_KEY=WRONG_KEY)
    done = await topn_async(tmp_path, "run", str(texts_folder(tmp_path)), env=env)
    after = await emulator_stats(batch_emulator.endpoint)
    assert done.returncode == 2, done.stderr
    message = failure_message(done.stderr)
    assert (
        "TOPN_BATCH_ACCOUNT_KEY" in message and "topnlocal" in message and "AuthenticationFailed" in message
    )
    assert after["requests_total"] - before["requests_total"] == 1  # no retry storm
    assert after["responses_by_status"].get("403", 0) - before["responses_by_status"].get("403", 0) == 1
    assert await containers_with_prefix(azurite, "wrongbatch") == []
    assert not (tmp_path / "results").exists()
    assert find_secrets([("stdout", done.stdout), ("stderr", done.stderr)], [WRONG_KEY]) == []


@session_loop
async def test_a_wrong_storage_key_stops_before_anything_is_created(
    tmp_path: Path, azurite: StorageEndpoint, batch_emulator: BatchEndpoint
) -> None:
    before = await emulator_stats(batch_emulator.endpoint)
    env = services_environment(azurite, batch_emulator, "wrongstore", TOPN_STORAGE_ACCOUNT_KEY=WRONG_KEY)
    done = await topn_async(tmp_path, "run", str(texts_folder(tmp_path)), env=env)
    after = await emulator_stats(batch_emulator.endpoint)
    assert done.returncode == 2, done.stderr
    message = failure_message(done.stderr)
    assert "TOPN_STORAGE_ACCOUNT_KEY" in message and "devstoreaccount1" in message
    # Only the Batch half of the credential check reached the emulator (a pool read and one page of
    # jobs): no pool, no job.
    assert after["requests_total"] - before["requests_total"] == 2
    assert after["requests"]["list_jobs"] - before["requests"].get("list_jobs", 0) == 1
    assert after["requests"].get("create_pool", 0) == before["requests"].get("create_pool", 0)
    assert await containers_with_prefix(azurite, "wrongstore") == []
    assert find_secrets([("stdout", done.stdout), ("stderr", done.stderr)], [WRONG_KEY]) == []


def test_a_foreign_batch_key_is_refused_before_local_mode_starts_the_emulator(tmp_path: Path) -> None:
    # A real account's key left exported must not reach the emulator's command line (`ps` shows it).
    env = user_environment(TOPN_BATCH_ACCOUNT_KEY=WRONG_KEY)
    done = topn(tmp_path, "run", str(texts_folder(tmp_path)), "--out", "out", env=env)
    assert done.returncode == 2, done.stderr
    assert "Unset TOPN_BATCH_ACCOUNT_KEY" in failure_message(done.stderr)
    assert [event["event"] for event in events(done.stderr)] == ["command.failed"]  # nothing started
    assert not (tmp_path / "out").exists()
    assert find_secrets([("stdout", done.stdout), ("stderr", done.stderr)], [WRONG_KEY]) == []
    up = topn(tmp_path, "local", "up", env=env)
    assert up.returncode == 2 and "Unset TOPN_BATCH_ACCOUNT_KEY" in failure_message(up.stderr)
    assert not (tmp_path / ".topn" / "local" / "services.json").exists()


# --- local up / down around a run ---------------------------------------------------------------


def catalogued_fields() -> dict[str, set[str]]:
    """docs/events.md's table: event name -> its documented fields."""
    fields: dict[str, set[str]] = {}
    for line in (PROJECT / "docs" / "events.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            fields[cells[0].strip("`")] = set(re.findall(r"`([^`]+)`", cells[2]))
    return fields


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); /proc tells whether it is really running.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def test_local_up_serves_runs_until_local_down(tmp_path: Path) -> None:
    up = topn(tmp_path, "local", "up")
    recorded_path = tmp_path / ".topn" / "local" / "services.json"
    try:
        assert up.returncode == 0, up.stderr
        recorded = json.loads(recorded_path.read_text(encoding="utf-8"))["services"]
        assert set(recorded) == {"azurite", "emulator"}
        pids = [int(service["pid"]) for service in recorded.values()]
        assert all(pid_alive(pid) for pid in pids)
        assert recorded["azurite"]["endpoint"] in up.stdout

        again = topn(tmp_path, "local", "up")  # idempotent: the same services
        assert again.returncode == 0
        assert json.loads(recorded_path.read_text(encoding="utf-8"))["services"] == recorded

        run = topn(tmp_path, "run", str(EXAMPLES), "--json", "--out", "out")
        assert run.returncode == 0, run.stderr
        summary = json.loads(run.stdout)
        assert summary["state"] == "SUCCEEDED" and len(summary["files"]) == 3
        emitted = events(run.stderr)
        names = [event["event"] for event in emitted]
        assert "local.service_started" not in names  # the run used what `local up` started
        assert "run.completed" in names
        catalogue = catalogued_fields()
        for event in emitted:
            assert str(event["timestamp"]).endswith("Z") and event["level"] in ("info", "warning")
            assert event["run_id"] == summary["run_id"]
            fields = set(event) - {"timestamp", "level", "event", "run_id"}
            assert fields == catalogue[event["event"]], event["event"]
        leaks = find_secrets(
            # Everything the run printed and every file under the folder: results, journal, service logs.
            [("stdout", run.stdout), ("stderr", run.stderr), *texts_under(tmp_path)],
            [EMULATOR_ACCOUNT_KEY, AZURITE_ACCOUNT_KEY],
        )
        assert leaks == []
    finally:
        down = topn(tmp_path, "local", "down")
    assert down.returncode == 0, down.stderr
    assert "stopped azurite" in down.stdout and "stopped emulator" in down.stdout
    assert not recorded_path.exists()
    assert not any(pid_alive(pid) for pid in pids)
    assert "nothing to stop" in topn(tmp_path, "local", "down").stdout


def test_local_commands_refuse_a_config_without_local_mode(tmp_path: Path) -> None:
    env = user_environment(TOPN_BATCH_ACCOUNT_KEY=WRONG_KEY, TOPN_STORAGE_ACCOUNT_KEY=WRONG_KEY)
    done = topn(tmp_path, "local", "up", "--config", str(PROJECT / "config" / "azure.toml"), env=env)
    assert done.returncode == 2
    assert "[local] enabled" in failure_message(done.stderr)


# --- Ctrl-C: the run is interrupted (left resumable), the services local mode started are stopped -


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_run_stops_the_services_it_started(tmp_path: Path, sent: signal.Signals) -> None:
    process = subprocess.Popen(
        [*TOPN, "run", str(EXAMPLES), "--out", "out"],
        cwd=tmp_path,
        env=user_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a foreground command
    )
    seen: list[dict[str, Any]] = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            seen.append(json.loads(line))
            if seen[-1]["event"] == "tasks.submitted":  # the job exists: clean-up has work to do
                # To the whole group, as a terminal's Ctrl-C does: the services must survive it
                # until the run's clean-up is done, and be stopped by topn afterwards.
                os.killpg(process.pid, sent)
                break
        remaining_stderr = process.stderr.read()
        status = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    seen += events(remaining_stderr)
    assert status == 128 + int(sent), remaining_stderr
    started = [event["pid"] for event in seen if event["event"] == "local.service_started"]
    stopped = [event["pid"] for event in seen if event["event"] == "local.service_stopped"]
    assert len(started) == 2 and sorted(started) == sorted(stopped)
    assert not any(pid_alive(pid) for pid in started)
    # The run itself is left resumable (issue 5, point 4): interrupted, not failed or cleaned up.
    interrupted = [event for event in seen if event["event"] == "run.interrupted"]
    assert len(interrupted) == 1 and interrupted[0]["resume_command"].startswith("topn resume ")
    assert not [event for event in seen if event["event"] in ("run.failed", "cleanup.failed")]
