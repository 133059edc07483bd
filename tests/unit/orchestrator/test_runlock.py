"""One driver per run: a live holder refuses a second driver by pid; a killed holder holds nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from orchestrator import cli
from orchestrator.journal import Journal, journal_path
from orchestrator.run.pipeline import settings_snapshot
from orchestrator.service.runlock import RunLockedError, run_lock
from orchestrator.settings import load_settings

ROOT = Path(__file__).resolve().parents[3]
RUN_ID = "20261206t010203z-abcdef"
HOLDER = """
import sys, time
from pathlib import Path
from orchestrator.service.runlock import run_lock
with run_lock(Path(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds RUN_ID's lock until it is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "state"), RUN_ID],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


def test_a_live_holder_is_named_and_a_killed_one_holds_nothing(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(RunLockedError) as raised, run_lock(tmp_path / "state", RUN_ID):
        pass
    assert f"pid {holder.pid}" in str(raised.value) and raised.value.exit_code == 2
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    state = tmp_path / "state"
    # Taken at once (the dead process held nothing), and now this process is the one named.
    with (
        run_lock(state, RUN_ID),
        pytest.raises(RunLockedError, match=f"pid {os.getpid()}"),
        run_lock(state, RUN_ID),
    ):
        pass
    with run_lock(tmp_path / "state", "20261206t010203z-000000"):  # another run's lock is its own
        pass


def test_topn_resume_of_a_run_another_process_drives_is_exit_2_at_once(
    tmp_path: Path,
    holder: subprocess.Popen[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOPN_LOCAL_STATE_DIR", str(tmp_path / "state"))
    settings = load_settings(ROOT / "config" / "local.toml", dict(os.environ))

    async def unfinished_run() -> None:
        async with await Journal.open(journal_path(tmp_path / "state")) as journal:
            await journal.create_run(RUN_ID, settings_snapshot(settings), [], out_dir=tmp_path / "out")
            await journal.record_state(RUN_ID, "RUNNING")

    anyio.run(unfinished_run)
    started = time.monotonic()
    assert cli.main(["resume", RUN_ID, "--log-format", "console"]) == 2
    assert time.monotonic() - started < 10  # at once: no service was started
    assert f"pid {holder.pid}" in capsys.readouterr().err


def test_local_down_while_a_run_is_driven_asks_for_force(
    tmp_path: Path,
    holder: subprocess.Popen[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOPN_LOCAL_STATE_DIR", str(tmp_path / "state"))
    assert cli.main(["local", "down", "--log-format", "console"]) == 2
    err = capsys.readouterr().err
    assert f"{RUN_ID} (pid {holder.pid})" in err and "--force" in err
    assert cli.main(["local", "down", "--force", "--log-format", "console"]) == 0
    assert "nothing to stop" in capsys.readouterr().out
    holder.kill()
    holder.wait(timeout=10)
    assert cli.main(["local", "down", "--log-format", "console"]) == 0  # a dead holder holds nothing
