"""The status page in a real headless browser (Debian's chromium) during a daemon run.

chromium renders the server's page (`--dump-dom` prints the DOM it built); the test checks what a
person would see. First while a batch is in flight (its task waits in Batch for a pool slot another
job holds): ready, and the run in flight with its stage and progress. Then after the runs: the
backlog, the finished run with its top words, the pool's nodes, the failure with its reason. A
missing chromium fails the test with how to install it (`.ci/run` does).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import pytest

from orchestrator.service.batchrun import BatchProgress
from tests.conftest import StartEmulator, StorageEndpoint
from tests.held_slot import held_slot
from tests.integration.daemon.support import (
    daemon_settings_for,
    files_under,
    folders_under,
    running_daemon,
    wait_async,
    wait_for,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--dump-dom",
)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "chromium is not installed: `apt-get install -y chromium` (.ci/run installs it when missing)"
        )
    return found


async def rendered(url: str) -> str:
    result = await anyio.run_process([chromium(), *BROWSER_FLAGS, url], check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return result.stdout.decode("utf-8")


READY = '<span class="ok">ready</span>'


async def test_the_status_page_shows_runs_in_flight_top_words_nodes_and_failures(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    browser = chromium()
    assert browser
    batch = await start_emulator()
    folders = folders_under(tmp_path)
    async with held_slot(batch, tmp_path) as held:
        settings = daemon_settings_for(batch, azurite, tmp_path / "state", held.pool_id)
        async with running_daemon(settings, folders) as daemon:
            url = daemon.state.listen_url
            assert url is not None
            await anyio.Path(folders.inbox / "zebra.txt").write_text(
                "zebra zebra zebra lion", encoding="utf-8"
            )

            def waiting_for_its_slot() -> BatchProgress | None:
                return next(
                    (run for run in daemon.state.in_flight.values() if run.stage == "running" and run.total),
                    None,
                )

            held_run = await wait_for(waiting_for_its_slot, "the batch's task waiting in Batch", 60)
            in_flight = await rendered(f"{url}/")
            await anyio.Path(held.release).touch()
            await anyio.Path(folders.inbox / "broken.txt").write_text("FAIL-THIS-FILE", encoding="utf-8")

            async def finished() -> bool:
                done = await anyio.to_thread.run_sync(files_under, folders.done)
                failed = await anyio.to_thread.run_sync(files_under, folders.failed)
                return len(done) == 1 and len(failed) == 2

            await wait_async(finished, "both files to finish", 90)
            await wait_async(
                lambda: _has_usable_nodes(daemon.state.pool_nodes), "the pool view's idle node", 30
            )
            dom = await rendered(f"{url}/")
    assert READY in in_flight and "not ready" not in in_flight and "draining" not in in_flight
    flight_table = in_flight.split('id="in-flight"', 1)[1].split("<h2>", 1)[0]  # up to the next section
    assert held_run.batch_id in flight_table and "<td>running</td>" in flight_table
    # One file, one task (max_files_per_task = 1), not done while its slot is held.
    assert '<progress max="1" value="0"></progress> 0/1' in flight_table
    assert "No finished run yet." in in_flight

    assert "<title>topn daemon</title>" in dom
    assert READY in dom and "not ready" not in dom and 'id="backlog">0<' in dom
    assert "No run in flight." in dom
    assert 'id="recent-runs"' in dom and "zebra (3)" in dom and "lion (1)" in dom
    assert held_run.batch_id in dom.split('id="recent-runs"', 1)[1]
    assert 'id="pool-nodes"' in dom and ("idle" in dom or "running" in dom)
    assert 'id="failures"' in dom and "broken.txt" in dom and "the file's task failed" in dom
    assert 'http-equiv="refresh"' in dom  # it refreshes itself


async def _has_usable_nodes(nodes: dict[str, int]) -> bool:
    return bool(nodes.get("idle") or nodes.get("running"))
