"""The emulator as a process: loopback only, clean stop, process limit, submission order."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import aiohttp
import anyio
import pytest
from azure.batch import models

from orchestrator.local import processes as local
from tests.conftest import BatchEndpoint, StartEmulator
from tests.integration.emulator.conftest import batch_client, pool_options, wait_for, wait_job_done

pytestmark = pytest.mark.asyncio(loop_scope="session")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_sigterm_stops_the_emulator_and_kills_its_tasks(tmp_path: Path) -> None:
    service = await local.start_emulator(tmp_path / "nodes", tmp_path / "logs")
    assert service.endpoint.startswith("http://127.0.0.1:")
    assert service.details["account_name"] == local.EMULATOR_ACCOUNT_NAME
    emulator = BatchEndpoint(
        service.endpoint,
        local.EMULATOR_ACCOUNT_NAME,
        local.EMULATOR_ACCOUNT_KEY,
        tmp_path / "nodes",
        tmp_path / "logs",
        service.pid,
    )
    pid_file: list[Path] = []
    try:
        async with batch_client(emulator) as client:
            await client.create_pool(pool_options("p"))
            await client.create_job(
                models.BatchJobCreateOptions(id="j", pool_info=models.BatchPoolInfo(pool_id="p"))
            )
            await client.create_task(
                "j",
                models.BatchTaskCreateOptions(
                    id="long", command_line="/bin/sh -c 'echo $$ > pid; exec sleep 120'"
                ),
            )

            async def pid_written() -> bool:
                found = list((tmp_path / "nodes").glob("p/*/workitems/j/job-1/long/wd/pid"))
                if found and found[0].read_text().strip():
                    pid_file.extend(found)
                    return True
                return False

            await wait_for(pid_written, what="the task to start")
        task_pid = int(pid_file[0].read_text())
        assert process_alive(task_pid)
    finally:
        status = await local.stop_service(service)
    assert status == 0
    assert not process_alive(task_pid)
    assert '"event": "emulator.stopped"' in (tmp_path / "logs" / "emulator.stderr.log").read_text()


async def test_process_limit_and_submission_order(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(["--nodes-max-processes", "2"])
    marker = f"run-{uuid.uuid4().hex[:6]}"
    # Each task records how many tasks are running (marker files) while it runs, and its own id in order.
    command = (
        f"/bin/sh -c 'touch $AZ_BATCH_NODE_SHARED_DIR/{marker}.$AZ_BATCH_TASK_ID; "
        f"ls $AZ_BATCH_NODE_SHARED_DIR | grep -c {marker} >> $AZ_BATCH_NODE_SHARED_DIR/concurrency; "
        f"echo $AZ_BATCH_TASK_ID >> $AZ_BATCH_NODE_SHARED_DIR/order; sleep 0.2; "
        f"rm $AZ_BATCH_NODE_SHARED_DIR/{marker}.$AZ_BATCH_TASK_ID'"
    )
    ids = [f"t{index:02d}" for index in range(10)]
    async with batch_client(emulator) as client:
        await client.create_job(
            models.BatchJobCreateOptions(id="j", pool_info=models.BatchPoolInfo(pool_id="p"))
        )
        await client.create_task_collection(
            "j",
            models.BatchTaskGroup(
                task_values=[
                    models.BatchTaskCreateOptions(id=task_id, command_line=command) for task_id in ids
                ]
            ),
        )
        # The pool appears after the tasks, so all ten are queued when the first slot opens.
        await client.create_pool(pool_options("p", nodes=1, slots=8))
        await wait_job_done(client, "j", 10)
        node = (await client.get_task("j", "t00")).node_info.node_id
        shared = emulator.root / "p" / node / "shared"
        concurrency = [int(line) for line in (await anyio.Path(shared / "concurrency").read_text()).split()]
        order = (await anyio.Path(shared / "order").read_text()).split()
    assert len(concurrency) == 10
    assert max(concurrency) <= 2
    assert order[:2] and sorted(order) == ids
    # Starts follow submission order; the two slots may swap neighbours when they start together.
    assert all(abs(order.index(task_id) - position) <= 1 for position, task_id in enumerate(ids))


async def test_bad_flags_exit_2_naming_the_flag(tmp_path: Path) -> None:
    result = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "emulator",
            "--root",
            str(tmp_path),
            "--account-key",
            "not base64!",
            "--fault-503",
            "1.5",
        ],
        check=False,
    )
    assert result.returncode == 2
    message = result.stderr.decode()
    assert "--account-key" in message and "base64" in message
    assert "--fault-503" in message
    assert result.stdout == b""


async def test_taken_port_exits_1_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await anyio.run_process(
            [sys.executable, "-m", "emulator", "--root", str(tmp_path), "--port", str(port)], check=False
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()


async def test_tasks_run_concurrently_across_every_free_slot(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """Four tasks that each wait for all four to have started can only finish if they run together."""
    emulator = await start_emulator(["--nodes-max-processes", "4"])
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    command = (
        '/bin/sh -c \'touch "$BARRIER/$AZ_BATCH_TASK_ID"; '
        'while [ "$(ls "$BARRIER" | wc -l)" -lt 4 ]; do sleep 0.05; done\''
    )
    async with batch_client(emulator) as client:
        await client.create_pool(pool_options("p", nodes=2, slots=2))
        await client.create_job(
            models.BatchJobCreateOptions(
                id="j",
                pool_info=models.BatchPoolInfo(pool_id="p"),
                common_environment_settings=[models.EnvironmentSetting(name="BARRIER", value=str(barrier))],
            )
        )
        tasks = [
            models.BatchTaskCreateOptions(
                id=f"t{index}",
                command_line=command,
                # A bound, so a scheduler that runs fewer than four at once fails instead of hanging.
                constraints=models.BatchTaskConstraints(max_wall_clock_time=timedelta(seconds=20)),
            )
            for index in range(4)
        ]
        await client.create_tasks("j", tasks)
        counts = await wait_job_done(client, "j", 4, timeout_s=60)
        nodes = {task.node_info.node_id async for task in client.list_tasks("j")}
    assert counts.succeeded == 4
    assert len(nodes) == 2


async def test_events_cover_every_request_and_task_state_change(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator()
    async with batch_client(emulator) as client:
        await client.create_pool(pool_options("p"))
        await client.create_job(
            models.BatchJobCreateOptions(id="j", pool_info=models.BatchPoolInfo(pool_id="p"))
        )
        await client.create_tasks(
            "j", [models.BatchTaskCreateOptions(id="t", command_line="/bin/sh -c 'exit 3'")]
        )
        await wait_job_done(client, "j", 1)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{emulator.endpoint}/_emulator/stats") as response,
        ):
            stats = await response.json(content_type=None)
    log_text = await anyio.Path(emulator.log_dir / "emulator.stderr.log").read_text()
    events = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    requests = [event for event in events if event["event"] == "request.completed"]
    by_operation: dict[str, int] = {}
    for event in requests:
        assert {"operation", "status", "duration_s", "method", "path", "timestamp", "level"} <= event.keys()
        by_operation[event["operation"]] = by_operation.get(event["operation"], 0) + 1
    assert by_operation == stats["requests"]
    assert sum(by_operation.values()) == stats["requests_total"]
    changes = [
        (event["from_state"], event["to_state"])
        for event in events
        if event["event"] == "task.state_changed" and event["task_id"] == "t"
    ]
    assert changes == [("active", "running"), ("running", "completed")]
    final = [event for event in events if event["event"] == "task.state_changed"][-1]
    assert (final["exit_code"], final["result"], final["failure_code"]) == (3, "failure", "FailureExitCode")


async def test_tasks_read_no_stdin(tmp_path: Path) -> None:
    """A node task has no terminal: reading stdin ends at once, even when the emulator's stdin stays open."""
    command = local.emulator_command(tmp_path / "nodes")
    async with await anyio.open_process(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as process:
        assert process.stdout is not None
        announced = b""
        with anyio.fail_after(30):
            while not announced.endswith(b"\n"):
                announced += await process.stdout.receive(1)
        endpoint = json.loads(announced)["endpoint"]
        emulator = BatchEndpoint(
            endpoint,
            local.EMULATOR_ACCOUNT_NAME,
            local.EMULATOR_ACCOUNT_KEY,
            tmp_path / "nodes",
            tmp_path,
            process.pid,
        )
        try:
            async with batch_client(emulator) as client:
                await client.create_pool(pool_options("p"))
                await client.create_job(
                    models.BatchJobCreateOptions(id="j", pool_info=models.BatchPoolInfo(pool_id="p"))
                )
                reader = models.BatchTaskCreateOptions(
                    id="reader",
                    command_line="/bin/sh -c 'cat; echo read-done'",
                    # A bound, so an inherited open stdin fails the test instead of hanging it.
                    constraints=models.BatchTaskConstraints(max_wall_clock_time=timedelta(seconds=10)),
                )
                await client.create_task("j", reader)
                await wait_job_done(client, "j", 1)
                task = await client.get_task("j", "reader")
                printed = b"".join(
                    [chunk async for chunk in await client.download_task_file("j", "reader", "stdout.txt")]
                )
        finally:
            process.terminate()
            await process.wait()
    assert task.execution_info.exit_code == 0
    assert printed == b"read-done\n"


async def test_sigint_also_stops_cleanly(tmp_path: Path) -> None:
    service = await local.start_emulator(tmp_path / "nodes", tmp_path / "logs")
    try:
        os.kill(service.pid, signal.SIGINT)
        with anyio.fail_after(20):
            status = await service.process.wait()
    finally:
        await local.stop_service(service)
    assert status == 0
    log_text = await anyio.Path(tmp_path / "logs" / "emulator.stderr.log").read_text()
    assert '"signal": "SIGINT"' in log_text and '"event": "emulator.stopped"' in log_text
    assert "Traceback" not in log_text
