"""The daemon's kept, autoscaled pool against the emulator's autoscale, sped up with --time-scale.

From zero nodes, files arriving make tasks pending and the formula grows the pool; when only two
tasks are left, each on its own node, the formula lowers the target under them, and
`taskcompletion` lets the leaving node finish its task first; when the work is done the pool goes
back to zero. A formula that does not parse or evaluate stops the start with its error shown, on a
new pool, an autoscaling one and a fixed-size one (switched back); a formula that fails later makes
the daemon not ready.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import zipapp
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from azure.batch import models
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from orchestrator.azure.clients import BATCH
from orchestrator.errors import ConfigError, first_leaf
from tests.conftest import BatchEndpoint, StartEmulator, StorageEndpoint
from tests.integration.daemon.support import (
    daemon_settings_for,
    files_under,
    folders_under,
    get_json,
    running_daemon,
    wait_async,
    wait_for,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

STAND_IN_NODE = Path(__file__).resolve().parents[1] / "orchestrator" / "stand_in_node"
AUTOSCALE = {
    "TOPN_DAEMON_AUTOSCALE": "true",
    "TOPN_DAEMON_MAX_NODES": "2",
    "TOPN_DAEMON_AUTOSCALE_INTERVAL_S": "300",  # the service's minimum: 3 s at --time-scale 0.01
}
# Before the stand-in node counts a file whose name has `-held`, its task waits (at most a minute)
# until the test creates a file named after the task (or `all`) in the release folder: the test
# decides which task ends when, not a guess of how long a task takes on a busy machine.
HELD_NODE = """
import argparse, json, os, runpy, sys, time
from pathlib import Path

RELEASES = Path(%r)
if sys.argv[1:2] == ["unit"]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--manifest", required=True)
    args, _ = parser.parse_known_args(sys.argv[2:])
    manifest = json.loads(Path(args.manifest).read_text(encoding="utf-8"))
    if any("-held" in item["relpath"] for item in manifest["inputs"]):
        mine = RELEASES / os.environ["AZ_BATCH_TASK_ID"]
        deadline = time.monotonic() + 60
        while not (mine.exists() or (RELEASES / "all").exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
runpy.run_module("stand_in", run_name="__main__")
"""


def held_node(releases: Path) -> bytes:
    """The stand-in node as a zipapp whose `-held` tasks run until released in `releases`."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "node"
        shutil.copytree(STAND_IN_NODE, source)
        (source / "__main__.py").rename(source / "stand_in.py")
        (source / "__main__.py").write_text(HELD_NODE % str(releases), encoding="utf-8")
        buffer = io.BytesIO()
        zipapp.create_archive(source, buffer, interpreter="/usr/bin/env python3")
        return buffer.getvalue()


@asynccontextmanager
async def observer(batch: BatchEndpoint) -> AsyncIterator[BatchClient]:
    async with BatchClient(
        batch.endpoint, AzureNamedKeyCredential(batch.account_name, batch.account_key)
    ) as client:
        yield client


@dataclass
class PoolWatch:
    """What the test saw of the pool, polling it while the daemon works."""

    shrunk_under_running_tasks: bool = False  # the target fell below the nodes running tasks
    target: int | None = None  # the pool's target as last seen
    running: dict[str, str] = field(default_factory=dict)  # task id -> node id, as last seen

    def pair_on_one_node(self) -> list[str] | None:
        """The ids of two tasks running on the same node, once three run on two nodes."""
        if len(self.running) != 3 or len(set(self.running.values())) != 2:
            return None
        nodes = list(self.running.values())
        return next(
            [task for task, node in self.running.items() if node == shared]
            for shared in nodes
            if nodes.count(shared) == 2
        )

    present: set[str] = field(default_factory=set)
    left_at: dict[str, datetime] = field(default_factory=dict)  # node id -> first poll without it

    async def follow(self, client: BatchClient, pool_id: str) -> None:
        while True:
            pool = await client.get_pool(pool_id)
            nodes = {str(node.id) async for node in client.list_nodes(pool_id)}
            running: dict[str, str] = {}
            async for job in client.list_jobs():
                async for task in client.list_tasks(str(job.id)):
                    if task.state == models.BatchTaskState.RUNNING and task.node_info is not None:
                        running[str(task.id)] = str(task.node_info.node_id)
            self.running = running
            self.target = pool.target_dedicated_nodes or 0
            if self.target < len(set(running.values()) & nodes):
                self.shrunk_under_running_tasks = True
            now = datetime.now(UTC)
            for gone in self.present - nodes:
                self.left_at.setdefault(gone, now)
            self.present |= nodes
            await anyio.sleep(0.1)


async def node_count(client: BatchClient, pool_id: str) -> int:
    return len([node async for node in client.list_nodes(pool_id)])


async def test_the_pool_grows_from_zero_shrinks_under_running_tasks_without_killing_them_and_idles_at_zero(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    # 5 minutes of service time in 0.75 s: samples every 0.075 s; a 330 s interval evaluates every 0.83 s.
    batch = await start_emulator(["--time-scale", "0.0025", "--nodes-max-processes", "4"])
    settings = daemon_settings_for(
        batch,
        azurite,
        tmp_path / "state",
        "autoscale-pool",
        **{**AUTOSCALE, "TOPN_DAEMON_AUTOSCALE_INTERVAL_S": "330"},  # not the 5 minutes Batch defaults to
        TOPN_DAEMON_BATCH_MAX_FILES="3",
        TOPN_RUN_RUN_TIMEOUT_S="86400",  # the job's wall clock runs on the emulator's scaled clock too
    )
    folders = folders_under(tmp_path)
    watch = PoolWatch()
    releases = tmp_path / "releases"
    await anyio.Path(releases).mkdir()
    node_script = await anyio.to_thread.run_sync(held_node, releases)
    async with observer(batch) as client, running_daemon(settings, folders, node_script) as daemon:
        pool = await client.get_pool("autoscale-pool")
        assert pool.enable_auto_scale and "taskcompletion" in str(pool.auto_scale_formula)
        # Created with the configured interval: one create, no enableAutoScale after it (which Batch
        # would refuse within 30 s with AutoScaleTooManyRequestsToEnable), no conflict at all.
        assert pool.auto_scale_evaluation_interval == timedelta(seconds=330)
        answers = daemon.services.clients.requests.answers(BATCH)
        assert sum(count for (operation, _), count in answers.items() if operation == "create_pool") == 1
        assert not [key for key in answers if "autoscale" in key[0] and "evaluate" not in key[0]], answers
        assert not [key for key in answers if key[1] == "409"], answers
        assert await node_count(client, "autoscale-pool") == 0  # nothing pending: no node

        # Three held tasks on two nodes of two slots: the pool grows to two, one node runs two of
        # them, the other one. The test releases one of the pair: then each node runs one task, and
        # the formula (2 pending / 2 slots) lowers the target to one node under them. Only a second
        # later are the other two released.
        async with anyio.create_task_group() as group:
            group.start_soon(watch.follow, client, "autoscale-pool")
            for name in ("a-held.txt", "b-held.txt", "c-held.txt"):
                await anyio.Path(folders.inbox / name).write_text(f"held {name}", encoding="utf-8")
            pair = await wait_for(watch.pair_on_one_node, "three tasks running on two nodes", 40)
            await anyio.Path(releases / pair[0]).write_text("go", encoding="utf-8")
            await wait_for(lambda: watch.target == 1, "the formula to lower the target to one node", 30)
            await anyio.sleep(1.0)  # long enough for `requeue` to have killed a task (it acts at once)
            await anyio.Path(releases / "all").write_text("go", encoding="utf-8")

            async def all_finished() -> bool:
                done = await anyio.to_thread.run_sync(files_under, folders.done)
                failed = await anyio.to_thread.run_sync(files_under, folders.failed)
                return len(done) + len([name for name in failed if not name.endswith(".error.json")]) == 3

            await wait_async(all_finished, "every file finished", 60)
            assert not await anyio.to_thread.run_sync(files_under, folders.failed)
            await wait_async(
                lambda: _no_nodes(client, "autoscale-pool"), "the pool to shrink to zero when idle", 60
            )
            await wait_for(
                lambda: watch.present <= watch.left_at.keys(), "the watch to see every node leave", 5
            )
            group.cancel_scope.cancel()

        assert len(watch.present) == 2  # grew from zero, never above max_nodes
        assert watch.shrunk_under_running_tasks, "the target never fell below the nodes running tasks"
        tasks = [task async for job in client.list_jobs() async for task in client.list_tasks(str(job.id))]
        assert len(tasks) == 3
        for task in tasks:
            info = task.execution_info
            assert info is not None and info.requeue_count == 0 and info.result == "success", task.id
            node = str(task.node_info.node_id)
            # The node it ran on left only after the task ended (taskcompletion, not requeue).
            assert info.end_time is not None and watch.left_at[node] > info.end_time, (task.id, node)


async def _no_nodes(client: BatchClient, pool_id: str) -> bool:
    return await node_count(client, pool_id) == 0


async def test_a_user_formula_is_evaluated_first_and_a_failing_autoscale_run_makes_the_daemon_unready(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("orchestrator.service.daemon.POOL_VIEW_EVERY_S", 0.2)
    batch = await start_emulator(["--time-scale", "0.01"])
    good = daemon_settings_for(batch, azurite, tmp_path / "state", "formula-pool", **AUTOSCALE)
    async with observer(batch) as client, running_daemon(good, folders_under(tmp_path / "first")) as daemon:
        # Someone changes the pool's formula behind the daemon's back to one that fails (a new
        # interval makes the service evaluate it at once): the pool view reads autoScaleRun.error.
        broken = "$TargetDedicatedNodes = $NoSuchVariable * 2;"
        await client.enable_pool_auto_scale(
            "formula-pool",
            models.BatchPoolEnableAutoScaleOptions(
                auto_scale_formula=broken, auto_scale_evaluation_interval=timedelta(minutes=6)
            ),
        )
        await wait_for(lambda: not daemon.state.ready, "the daemon to be unready", 20)
        assert "NoSuchVariable" in str(daemon.services.pool.autoscale_error)
        status, body = await get_json(f"{daemon.state.listen_url}/readyz")
        assert status == 503 and body["pool_resize_errors"] == 1, body
        await anyio.sleep(0.5)  # the service's 30 s between two enableAutoScale calls, at 0.01
        await client.enable_pool_auto_scale(
            "formula-pool",
            models.BatchPoolEnableAutoScaleOptions(
                auto_scale_formula="$TargetDedicatedNodes = 0;",
                auto_scale_evaluation_interval=timedelta(minutes=7),
            ),
        )
        await wait_for(lambda: daemon.state.ready, "the daemon to be ready again", 20)
        assert daemon.services.pool.autoscale_error is None
    bad = daemon_settings_for(
        batch,
        azurite,
        tmp_path / "state",
        "formula-pool",
        **AUTOSCALE,
        TOPN_DAEMON_AUTOSCALE_FORMULA="$TargetDedicatedNodes = $NoSuchVariable * 2;",
    )
    with pytest.raises(BaseExceptionGroup) as refused:
        async with running_daemon(bad, folders_under(tmp_path / "second")):
            pass
    leaf = first_leaf(refused.value)
    assert isinstance(leaf, ConfigError) and leaf.exit_code == 2
    assert "[daemon] autoscale_formula does not evaluate" in str(leaf) and "NoSuchVariable" in str(leaf)


async def test_a_formula_that_does_not_parse_or_evaluate_stops_a_new_pool_and_a_fixed_one_switches_back(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator(["--time-scale", "0.01"])

    async def refusal(formula: str, folder: str) -> str:
        settings = daemon_settings_for(
            batch,
            azurite,
            tmp_path / "state",
            "fixed-pool",
            **AUTOSCALE,
            TOPN_DAEMON_AUTOSCALE_FORMULA=formula,
        )
        with pytest.raises(BaseExceptionGroup) as refused:
            async with running_daemon(settings, folders_under(tmp_path / folder)):
                pass
        leaf = first_leaf(refused.value)
        assert isinstance(leaf, ConfigError) and leaf.exit_code == 2, leaf
        return str(leaf)

    # A new pool: the create is refused (the formula does not parse), with the service's detail.
    message = await refusal("$TargetDedicatedNodes = min(2;", "syntax")
    assert "[daemon] autoscale_formula was refused by Batch for pool fixed-pool" in message
    assert "AutoScalingFormulaSyntaxError" in message and "PropertyName: autoScaleFormula" in message

    # A fixed-size pool (one node), made by a daemon without autoscale, then adopted with a formula
    # that does not evaluate: switched over, evaluated at once, switched back.
    fixed = daemon_settings_for(batch, azurite, tmp_path / "state", "fixed-pool")
    async with running_daemon(fixed, folders_under(tmp_path / "fixed")):
        pass
    message = await refusal("$TargetDedicatedNodes = $NoSuchVariable * 2;", "adopted")
    assert "[daemon] autoscale_formula does not evaluate on pool fixed-pool" in message
    assert "NoSuchVariable" in message
    async with observer(batch) as client:
        pool = await client.get_pool("fixed-pool")
        assert not pool.enable_auto_scale and pool.target_dedicated_nodes == 1
