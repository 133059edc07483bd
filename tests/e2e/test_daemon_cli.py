"""`topn daemon` as a user starts it: a second daemon on the same state folder or inbox exits 2 at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.service.instance import single_instance

ROOT = Path(__file__).resolve().parents[2]


def run_daemon_command(args: list[str], cwd: Path, state: Path) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("TOPN_")}
    env["TOPN_LOCAL_STATE_DIR"] = str(state)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "daemon",
            *args,
            "--config",
            str(ROOT / "config" / "local.toml"),
        ],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_second_daemon_exits_2_naming_the_pid_that_holds_the_state_folder(tmp_path: Path) -> None:
    with single_instance(tmp_path / "state", tmp_path / "inbox"):
        started = time.monotonic()
        result = run_daemon_command(["--inbox", str(tmp_path / "inbox")], tmp_path, tmp_path / "state")
        took = time.monotonic() - started
    assert result.returncode == 2, result.stdout + result.stderr
    # The daemon's events (its refusal too) are JSON lines on stdout.
    refusal = json.loads(result.stdout.strip().splitlines()[-1])
    assert refusal["event"] == "command.failed" and refusal["exit_code"] == 2
    assert f"pid {os.getpid()}" in refusal["error"] and "state folder" in refusal["error"]
    assert took < 20  # at once: nothing was started


def test_the_inbox_is_required(tmp_path: Path) -> None:
    result = run_daemon_command([], tmp_path, tmp_path / "state")
    assert result.returncode == 2
    assert "--inbox" in result.stdout + result.stderr
