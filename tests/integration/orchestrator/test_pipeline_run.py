"""run_pipeline end to end against real Azurite and the real emulator, with a stand-in node script."""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
import zipapp
from collections import Counter
from collections.abc import Awaitable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import structlog
from azure.batch.models._models import BatchJobTerminateOptions  # not exported (SDK quirk)
from azure.core.exceptions import ResourceNotFoundError
from structlog.testing import capture_logs

from orchestrator import naming
from orchestrator.azure.clients import open_clients
from orchestrator.errors import InputError, RunFailedError
from orchestrator.inputs import discover_inputs
from orchestrator.journal import Journal
from orchestrator.run.pipeline import run_pipeline
from orchestrator.service.poolkeeper import PoolKeeper
from orchestrator.service.shell import release_pool
from orchestrator.settings import Settings, load_settings
from tests.conftest import BatchEndpoint, StartEmulator, StorageEndpoint
from tests.e2e.run_cli import topn_environment
from tests.secret_scan import find_secrets, texts_under

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[3]


def stand_in_node(variant: str | None = None) -> bytes:
    """The stand-in node as a zipapp; a `variant` makes another version (other bytes, other blob)."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "node"
        shutil.copytree(Path(__file__).parent / "stand_in_node", source)
        if variant is not None:
            (source / "variant.txt").write_text(variant, encoding="utf-8")
        buffer = io.BytesIO()
        zipapp.create_archive(source, buffer, interpreter="/usr/bin/env python3")
        return buffer.getvalue()


def settings_for(batch: BatchEndpoint, storage: StorageEndpoint, state_dir: Path, **extra: str) -> Settings:
    return load_settings(ROOT / "config" / "local.toml", topn_environment(batch, storage, state_dir, **extra))


def write_tree(root: Path) -> dict[str, str]:
    texts = {
        "a.txt": "The cat and the hat. The end!",
        "x/a.txt": "Zoë and zoë met ZOË; the café was open.",
        "y/b c #%.md": "dog dog cat",
        "y/broken.txt": "this one says FAIL-THIS-FILE",
    }
    for relpath, text in texts.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return texts


def words_of(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.casefold())


async def test_a_run_collects_results_merges_them_and_reports_the_failed_file(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    texts = write_tree(tmp_path / "in")
    settings = settings_for(batch, azurite, tmp_path / "state", TOPN_RUN_TOP="3")
    out_dir = tmp_path / "out"
    inputs = discover_inputs([tmp_path / "in"])
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        journal = await Journal.open(tmp_path / "state" / "journal.sqlite3")
        stack.push_async_callback(journal.close)
        summary = await run_pipeline(
            settings,
            inputs,
            clients,
            out_dir,
            journal=journal,
            pool=PoolKeeper(settings, clients, stand_in_node()),
        )
        record = await journal.load_run(summary["run_id"])
    # The run bound its id for its own scope: a process that goes on (a daemon) is not left with it.
    assert "run_id" not in structlog.contextvars.get_contextvars()

    good = {relpath: text for relpath, text in texts.items() if "FAIL" not in text}
    reference: Counter[str] = Counter()
    for relpath in sorted(good):
        reference.update(words_of(good[relpath]))
    assert summary["state"] == "FAILED"
    assert summary["top"] == [list(pair) for pair in reference.most_common(3)]
    by_path = {entry["path"]: entry for entry in summary["files"]}
    assert set(by_path) == set(texts)
    for relpath, text in good.items():
        assert by_path[relpath]["status"] == "succeeded"
        assert by_path[relpath]["top"] == [list(pair) for pair in Counter(words_of(text)).most_common(3)]
        assert (out_dir / naming.output_name(relpath)).is_file()
    failed = by_path["y/broken.txt"]
    assert failed["status"] == "failed"
    assert failed["error"]["exit_code"] == 4
    assert "asked to fail" in failed["error"]["stderr_tail"]
    assert json.loads((out_dir / "summary.json").read_text(encoding="utf-8")) == summary
    # Units go in as they are staged (run/feeding.py): one request when all were staged before the
    # job existed, more when the job came first (a fresh clone's run saw 2); never more than the units.
    units = len(record.completed) if record is not None else 0
    assert 1 <= summary["totals"]["requests"]["batch"]["create_task_collection"] <= units

    assert record is not None and record.state == "FAILED"
    assert [change.state for change in record.state_history] == [
        "CREATED",
        "PREPARING",
        "SUBMITTING",
        "RUNNING",
        "COLLECTING",
        "CLEANING",
        "FAILED",
    ]
    assert len(record.downloads) == 3 and len(record.completed) == 4

    leaks = find_secrets(
        texts_under(out_dir) + texts_under(tmp_path / "state"), [batch.account_key, azurite.account_key]
    )
    assert leaks == []


async def test_a_results_folder_of_another_run_stops_the_run_before_anything_is_created(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("x")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("mine")
    settings = settings_for(batch_emulator, azurite, tmp_path / "state")
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        with pytest.raises(InputError, match="not empty"):
            await run_pipeline(
                settings,
                discover_inputs([tmp_path / "in"]),
                clients,
                tmp_path / "out",
                pool=PoolKeeper(settings, clients),
            )
        assert clients.requests.total("batch") == 0 and clients.requests.total("storage") == 0


async def test_small_files_share_tasks_and_a_failing_file_does_not_sink_its_unit(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    texts = {f"f{number:02d}.txt": f"word{number % 3} common" for number in range(10)}
    texts["f04.txt"] = "FAIL-THIS-FILE"
    for relpath, text in texts.items():
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / relpath).write_text(text, encoding="utf-8")
    settings = settings_for(
        batch,
        azurite,
        tmp_path / "state",
        TOPN_POOL_ID="packing-pool",
        TOPN_POOL_DEDICATED_NODES="1",
        TOPN_POOL_TASK_SLOTS_PER_NODE="1",
    )
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        summary = await run_pipeline(
            settings,
            discover_inputs([tmp_path / "in"]),
            clients,
            tmp_path / "out",
            pool=PoolKeeper(settings, clients, stand_in_node()),
        )
    by_path = {entry["path"]: entry for entry in summary["files"]}
    # 10 files, one slot: four units per slot of ceil(10/4) = 3 files, the first four ramping up
    # (1/16, 1/8, 1/4, 1/2 of 3, at least one file): f00, f01, f02, f03, then f04-f06 and f07-f09.
    tasks = {path: entry["task_id"] for path, entry in by_path.items()}
    assert len(set(tasks.values())) == 6
    assert tasks["f04.txt"] == tasks["f05.txt"] == tasks["f06.txt"] != tasks["f03.txt"]
    assert by_path["f04.txt"]["status"] == "failed"
    assert "asked to fail" in by_path["f04.txt"]["error"]["stderr_tail"]
    assert by_path["f05.txt"]["status"] == by_path["f06.txt"]["status"] == "succeeded"
    assert sum(entry["status"] == "succeeded" for entry in summary["files"]) == 9
    assert summary["top"][0] == ["common", 9]


async def test_a_run_rides_out_throttling_and_server_errors(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator(
        ["--fault-seed", "11", "--fault-503", "0.15", "--fault-429", "0.1", "--fault-retry-after-s", "0.2"]
    )
    texts = {f"d{number}/same.txt": f"alpha beta{number % 2} beta{number % 2}" for number in range(6)}
    for relpath, text in texts.items():
        (tmp_path / "in" / relpath).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / relpath).write_text(text, encoding="utf-8")
    settings = settings_for(batch, azurite, tmp_path / "state", TOPN_POOL_ID="faulty-pool")
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        summary = await run_pipeline(
            settings,
            discover_inputs([tmp_path / "in"]),
            clients,
            tmp_path / "out",
            pool=PoolKeeper(settings, clients, stand_in_node()),
        )
    stats = await emulator_stats(batch)
    assert stats["faults_injected"]["503"] + stats["faults_injected"]["429"] > 0
    assert summary["state"] == "SUCCEEDED"
    assert summary["top"] == [["alpha", 6], ["beta0", 6], ["beta1", 6]]  # ties: first seen first


async def emulator_stats(batch: BatchEndpoint) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{batch.endpoint}/_emulator/stats") as response,
    ):
        stats: dict[str, Any] = await response.json()
        return stats


class RunningSignal:
    """A progress sink that tells the test when the run is watching its tasks."""

    def __init__(self) -> None:
        self.event = anyio.Event()

    def update(self, stage: str, done: int, total: int) -> None:
        if stage == "running":
            self.event.set()


async def test_a_cancelled_run_is_left_resumable_and_says_so(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "slow.txt").write_text("SLEEP-THIS-FILE", encoding="utf-8")
    settings = settings_for(batch, azurite, tmp_path / "state", TOPN_POOL_ID="cancel-pool")
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        journal = await Journal.open(tmp_path / "state" / "journal.sqlite3")
        stack.push_async_callback(journal.close)
        with capture_logs() as logs, anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                running = RunningSignal()
                group.start_soon(
                    lambda: run_pipeline(
                        settings,
                        discover_inputs([tmp_path / "in"]),
                        clients,
                        tmp_path / "out",
                        journal=journal,
                        progress=running,
                        pool=PoolKeeper(settings, clients, stand_in_node()),
                    )
                )
                with anyio.fail_after(60):
                    await running.event.wait()
                scope.cancel()
        assert scope.cancelled_caught
        record = await journal.load_run((await journal.list_runs())[0].run_id)
        # Interrupted, not given up on: the journal keeps the state reached, the job stays for resume.
        assert record is not None and record.state == "RUNNING" and not record.is_finished
        job_id = naming.job_id(record.run_id)
        assert await job_state(clients, job_id) == "active"
    names = [entry["event"] for entry in logs]
    assert names[-1] == "run.interrupted"
    assert logs[-1]["state"] == "RUNNING" and logs[-1]["resume_command"] == f"topn resume {record.run_id}"
    assert "run.failed" not in names
    assert "CLEANING" not in [entry["to_state"] for entry in logs if entry["event"] == "run.state_changed"]


async def state_of(fetch: Awaitable[Any]) -> str:
    """A Batch resource's state, or "gone" once the service no longer knows it."""
    try:
        resource = await fetch
    except ResourceNotFoundError:
        return "gone"
    return str(getattr(resource.state, "value", resource.state))


async def job_state(clients: Any, job_id: str) -> str:
    return await state_of(clients.batch.get_job(job_id))


async def pool_state(clients: Any, pool_id: str) -> str:
    return await state_of(clients.batch.get_pool(pool_id))


async def test_clean_up_follows_the_config_and_never_asks(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("tidy tidy up", encoding="utf-8")
    settings = settings_for(
        batch,
        azurite,
        tmp_path / "state",
        TOPN_POOL_ID="tidy-pool",
        TOPN_POOL_DELETE_AFTER_RUN="true",
        TOPN_RUN_DELETE_RUN_BLOBS="true",
        TOPN_RUN_DELETE_JOB="true",
    )
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        keeper = PoolKeeper(settings, clients, stand_in_node())
        summary = await run_pipeline(
            settings, discover_inputs([tmp_path / "in"]), clients, tmp_path / "out", pool=keeper
        )
        await release_pool(keeper, settings.pool)  # what the process shell does after `topn run`
        run_id = summary["run_id"]
        assert summary["state"] == "SUCCEEDED" and (tmp_path / "out" / "a_OUTPUT.txt").is_file()
        assert await job_state(clients, naming.job_id(run_id)) in {"gone", "deleting"}
        assert await pool_state(clients, "tidy-pool") in {"gone", "deleting"}
        containers = [container.name async for container in clients.blob_service.list_containers()]
        assert naming.output_container("topn", run_id) not in containers
        assert naming.input_container("topn", run_id) not in containers


async def test_a_job_terminated_under_the_run_fails_it_promptly_with_the_reason(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("SLEEP-THIS-FILE", encoding="utf-8")
    # Both sleep: whichever unit the pipelined submission adds first holds the only slot, and the
    # other is still waiting when the job is terminated (b alone finished first now and then).
    (tmp_path / "in" / "b.txt").write_text("waits behind a: SLEEP-THIS-FILE", encoding="utf-8")
    settings = settings_for(
        batch,
        azurite,
        tmp_path / "state",
        TOPN_POOL_ID="terminated-pool",
        TOPN_POOL_DEDICATED_NODES="1",
        TOPN_POOL_TASK_SLOTS_PER_NODE="1",
        TOPN_RUN_TASK_MAX_RETRIES="0",
    )
    running = RunningSignal()
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        failures: list[RunFailedError] = []
        async with anyio.create_task_group() as group:

            async def run() -> None:
                try:
                    await run_pipeline(
                        settings,
                        discover_inputs([tmp_path / "in"]),
                        clients,
                        tmp_path / "out",
                        progress=running,
                        pool=PoolKeeper(settings, clients, stand_in_node()),
                    )
                except RunFailedError as error:
                    failures.append(error)

            group.start_soon(run)
            with anyio.fail_after(60):
                await running.event.wait()
            jobs = [job async for job in clients.batch.list_jobs()]
            assert len(jobs) == 1
            options = BatchJobTerminateOptions(termination_reason="StoppedByOperator")
            await clients.batch.begin_terminate_job(jobs[0].id, options)
    assert len(failures) == 1
    assert re.search(r"is completed \(StoppedByOperator\) with 1 task\(s\) not finished", str(failures[0]))


async def test_a_reused_pool_with_an_older_node_script_runs_the_current_one(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("same words", encoding="utf-8")
    settings = settings_for(batch, azurite, tmp_path / "state", TOPN_POOL_ID="versioned-pool")
    outputs = []
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        for number, variant in enumerate(["first-build", "second-build"]):
            out_dir = tmp_path / f"out{number}"
            with capture_logs() as logs:
                await run_pipeline(
                    settings,
                    discover_inputs([tmp_path / "in"]),
                    clients,
                    out_dir,
                    pool=PoolKeeper(settings, clients, stand_in_node(variant)),
                )
            outputs.append((out_dir / "a_OUTPUT.txt").read_text(encoding="utf-8"))
    assert "Node: first-build" in outputs[0]
    assert "Node: second-build" in outputs[1]  # not the first build the pool's nodes staged
    assert [entry["event"] for entry in logs].count("pool.node_script_outdated") == 1
