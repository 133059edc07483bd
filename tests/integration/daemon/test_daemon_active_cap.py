"""`max_active_runs` (issue 12 point 3): at most that many batches are active in Batch at once.

Four one-file batches with `max_active_runs = 2`, on a pool whose only slot another job holds, so the
first batches stay in Batch until the test frees the slot. Meanwhile the emulator's own job listing
shows exactly two of the daemon's jobs active, and the two others wait in the journal (queued in
`/v1/runs`, counted by `topn_batches_waiting`), not in Batch. A sampler watches the listing to the
end: never more than two; and every file ends exactly once in done/ with exactly one result.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import anyio
import pytest

from tests.conftest import StartEmulator, StorageEndpoint
from tests.held_slot import HeldSlot, held_slot
from tests.integration.daemon.support import (
    daemon_settings_for,
    files_under,
    folders_under,
    get_json,
    running_daemon,
    wait_async,
)

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

CAP = 2
TEXTS = {f"cap{index}.txt": f"word{index} word{index} common" for index in range(4)}


async def topn_jobs_active(held: HeldSlot) -> list[str]:
    """The daemon's jobs on the pool that count as active in Batch, as the emulator lists them."""
    return sorted(
        [
            str(job.id)
            async for job in held.client.list_jobs()
            if str(job.id).startswith("topn-")
            and job.pool_info is not None
            and job.pool_info.pool_id == held.pool_id
            and str(getattr(job.state, "value", job.state)) in ("active", "terminating")
        ]
    )


def gauge(metrics: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(f"{name} "))


async def test_batches_beyond_max_active_runs_wait_in_the_journal_not_in_batch(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    folders = folders_under(tmp_path)
    most_active: list[int] = [0]
    async with held_slot(batch, tmp_path) as held:
        settings = daemon_settings_for(
            batch,
            azurite,
            tmp_path / "state",
            held.pool_id,
            TOPN_DAEMON_MAX_ACTIVE_RUNS=str(CAP),
            TOPN_DAEMON_BATCH_MAX_FILES="1",  # one batch, one job per file
        )

        async def sample_forever() -> None:
            while True:
                most_active[0] = max(most_active[0], len(await topn_jobs_active(held)))
                await anyio.sleep(0.05)

        async with running_daemon(settings, folders) as daemon, anyio.create_task_group() as sampler:
            sampler.start_soon(sample_forever)
            assert daemon.state.listen_url is not None
            url = daemon.state.listen_url
            for name, text in TEXTS.items():
                await anyio.Path(folders.inbox / name).write_text(text, encoding="utf-8")

            async def all_batched() -> list[dict[str, object]] | None:
                _, listing = await get_json(f"{url}/v1/runs")
                runs: list[dict[str, object]] = listing["runs"]
                return runs if sum(int(str(run["files"])) for run in runs) == len(TEXTS) else None

            await wait_async(all_batched, "every file in a batch", 60)

            async def cap_reached() -> bool:
                return len(await topn_jobs_active(held)) >= CAP

            await wait_async(cap_reached, f"{CAP} of the daemon's jobs in Batch", 60)
            await anyio.sleep(1.0)  # time for a batch past the cap to be (wrongly) admitted
            assert len(await topn_jobs_active(held)) == CAP
            runs = await all_batched()
            assert runs is not None and len(runs) == len(TEXTS)
            in_flight = [run for run in runs if "progress" in run]
            waiting = [run for run in runs if "progress" not in run and run["state"] == "queued"]
            assert len(in_flight) == CAP and len(waiting) == len(TEXTS) - CAP, runs
            _, metrics = await get_json(f"{url}/metrics")
            assert gauge(metrics, "topn_batches_waiting") == len(TEXTS) - CAP
            assert gauge(metrics, "topn_batches_active") == CAP

            await anyio.Path(held.release).touch()

            async def all_done() -> bool:
                done = await anyio.to_thread.run_sync(files_under, folders.done)
                return len(done) == len(TEXTS)

            await wait_async(all_done, "every file done", 90)
            sampler.cancel_scope.cancel()
    assert most_active[0] == CAP
    assert await anyio.to_thread.run_sync(files_under, folders.done) == TEXTS
    assert await anyio.to_thread.run_sync(files_under, folders.failed) == {}
    outputs = await anyio.to_thread.run_sync(files_under, folders.outbox)
    results = sorted(PurePosixPath(relpath).name for relpath in outputs if relpath.endswith("_OUTPUT.txt"))
    assert results == sorted(f"{PurePosixPath(name).stem}_OUTPUT.txt" for name in TEXTS)
    summaries = [relpath for relpath in outputs if relpath.endswith("/summary.json")]
    assert len(summaries) == len(TEXTS)  # one run per batch, each with its summary
