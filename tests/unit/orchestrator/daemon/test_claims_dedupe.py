"""What `dedupe` decides at claim time, on a real journal file and real folders (no Batch).

`dedupe = false`: a file whose content equals one already done is claimed again and runs in a batch
of its own, with its own result. `dedupe = true` (docs/daemon.md): content already claimed, and not
failed, is a duplicate; content whose earlier claim failed runs again.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.journal.intake import IntakeStore
from orchestrator.service.claims import Claimer, DaemonFolders
from orchestrator.settings import DaemonSettings
from tests.unit.orchestrator.daemon.inbox_files import complete

SAME = "the same words twice"


async def run_batch(
    store: IntakeStore, claimer: Claimer, batch_id: str, claim_ids: list[str], failed: bool = False
) -> None:
    """A batch of `claim_ids` that ends as a run would end it (every file succeeded, or failed)."""
    await store.create_batch(batch_id, claim_ids, 0)
    files = await store.batch_files(batch_id)
    await claimer.finish(files, {item.claim_id: ({"reason": "r"} if failed else None) for item in files})


async def test_without_dedupe_content_equal_to_a_done_file_is_claimed_and_run_again(
    folders: DaemonFolders, tmp_path: Path
) -> None:
    store = await IntakeStore.open(tmp_path / "state")
    try:
        claimer = Claimer(store, folders, DaemonSettings(dedupe=False))
        first, _ = await claimer.claim([complete(folders, "a.txt", SAME, "rescan")])
        await run_batch(store, claimer, "batch-a", [first[0].claim_id])
        assert (folders.done / "a.txt").read_text(encoding="utf-8") == SAME

        again, duplicates = await claimer.claim([complete(folders, "b.txt", SAME, "rescan")])
        assert duplicates == [] and [item.relpath for item in again] == ["b.txt"]
        claim = again[0]
        assert claim.sha256 == first[0].sha256 and claim.claim_id != first[0].claim_id
        assert claim.state == "claimed" and claim.claimed_path.read_text(encoding="utf-8") == SAME
        assert not (folders.done / "b.txt").exists()  # not put aside as a duplicate

        # Two arrivals with the same content in one check: both are claims of their own too.
        pair, duplicates = await claimer.claim(
            [complete(folders, "c.txt", SAME, "rescan"), complete(folders, "sub/c.txt", SAME, "rescan")]
        )
        assert duplicates == [] and sorted(item.relpath for item in pair) == ["c.txt", "sub/c.txt"]

        await run_batch(store, claimer, "batch-b", [claim.claim_id])
        await run_batch(store, claimer, "batch-c", [item.claim_id for item in pair])
        assert sorted(path.relative_to(folders.done).as_posix() for path in folders.done.rglob("*.txt")) == [
            "a.txt",
            "b.txt",
            "c.txt",
            "sub/c.txt",
        ]
        for batch_id, count in (("batch-a", 1), ("batch-b", 1), ("batch-c", 2)):
            files = await store.batch_files(batch_id)
            assert len(files) == count and {item.state for item in files} == {"done"}
    finally:
        await store.close()


async def test_with_dedupe_the_same_content_is_a_duplicate_and_not_claimed_again(
    folders: DaemonFolders, tmp_path: Path
) -> None:
    store = await IntakeStore.open(tmp_path / "state")
    try:
        claimer = Claimer(store, folders, DaemonSettings(dedupe=True))
        first, _ = await claimer.claim([complete(folders, "a.txt", SAME, "rescan")])
        await run_batch(store, claimer, "batch-a", [first[0].claim_id])
        again, duplicates = await claimer.claim([complete(folders, "b.txt", SAME, "rescan")])
        assert again == [] and [item.relpath for item in duplicates] == ["b.txt"]
        assert duplicates[0].batch_id == "batch-a"  # it points at the run that has its result
        assert (folders.done / "b.txt").read_text(encoding="utf-8") == SAME
    finally:
        await store.close()


async def test_with_dedupe_content_whose_claim_failed_runs_again(
    folders: DaemonFolders, tmp_path: Path
) -> None:
    store = await IntakeStore.open(tmp_path / "state")
    try:
        claimer = Claimer(store, folders, DaemonSettings(dedupe=True))
        first, _ = await claimer.claim([complete(folders, "a.txt", SAME, "rescan")])
        await run_batch(store, claimer, "batch-a", [first[0].claim_id], failed=True)
        assert (folders.failed / "a.txt").is_file()

        # Sent again (say after a transient failure of its batch): a new claim, not a duplicate.
        again, duplicates = await claimer.claim([complete(folders, "a.txt", SAME, "rescan")])
        assert duplicates == [] and [item.relpath for item in again] == ["a.txt"]
        assert again[0].claimed_path.is_file() and not (folders.done / "a.txt").exists()
        # And once that claim exists, a third copy is its duplicate.
        third, duplicates = await claimer.claim([complete(folders, "b.txt", SAME, "rescan")])
        assert third == [] and [item.relpath for item in duplicates] == ["b.txt"]
    finally:
        await store.close()
