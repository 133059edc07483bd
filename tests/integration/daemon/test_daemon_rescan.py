"""The full rescan (`rescan_s`) finds a complete file the watcher never reported (issue 12 point 2).

inotify misses changes on network file systems and drops events on overflow. Here the daemon's
watcher is running but never reports anything (as on such a file system), and the file arrives
after the start-up scans, so only the periodic rescan can find it: it is claimed (source `rescan`),
run, and its result written.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from orchestrator.service import intake
from orchestrator.service.intake import Inbox
from tests.conftest import StartEmulator, StorageEndpoint
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

RESCAN_S = 1.0
# The rescans at start-up: at once, and a second soon after (service/intake.py SECOND_SCAN_AFTER_S).
START_UP_SCANS = 2


def received(metrics: str, source: str) -> float:
    prefix = f'topn_inputs_received_total{{source="{source}"}} '
    return next(
        (float(line.removeprefix(prefix)) for line in metrics.splitlines() if line.startswith(prefix)), 0.0
    )


async def test_a_file_the_watcher_never_reports_is_found_by_the_rescan(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher_started: list[Path] = []
    scans: list[int] = []

    async def blind_watcher(inbox: Inbox) -> None:
        """A watcher whose events never come (an NFS inbox, an overflowed inotify queue)."""
        watcher_started.append(inbox.root)
        await anyio.sleep_forever()

    real_walk = intake.walk_inbox

    def counted_walk(root: Path) -> list[str]:
        found = real_walk(root)
        scans.append(len(found))
        return found

    monkeypatch.setattr(intake, "_watch_events", blind_watcher)
    monkeypatch.setattr(intake, "walk_inbox", counted_walk)
    batch = await start_emulator()
    settings = daemon_settings_for(
        batch, azurite, tmp_path / "state", "rescan-pool", TOPN_DAEMON_RESCAN_S=str(RESCAN_S)
    )
    folders = folders_under(tmp_path)
    async with running_daemon(settings, folders) as daemon:
        await wait_for(lambda: len(scans) >= START_UP_SCANS, "the start-up scans", 30)
        assert watcher_started == [folders.inbox]
        await anyio.Path(folders.inbox / "missed.txt").write_text("owl owl hawk", encoding="utf-8")
        scans_before = len(scans)

        async def in_done() -> bool:
            return "missed.txt" in await anyio.to_thread.run_sync(files_under, folders.done)

        await wait_async(in_done, "the missed file to be done", 30)
        assert len(scans) > scans_before  # a later, periodic scan found it
        assert daemon.state.listen_url is not None
        _, metrics = await get_json(f"{daemon.state.listen_url}/metrics")
    assert received(metrics, "rescan") == 1.0 and received(metrics, "watch") == 0.0
    outputs = await anyio.to_thread.run_sync(files_under, folders.outbox)
    results = {relpath: text for relpath, text in outputs.items() if relpath.endswith("missed_OUTPUT.txt")}
    assert len(results) == 1 and "owl:\t2" in next(iter(results.values()))
