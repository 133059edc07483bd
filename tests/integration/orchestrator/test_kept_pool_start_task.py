"""A kept pool's start task never carries an expired SAS: real emulator, real Azurite SAS, real SDK clients.

The bug: a pool kept from an earlier run stages node.pyz through a SAS minted by that run. Once it
expires, any node that joins or reboots fails its start task (403 from Storage), and the pool
quietly loses capacity. The fix: a run that reuses the pool renews the start task's SAS and reboots,
once, the nodes whose start task failed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from azure.batch.aio import BatchClient
from azure.batch.models import BatchNode, BatchPoolResizeOptions
from structlog.testing import capture_logs

from orchestrator import naming
from orchestrator.azure import pool, sas, staging
from orchestrator.azure.clients import Clients, open_clients
from orchestrator.azure.retry import RetryPolicy
from orchestrator.errors import PoolError
from orchestrator.inputs import discover_inputs
from orchestrator.run.pipeline import run_pipeline
from orchestrator.service.poolkeeper import PoolKeeper
from orchestrator.settings import Settings
from tests.conftest import BatchEndpoint, StartEmulator, StorageEndpoint
from tests.integration.orchestrator.test_pipeline_run import settings_for, stand_in_node

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAST = RetryPolicy(max_attempts=4, base_delay_s=0.05, max_delay_s=0.5, deadline_s=30)


async def http_status(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status


async def wait_until(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """Poll `check` (async, returning a value or None) until it gives a value; fail after `timeout_s`."""
    try:
        with anyio.fail_after(timeout_s):
            while True:
                value = await check()
                if value is not None:
                    return value
                await anyio.sleep(0.1)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


async def node_in_state(batch: BatchClient, pool_id: str, state: str) -> BatchNode | None:
    nodes = [node async for node in batch.list_nodes(pool_id)]
    return next((node for node in nodes if node.state == state), None)


async def stage_script(clients: Clients, settings: Settings, script: bytes) -> tuple[str, str]:
    """The node script in the app container, as a run stages it: (container, blob name)."""
    container = naming.app_container(settings.storage.container_prefix)
    await staging.ensure_containers(clients.blob_service, [container], FAST)
    return container, await staging.stage_node_script(clients.blob_service, container, script, FAST)


def read_url(storage: StorageEndpoint, container: str, blob_name: str, lifetime: timedelta) -> str:
    now = sas.utc_now()
    token = sas.mint_blob_read_sas(
        account_name=storage.account_name,
        container=container,
        blob_name=blob_name,
        start=now - sas.CLOCK_SKEW,
        expiry=now + lifetime,
        account_key=storage.account_key,
    )
    return sas.blob_url(storage.endpoint, container, blob_name, token)


def kept_pool_settings(
    batch: BatchEndpoint, storage: StorageEndpoint, state_dir: Path, pool_id: str
) -> Settings:
    """Local-mode settings (the pool is kept after a run) for a one-node pool of its own."""
    return settings_for(batch, storage, state_dir, TOPN_POOL_ID=pool_id, TOPN_POOL_DEDICATED_NODES="1")


def one_input(folder: Path) -> list[Any]:
    folder.mkdir()
    (folder / "a.txt").write_text("kept pools keep working", encoding="utf-8")
    return discover_inputs([folder])


async def test_a_kept_pool_whose_start_task_sas_expired_is_renewed_and_its_failed_node_rebooted(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    settings = kept_pool_settings(batch, azurite, tmp_path / "state", "kept-pool")
    script = stand_in_node()
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        # An earlier run's pool, with topn's own start task, whose SAS ends within seconds; it
        # starts with no node, so no start task can run before the SAS has expired.
        container, blob_name = await stage_script(clients, settings, script)
        old_url = read_url(azurite, container, blob_name, timedelta(seconds=2))
        empty = dataclasses.replace(settings.pool, dedicated_nodes=0)
        start_command = naming.start_task_command_line()
        assert await pool.ensure_pool(clients.batch, empty, old_url, start_command, FAST)

        async def refused() -> int | None:
            status = await http_status(old_url)
            return status if status == 403 else None

        await wait_until(refused, "Azurite to refuse the expired SAS")

        # The pool grows (a resize, autoscale, a spot node coming back): the new node cannot
        # download node.pyz, so its start task fails and the pool has no capacity.
        await clients.batch.begin_resize_pool(
            settings.pool.id, BatchPoolResizeOptions(target_dedicated_nodes=1)
        )
        failed = await wait_until(
            lambda: node_in_state(clients.batch, settings.pool.id, "starttaskfailed"),
            "the start task to fail",
        )
        assert failed.start_task_info is not None and failed.start_task_info.failure_info is not None
        assert failed.start_task_info.failure_info.code == "BlobAccessDenied"

        with capture_logs() as logs:
            summary = await run_pipeline(
                settings,
                one_input(tmp_path / "in"),
                clients,
                tmp_path / "out",
                pool=PoolKeeper(settings, clients, script),
            )

        assert summary["state"] == "SUCCEEDED"
        assert "Node: " in (tmp_path / "out" / "a_OUTPUT.txt").read_text(encoding="utf-8")
        renewed = [entry for entry in logs if entry["event"] == "pool.start_task_renewed"]
        assert len(renewed) == 1
        assert (renewed[0]["pool_id"], renewed[0]["reason"]) == ("kept-pool", "expiring")
        assert renewed[0]["sas_expires_in_s"] < 0  # it had expired
        reboots = [entry for entry in logs if entry["event"] == "node.rebooted"]
        assert [(entry["node_id"], entry["reason"]) for entry in reboots] == [
            (failed.id, "start_task_failed")
        ]
        assert "pool.node_script_outdated" not in [entry["event"] for entry in logs]  # same script
        assert "sig=" not in json.dumps(logs, default=str)

        kept = await clients.batch.get_pool(settings.pool.id)
        assert kept.start_task is not None and kept.start_task.command_line == start_command
        new_url = pool.staged_script_url(kept.start_task)
        assert new_url is not None and new_url != old_url
        assert pool.same_blob(new_url, old_url)
        expiry = pool.sas_expiry(new_url)
        assert expiry is not None
        assert expiry >= sas.utc_now() + timedelta(seconds=settings.run.run_timeout_s)
        assert await http_status(new_url) == 200
        node = await clients.batch.get_node(settings.pool.id, str(failed.id))
        assert node.state == "idle"
        assert node.start_task_info is not None and node.start_task_info.result == "success"


async def test_after_a_script_change_older_nodes_keep_getting_the_script_with_each_task(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    settings = kept_pool_settings(batch, azurite, tmp_path / "state", "versioned")
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        # An earlier run's pool, whose node holds the first build.
        container, first_blob = await stage_script(clients, settings, stand_in_node("first-build"))
        url = read_url(azurite, container, first_blob, timedelta(hours=1))
        assert await pool.ensure_pool(
            clients.batch, settings.pool, url, naming.start_task_command_line(), FAST
        )
        inputs = one_input(tmp_path / "in")
        second_build = stand_in_node("second-build")  # built once: each build is other bytes
        reports = []
        for number in range(2):  # two runs of the second build
            with capture_logs() as logs:
                await run_pipeline(
                    settings,
                    inputs,
                    clients,
                    tmp_path / f"out{number}",
                    pool=PoolKeeper(settings, clients, second_build),
                )
            output = (tmp_path / f"out{number}" / "a_OUTPUT.txt").read_text(encoding="utf-8")
            events = [entry["event"] for entry in logs]
            reasons = [entry["reason"] for entry in logs if entry["event"] == "pool.start_task_renewed"]
            reports.append((output, events, reasons))

    # The first run points the start task at the second build (for nodes that join or reboot) and
    # each task brings it along; the second run finds the start task current, but the node still
    # holds the first build, so its tasks bring the script too.
    for output, events, _ in reports:
        assert "Node: second-build" in output
        assert events.count("pool.node_script_outdated") == 1
    assert reports[0][2] == ["other_script"]
    # The pool keeper's SAS outlives a run (SCRIPT_SAS_LIFETIME), so the second run renews nothing:
    # the start task's script SAS belongs to the pool, no longer to the run that last renewed it.
    assert reports[1][2] == []


async def test_a_rebooted_node_that_fails_again_fails_the_wait_with_the_start_task_error(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch: BatchEndpoint = await start_emulator(["--fault-start-task-failures", "1"])
    settings = kept_pool_settings(batch, azurite, tmp_path / "state", "broken")
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        container, blob_name = await stage_script(clients, settings, stand_in_node())
        url = read_url(azurite, container, blob_name, timedelta(hours=1))
        await pool.ensure_pool(clients.batch, settings.pool, url, naming.start_task_command_line(), FAST)
        failed = await wait_until(
            lambda: node_in_state(clients.batch, settings.pool.id, "starttaskfailed"),
            "the start task to fail",
        )
        with capture_logs() as logs, pytest.raises(PoolError) as stopped:
            await pool.wait_until_usable(
                clients.batch,
                settings.pool.id,
                timeout_s=60,
                retry=FAST,
                created=False,
                reboot_failed_nodes=True,
            )
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{batch.endpoint}/_emulator/stats") as response,
        ):
            stats = await response.json()
    message = str(stopped.value)
    assert f"node {failed.id}" in message and "injected start task failure" in message
    assert "rebooted the node once" in message
    assert [entry["node_id"] for entry in logs if entry["event"] == "node.rebooted"] == [failed.id]
    assert stats["requests"]["reboot_node"] == 1


async def test_a_refused_reboot_fails_the_wait_at_once_with_the_start_task_error_and_the_fix(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    # The service may refuse to reboot a starttaskfailed node (reboot is for idle or running nodes):
    # waiting for a reboot that never comes would last until ready_timeout_s.
    batch: BatchEndpoint = await start_emulator(
        ["--fault-start-task-failures", "1", "--refuse-start-task-failed-reboot"]
    )
    settings = kept_pool_settings(batch, azurite, tmp_path / "state", "refused")
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        container, blob_name = await stage_script(clients, settings, stand_in_node())
        url = read_url(azurite, container, blob_name, timedelta(hours=1))
        await pool.ensure_pool(clients.batch, settings.pool, url, naming.start_task_command_line(), FAST)
        failed = await wait_until(
            lambda: node_in_state(clients.batch, settings.pool.id, "starttaskfailed"),
            "the start task to fail",
        )
        started = time.monotonic()
        with capture_logs() as logs, pytest.raises(PoolError) as stopped:
            await pool.wait_until_usable(
                clients.batch,
                settings.pool.id,
                timeout_s=60,
                retry=FAST,
                created=False,
                reboot_failed_nodes=True,
            )
        waited_s = time.monotonic() - started
    message = str(stopped.value)
    assert waited_s < 10, "the refusal is handled at once, not after the ready timeout"
    assert f"node {failed.id}" in message and "injected start task failure" in message
    assert "refused to reboot the node (OperationInvalidForCurrentState)" in message
    assert "Remove the node from the pool" in message
    refusals = [entry for entry in logs if entry["event"] == "node.reboot_refused"]
    assert [(entry["node_id"], entry["error_code"]) for entry in refusals] == [
        (failed.id, "OperationInvalidForCurrentState")
    ]
    assert not [entry for entry in logs if entry["event"] == "node.rebooted"]
