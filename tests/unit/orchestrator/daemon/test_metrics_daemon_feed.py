"""Where the daemon feeds its metrics: a real Daemon (real journal, folders, loop code) on fake services.

The fakes stand in for Batch and Storage only; what each gauge must read comes from what the test
put there (files, batches, nodes, jobs), never from the code under test.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from orchestrator.azure.clients import RequestCounter
from orchestrator.journal.intake import IntakeStore
from orchestrator.service.batchrun import BatchProgress
from orchestrator.service.claims import DaemonFolders
from orchestrator.service.daemon import Daemon
from orchestrator.service.intake import CompleteFile
from orchestrator.service.metrics import DaemonMetrics
from orchestrator.settings import load_settings
from tests.unit.orchestrator.daemon.test_metrics import node_states, value

LOCAL = Path(__file__).resolve().parents[4] / "config" / "local.toml"


class Answer(SimpleNamespace):
    """An SDK model as the code reads it: attributes the test did not set are None."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return None


@dataclass
class FakeBatch:
    """The Batch calls the daemon's housekeeping makes; `hang` makes every one of them wait forever."""

    node_states: list[str] = field(default_factory=list)
    target: tuple[int, int] = (0, 0)
    jobs: list[Answer] = field(default_factory=list)
    hang: bool = False
    calls: int = 0

    async def _answer(self) -> None:
        self.calls += 1
        if self.hang:
            await anyio.sleep_forever()

    async def get_pool(self, pool_id: str) -> Answer:
        await self._answer()
        dedicated, low_priority = self.target
        return Answer(id=pool_id, target_dedicated_nodes=dedicated, target_low_priority_nodes=low_priority)

    async def list_nodes(self, pool_id: str) -> AsyncIterator[Answer]:
        await self._answer()
        for state in list(self.node_states):
            yield Answer(state=state)

    async def list_jobs(self) -> AsyncIterator[Answer]:
        await self._answer()
        for job in list(self.jobs):
            yield job


@dataclass
class FakeContainer:
    blob_service: FakeBlobService

    async def get_container_properties(self) -> Answer:
        service = self.blob_service
        service.reads += 1
        if service.hang:
            await anyio.sleep_forever()
        if service.error is not None:
            raise service.error
        return Answer()


@dataclass
class FakeBlobService:
    hang: bool = False
    error: Exception | None = None
    reads: int = 0
    containers: list[str] = field(default_factory=list)

    def get_container_client(self, name: str) -> FakeContainer:
        self.containers.append(name)
        return FakeContainer(self)


@dataclass
class Rig:
    daemon: Daemon
    batch: FakeBatch
    blob_service: FakeBlobService
    folders: DaemonFolders
    metrics: DaemonMetrics
    keeper: SimpleNamespace


async def open_rig(tmp_path: Path, **environment: str) -> tuple[Rig, IntakeStore]:
    settings = load_settings(
        LOCAL,
        {"TOPN_LOCAL_STATE_DIR": str(tmp_path / "state"), "TOPN_RETRY_MAX_ATTEMPTS": "1", **environment},
    )
    folders = DaemonFolders(tmp_path / "inbox", tmp_path / "done", tmp_path / "failed", tmp_path / "outbox")
    folders.create()
    store = await IntakeStore.open(tmp_path / "state")
    batch, blob_service = FakeBatch(), FakeBlobService()

    async def no_runs(limit: int | None = None) -> list[Any]:
        return []

    keeper = SimpleNamespace(script_sas_expires_at=None, pool_id=settings.pool.id, autoscale_error=None)
    services: Any = SimpleNamespace(
        settings=settings,
        clients=SimpleNamespace(batch=batch, blob_service=blob_service, requests=RequestCounter()),
        journal=SimpleNamespace(list_run_summaries=no_runs),
        pool=keeper,
    )
    metrics = DaemonMetrics()
    daemon = Daemon(services, store, folders, metrics, "test-daemon")
    return Rig(daemon, batch, blob_service, folders, metrics, keeper), store


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    made, store = await open_rig(tmp_path)
    try:
        yield made
    finally:
        await store.close()


def complete_file(folders: DaemonFolders, relpath: str, text: str) -> CompleteFile:
    path = folders.inbox / relpath
    path.write_text(text, encoding="utf-8")
    return CompleteFile(path, relpath, len(text), "watch", None)


async def test_backlog_gauges_follow_files_batches_and_runs(rig: Rig) -> None:
    daemon, metrics = rig.daemon, rig.metrics
    daemon.inbox.add(["arriving-1.txt", "arriving-2.txt"], "watch")  # seen, not complete yet
    daemon._count_pending()
    await daemon.claim([complete_file(rig.folders, f"f{n}.txt", f"words {n}") for n in range(3)])
    daemon._update_gauges()
    assert value(metrics, "topn_inbox_pending") == 2 + 3  # claimed files wait for a batch too
    assert value(metrics, "topn_batches_waiting") == 0
    assert value(metrics, "topn_batches_active") == 0

    await daemon._close_due_batches(time.monotonic() + 3600)  # long past batch_max_wait_s
    daemon._update_gauges()
    assert value(metrics, "topn_inbox_pending") == 2
    assert value(metrics, "topn_batches_waiting") == 1

    release = anyio.Event()
    ran: list[str] = []

    class HeldRunner:
        async def run(self, batch_id: str, progress: BatchProgress) -> str:
            ran.append(batch_id)
            await release.wait()
            return "succeeded"

    daemon.runner = HeldRunner()  # type: ignore[assignment]
    async with anyio.create_task_group() as runs:
        daemon._pick(runs)
        daemon._update_gauges()
        assert value(metrics, "topn_batches_active") == 1
        assert value(metrics, "topn_batches_waiting") == 0
        release.set()
    daemon._update_gauges()
    assert len(ran) == 1 and value(metrics, "topn_batches_active") == 0


async def test_pool_gauges_follow_the_pool_and_a_scale_to_zero_leaves_no_node_behind(rig: Rig) -> None:
    expires = datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC)
    rig.keeper.script_sas_expires_at = expires
    rig.batch.node_states = ["idle", "idle", "running", "starttaskfailed"]
    rig.batch.target = (3, 1)
    await rig.daemon.check_services()
    assert node_states(rig.metrics) == {"idle": 2, "running": 1, "starttaskfailed": 1}
    assert value(rig.metrics, "topn_pool_target_nodes") == 4
    assert value(rig.metrics, "topn_sas_expiry_timestamp_seconds") == calendar.timegm((2027, 1, 2, 3, 4, 5))
    assert expires.timestamp() == calendar.timegm((2027, 1, 2, 3, 4, 5))

    rig.batch.node_states, rig.batch.target = [], (0, 0)  # scaled to zero
    await rig.daemon.check_services()
    assert sum(node_states(rig.metrics).values()) == 0
    assert value(rig.metrics, "topn_pool_target_nodes") == 0

    rig.batch.node_states, rig.batch.target = ["running"], (1, 0)
    await rig.daemon.check_services()
    assert node_states(rig.metrics) == {"idle": 0, "running": 1, "starttaskfailed": 0}


async def test_active_jobs_counts_every_active_or_terminating_job_of_the_account(rig: Rig) -> None:
    def job(job_id: str, state: str, pool_id: str = "elsewhere") -> Answer:
        return Answer(id=job_id, state=state, pool_info=Answer(pool_id=pool_id))

    rig.batch.jobs = [
        job("someone-elses", "active"),
        job("topn-20270101t000000z-abcdef", "active", pool_id="another-topn-pool"),
        job("nightly", "terminating"),
        job("old-1", "completed"),
        job("old-2", "completed"),
        job("paused", "disabled"),
    ]
    await rig.daemon._tidy_jobs()
    assert value(rig.metrics, "topn_active_jobs") == 3
    rig.batch.jobs[0] = job("someone-elses", "completed")
    rig.batch.jobs[2] = job("nightly", "completed")
    await rig.daemon._tidy_jobs()
    assert value(rig.metrics, "topn_active_jobs") == 1


async def test_a_batchs_tasks_and_duration_are_counted_when_it_ends(rig: Rig) -> None:
    daemon = rig.daemon
    claimed = await daemon.claim([complete_file(rig.folders, f"f{n}.txt", f"text {n}") for n in range(3)])
    files = sorted(claimed, key=lambda item: item.relpath)
    # Two files shared task t1 (it succeeded), the third had task t2 (it failed).
    summary = {
        "files": [
            {"file": "f0.txt", "task_id": "t1", "status": "succeeded"},
            {"file": "f1.txt", "task_id": "t1", "status": "succeeded"},
            {"file": "f2.txt", "task_id": "t2", "status": "failed"},
        ]
    }
    outcomes: dict[str, Any] = {
        files[0].claim_id: None,
        files[1].claim_id: None,
        files[2].claim_id: {"reason": "its task failed"},
    }
    daemon.runner._record_metrics(files, outcomes, summary, "failed", 12.5)
    metrics = rig.metrics
    assert value(metrics, "topn_tasks_completed_total", outcome="succeeded") == 1
    assert value(metrics, "topn_tasks_completed_total", outcome="failed") == 1
    assert value(metrics, "topn_batch_duration_seconds_count") == 1
    assert value(metrics, "topn_batch_duration_seconds_sum") == 12.5
    assert value(metrics, "topn_batches_total", outcome="failed") == 1
    assert value(metrics, "topn_inputs_failed_total") == 1
