"""Ready again within 10 s of a restart with a journal that has history (issue 12 point 6).

10,000 finished intake rows, 200 finished batches and 1,000 runs of every kind in the journal: start-up
(services, pool, recovery, reconcile) must still take seconds, because recovery reads only what is
unfinished and the janitor reads run ids, not whole runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from orchestrator.journal import journal_path
from orchestrator.journal.intake import IntakeFile, IntakeStore
from tests.conftest import StartEmulator, StorageEndpoint
from tests.integration.daemon.support import daemon_settings_for, folders_under, running_daemon
from tests.journal_factory import varied_journal

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROWS = 10_000
READY_WITHIN_S = 10.0


async def test_the_daemon_is_ready_within_10_s_with_10000_rows_of_history(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    state = tmp_path / "state"
    await anyio.Path(state).mkdir()
    await varied_journal(journal_path(state), 1000)
    store = await IntakeStore.open(journal_path(state))
    try:
        rows = [
            IntakeFile(
                claim_id=f"{index:064x}-00000000",
                sha256=f"{index:064x}",
                relpath=f"old/{index}.txt",
                source_path=tmp_path / "inbox" / f"old/{index}.txt",
                claimed_path=tmp_path / "inbox" / ".claimed" / f"{index}",
                size_bytes=10,
                source="watch",
                complete_at="2026-01-01T00:00:00.000000+00:00",
                state="claimed",
            )
            for index in range(ROWS)
        ]
        await store.record_claims(rows, [])
        for number in range(200):
            members = [row.claim_id for row in rows[number * 50 : (number + 1) * 50]]
            await store.create_batch(f"old-{number:03d}", members, 500)
            await store.set_batch_state(f"old-{number:03d}", "finished", "succeeded")
        await store.record_finishing({row.claim_id: (None, "done", None) for row in rows})
        await store.record_finished([row.claim_id for row in rows])
    finally:
        await store.close()

    settings = daemon_settings_for(batch, azurite, state, "history-pool")
    started = time.monotonic()
    async with running_daemon(settings, folders_under(tmp_path)) as daemon:
        ready_after = time.monotonic() - started
        assert daemon.state.ready
    print(f"ready after {ready_after:.2f} s with {ROWS} intake rows and 1000 runs")
    assert ready_after < READY_WITHIN_S, f"ready after {ready_after:.1f} s"
