"""Ctrl-C twice on a local-mode `topn run`: the Azurite and emulator it started do not outlive it,
and services a dead run left running are stopped by the next run (issue 10, point 6).

The second signal ends topn at once (`os._exit`), with no time to stop its services: only the
parent-death signal they were started with (orchestrator/local/processes.py) ends them. The two
SIGINTs are delivered one after the other, the second once the kernel has handed over the first
(two SIGINTs pending at once would merge into one).

A service that outlives its run anyway (elsewhere than Linux, or one that ignored the signal) is
simulated next: a real Azurite and a real emulator on the state folder's own data folders, started
without that signal and recorded under `<state_dir>/local/children/` as a run records its children.
The next run on that state folder, here the `topn resume` that finishes the interrupted run, must
stop both (`local.survivor_stopped`) before it starts its own on the same data folders.
"""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.local import processes
from tests.e2e.fault_support import run_topn_live
from tests.e2e.run_cli import reference_top, run_topn
from tests.e2e.test_no_orphans import SURVIVAL_LIMIT_S, TEXTS, local_environment, processes_using

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

SIGINT_BIT = 1 << (int(signal.SIGINT) - 1)


def sigint_pending(pid: int) -> bool:
    """Whether a SIGINT sent to the process is still waiting to be delivered (`ShdPnd` in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("ShdPnd:"):
            return bool(int(line.split()[1], 16) & SIGINT_BIT)
    return False


async def start_survivors(local: Path, stack: AsyncExitStack) -> dict[str, processes.ServiceProcess]:
    """Azurite and the emulator as a dead run would leave them: detached, recorded, no parent-death signal."""
    azurite = await processes.start_azurite(local / "azurite", local / "logs", detached=True)
    stack.push_async_callback(processes.stop_service, azurite, 1.0)  # only if the test fails
    emulator = await processes.start_emulator(local / "emulator", local / "logs", detached=True)
    stack.push_async_callback(processes.stop_service, emulator, 1.0)
    survivors = {"azurite": azurite, "emulator": emulator}
    (local / "children").mkdir(parents=True, exist_ok=True)
    for name, service in survivors.items():
        # The dead run's record; its `parent_pid` is a pid no process has.
        record = {"pid": service.pid, "parent_pid": 2**22 + 1, "endpoint": service.endpoint}
        (local / "children" / f"{name}.json").write_text(json.dumps(record) + "\n", encoding="utf-8")
    return survivors


async def test_a_second_ctrl_c_leaves_no_service_behind_and_the_next_run_stops_survivors(
    tmp_path: Path,
) -> None:
    (tmp_path / "in").mkdir()
    for name, text in TEXTS.items():
        (tmp_path / "in" / name).write_text(text, encoding="utf-8")
    env = {**local_environment(tmp_path), "TOPN_POOL_ID": "second-interrupt"}
    pids: list[int] = []
    started: dict[str, int] = {}
    second_at: list[float] = []

    async def interrupt_twice_in_running(event: dict[str, Any]) -> None:
        if event.get("event") == "local.service_started":
            started[str(event["service"])] = int(event["pid"])
        if event.get("event") == "run.state_changed" and event.get("to_state") == "RUNNING" and not second_at:
            os.kill(pids[0], signal.SIGINT)
            for _ in range(5000):  # 5 s at most
                if not sigint_pending(pids[0]):
                    break
                await anyio.sleep(0.001)
            os.kill(pids[0], signal.SIGINT)
            second_at.append(time.monotonic())

    run = await run_topn_live(
        ["run", "in", "--out", "out", "--json"], tmp_path, env, interrupt_twice_in_running, pids.append
    )
    assert second_at, run.stderr[-3000:]
    assert set(started) == {"azurite", "emulator"}, run.stderr[-3000:]
    events = run.events()
    # The second Ctrl-C ended topn at once, with SIGINT's status, before any stop of its own.
    assert events[-1]["event"] == "signal.repeated" and run.exit_code == 130, run.stderr[-3000:]
    assert not [event for event in events if event["event"] == "local.service_stopped"]
    survivors = processes_using(tmp_path / ".topn")
    while survivors and time.monotonic() - second_at[0] < SURVIVAL_LIMIT_S:
        await anyio.sleep(0.1)
        survivors = processes_using(tmp_path / ".topn")
    for pid, _ in survivors:  # a failing test must not leave them running either
        os.kill(pid, signal.SIGKILL)
    assert survivors == [], (
        f"alive {time.monotonic() - second_at[0]:.1f} s after the second SIGINT: {survivors}"
    )
    run_ids = {event["run_id"] for event in events if "run_id" in event}
    assert len(run_ids) == 1

    async with AsyncExitStack() as stack:
        left = await start_survivors(tmp_path / ".topn" / "local", stack)
        resumed = run_topn(["resume", run_ids.pop(), "--json"], tmp_path, env)
        assert resumed.exit_code == 0, resumed.stderr[-3000:]
        stopped = {
            event["service"]: event["pid"]
            for event in resumed.events()
            if event["event"] == "local.survivor_stopped"
        }
        assert stopped == {name: service.pid for name, service in left.items()}, resumed.stderr[-3000:]
        for name, service in left.items():
            # Ended by the resume (SIGTERM, or SIGKILL after its grace period), not by this test.
            assert service.process.returncode is not None, name
        restarted = [event for event in resumed.events() if event["event"] == "local.service_started"]
        assert {event["service"] for event in restarted} == {"azurite", "emulator"}
        assert not {event["pid"] for event in restarted} & {service.pid for service in left.values()}
    summary = resumed.summary()
    assert summary["state"] == "SUCCEEDED"
    assert summary["top"] == reference_top([TEXTS[name] for name in sorted(TEXTS)], "words", 10)
    assert processes_using(tmp_path / ".topn") == []  # the resume stopped what it started, too
    assert list((tmp_path / ".topn" / "local" / "children").iterdir()) == []
