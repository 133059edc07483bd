"""Tasks added while the inputs are still uploading: a unit's task goes in as soon as its inputs are staged.

A new run's PREPARING stages its inputs (in order, by a fixed set of upload workers) while the pool
keeper provides the pool and the run's job is created. The feeder takes each unit the moment its
last input is staged, and once the job exists it uploads the unit's manifest and adds its task:
the first task is added within seconds whatever the number of files, and the nodes count while
the rest still uploads (DESIGN §3: the recorded state is the earliest one not yet finished, so
the journal still says PREPARING; each added chunk is journalled as SUBMITTING would journal it).

Units that are ready together go in together, up to `[run] submit_chunk_tasks` per request, one
request at a time: the first request carries one task, later ones fill up while earlier ones are
sent. A resumed run does not feed (its tasks may carry old SAS, which SUBMITTING sorts out).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from orchestrator.azure import submit
from orchestrator.azure.staging import SasMinter, StagedInput
from orchestrator.run.context import RunContext
from orchestrator.run.split_plan import units_staged_with
from orchestrator.run.unit_tasks import stage_manifests, task_of_unit

log = structlog.get_logger()

ReadyUnit = tuple[int, list[StagedInput]]


class UnitFeeder:
    """Adds the task of each staged unit once the run's job exists; remembers which it added."""

    def __init__(self, run: RunContext, minter: SasMinter) -> None:
        self._run = run
        self._minter = minter
        self._send, self._receive = anyio.create_memory_object_stream[ReadyUnit](max_buffer_size=math.inf)
        self._job_ready = anyio.Event()
        self._task_script_url: str | None = None
        self.added: set[str] = set()  # unit task ids now in the job (TaskExists included)
        self.first_added_s: float | None = None  # seconds from the run's start to its first added task
        # Set once the first add request is over (or there is nothing to add before more is listed):
        # what the listing of later pages waits for, so that it does not slow the first task down.
        self.first_request_over = anyio.Event()
        self._unit_sent = False

    def job_ready(self, task_script_url: str | None) -> None:
        """The job exists (the pool may still be booting): tasks can be added from now on."""
        self._task_script_url = task_script_url
        self._job_ready.set()

    async def unit_staged(self, unit_index: int, items: list[StagedInput]) -> None:
        """A unit whose inputs are all staged (called by staging, in the order units complete).

        A split input's first range brings its other ranges along: they count the same blob.
        """
        for ready in units_staged_with(self._run.ranges, unit_index):
            self._unit_sent = True
            await self._send.send((ready, items))

    def known_inputs_staged(self) -> None:
        """Every input known at the start is staged: if none made a unit, nothing is coming to wait for."""
        if not self._unit_sent:
            self.first_request_over.set()

    def staging_done(self) -> None:
        """No unit will be staged any more: the feeder ends once it has added what it holds."""
        self._send.close()

    async def run(self) -> None:
        """Add tasks as units come, until staging is done and every staged unit is added."""
        await self._job_ready.wait()
        chunk = self._run.settings.run.submit_chunk_tasks
        try:
            async with self._receive:
                async for first in self._receive:
                    await self._add([first, *_ready_now(self._receive, chunk - 1)])
                    self.first_request_over.set()
        finally:  # also when the first add failed, or nothing was ever added
            self.first_request_over.set()

    async def _add(self, ready: Sequence[ReadyUnit]) -> None:
        run = self._run
        await stage_manifests(run, self._minter, ready)
        tasks = [
            task_of_unit(run, self._minter, self._task_script_url, unit_index) for unit_index, _ in ready
        ]

        async def added(batch_task_ids: Sequence[str]) -> None:
            unit_ids = [run.unit_task_id(task_id) for task_id in batch_task_ids]
            if run.journal is not None:
                await run.journal.record_tasks_submitted(run.run_id, unit_ids)
            self.added.update(unit_ids)
            if self.first_added_s is None:
                self.first_added_s = round(time.monotonic() - run.started, 3)
            log.debug("tasks.chunk_added", job_id=run.job_id, tasks=len(unit_ids))

        await submit.submit_tasks(
            run.batch,
            run.job_id,
            tasks,
            concurrency=1,
            retry=run.retry,
            on_chunk_added=added,
            max_tasks_per_request=run.settings.run.submit_chunk_tasks,
        )


def _ready_now(receive: MemoryObjectReceiveStream[ReadyUnit], most: int) -> list[ReadyUnit]:
    """The units already waiting (at most `most`), without waiting for more."""
    ready: list[ReadyUnit] = []
    while len(ready) < most:
        try:
            ready.append(receive.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            break
    return ready
