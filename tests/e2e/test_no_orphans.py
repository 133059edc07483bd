"""`kill -9` of a local-mode `topn run`: the Azurite and emulator it started do not outlive it (issue 10,
point 6), and `topn resume` then finishes the run with exact results on services of its own.

Local mode is on here (unlike the other end-to-end tests): the services under test are the ones
topn itself starts, as children, on its own state folder.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.e2e.fault_support import run_topn_live
from tests.e2e.run_cli import reference_top, run_topn

pytestmark = pytest.mark.asyncio(loop_scope="session")

TEXTS = {f"t{number}.txt": f"gull tern gull {number} tern gull\n" for number in range(4)}
SURVIVAL_LIMIT_S = 5.0


def local_environment(tmp_path: Path) -> dict[str, str]:
    keep = {name: value for name, value in os.environ.items() if not name.startswith("TOPN_")}
    return {
        **keep,
        "TOPN_LOCAL_STATE_DIR": str(tmp_path / ".topn"),
        "TOPN_POOL_ID": "orphans",
        "TOPN_RUN_MAX_FILES_PER_TASK": "1",
        "TOPN_RUN_POLL_MIN_S": "0.1",
        "TOPN_RUN_POLL_MAX_S": "0.5",
    }


def processes_using(folder: Path) -> list[tuple[int, str]]:
    """Every live process whose command line names `folder` (the services' data folders are in it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if str(folder) in command and state != "Z":
            found.append((int(entry.name), command[:200]))
    return found


async def test_kill_9_leaves_no_local_service_behind_and_resume_finishes(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for name, text in TEXTS.items():
        (tmp_path / "in" / name).write_text(text, encoding="utf-8")
    env = local_environment(tmp_path)
    pids: list[int] = []
    started: dict[str, int] = {}
    killed_at: list[float] = []

    async def kill_in_running(event: dict[str, Any]) -> None:
        if event.get("event") == "local.service_started":
            started[str(event["service"])] = int(event["pid"])
        if event.get("event") == "run.state_changed" and event.get("to_state") == "RUNNING" and not killed_at:
            os.kill(pids[0], signal.SIGKILL)
            killed_at.append(time.monotonic())

    run = await run_topn_live(["run", "in", "--out", "out"], tmp_path, env, kill_in_running, pids.append)
    assert killed_at, run.stderr[-3000:]
    assert set(started) == {"azurite", "emulator"}, run.stderr[-3000:]
    survivors = processes_using(tmp_path / ".topn")
    while survivors and time.monotonic() - killed_at[0] < SURVIVAL_LIMIT_S:
        await anyio.sleep(0.1)
        survivors = processes_using(tmp_path / ".topn")
    for pid, _ in survivors:  # a failing test must not leave them running either
        os.kill(pid, signal.SIGKILL)
    assert survivors == [], f"alive {time.monotonic() - killed_at[0]:.1f} s after kill -9: {survivors}"

    run_ids = {event["run_id"] for event in run.events() if "run_id" in event}
    assert len(run_ids) == 1
    resumed = run_topn(["resume", run_ids.pop(), "--json"], tmp_path, env)
    assert resumed.exit_code == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout)
    assert summary["state"] == "SUCCEEDED"
    assert summary["top"] == reference_top([TEXTS[name] for name in sorted(TEXTS)], "words", 10)
    assert processes_using(tmp_path / ".topn") == []  # the resume stopped what it started, too
