"""Claims and final moves on a real journal file and folders (no Batch): crash gaps and collisions."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from orchestrator.journal.intake import IntakeStore
from orchestrator.service import claims
from orchestrator.service.claims import Claimer, DaemonFolders, sha256_of
from orchestrator.settings import DaemonSettings
from tests.unit.orchestrator.daemon.inbox_files import complete


async def test_a_claim_renames_into_claimed_and_a_same_content_file_is_a_duplicate(
    folders: DaemonFolders, tmp_path: Path
) -> None:
    store = await IntakeStore.open(tmp_path / "state")
    try:
        claimer = Claimer(store, folders, DaemonSettings())
        new, duplicates = await claimer.claim([complete(folders, "sub/a.txt", "same words")])
        assert duplicates == [] and len(new) == 1
        claim = new[0]
        assert claim.claim_id.startswith(sha256_of(claim.claimed_path)[0])
        assert claim.claimed_path == folders.claimed / claim.claim_id / "sub" / "a.txt"
        assert not (folders.inbox / "sub" / "a.txt").exists()
        again, duplicates = await claimer.claim([complete(folders, "b.txt", "same words")])
        assert again == [] and [item.relpath for item in duplicates] == ["b.txt"]
        assert (folders.done / "b.txt").read_text(encoding="utf-8") == "same words"
    finally:
        await store.close()


async def test_a_crash_between_the_row_and_the_rename_is_finished_not_duplicated(
    folders: DaemonFolders, tmp_path: Path
) -> None:
    store = await IntakeStore.open(tmp_path / "state")
    try:
        claimer = Claimer(store, folders, DaemonSettings())
        item = complete(folders, "a.txt", "crash here")
        new, _ = await claimer.claim([item])
        # Put the file back where it was, as if the process died after the journal row.
        await anyio.Path(new[0].claimed_path).rename(item.path)
        assert await claimer.complete_interrupted() == 1
        assert new[0].claimed_path.is_file() and not item.path.exists()
    finally:
        await store.close()


@pytest.mark.parametrize("dedupe", [True, False])
async def test_a_failed_rename_leaves_that_file_alone_and_the_next_check_hands_it_on_once(
    folders: DaemonFolders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dedupe: bool
) -> None:
    """The row is written, the rename fails: the next check finishes that claim and hands it on once."""
    store = await IntakeStore.open(tmp_path / "state")
    real_move = claims.move

    def refuse_b(source: Path, destination: Path) -> bool:
        if source.name == "b.txt":
            raise PermissionError(13, "Permission denied", str(source))
        return real_move(source, destination)

    try:
        claimer = Claimer(store, folders, DaemonSettings(dedupe=dedupe))
        files = [complete(folders, "a.txt", "alpha"), complete(folders, "b.txt", "beta")]
        monkeypatch.setattr(claims, "move", refuse_b)
        new, _ = await claimer.claim(files)
        assert [item.relpath for item in new] == ["a.txt"]  # b is not handed on: it is still in the inbox
        assert files[1].path.is_file()
        monkeypatch.setattr(claims, "move", real_move)
        again, duplicates = await claimer.claim([files[1]])
        assert [item.relpath for item in again] == ["b.txt"] and duplicates == []
        assert again[0].claimed_path.read_text(encoding="utf-8") == "beta" and not files[1].path.exists()
        rows = await store.files_in_states(("claimed",))
        assert sorted(item.relpath for item in rows) == ["a.txt", "b.txt"]  # one row each, none added
        assert {item.claim_id for item in rows} == {new[0].claim_id, again[0].claim_id}
    finally:
        await store.close()


async def test_finishing_keeps_names_never_overwrites_and_explains_failures(
    folders: DaemonFolders, tmp_path: Path
) -> None:
    store = await IntakeStore.open(tmp_path / "state")
    try:
        claimer = Claimer(store, folders, DaemonSettings())
        (folders.done / "a.txt").write_text("an earlier a.txt", encoding="utf-8")
        new, _ = await claimer.claim(
            [complete(folders, "a.txt", "new a"), complete(folders, "x/b.txt", "bad")]
        )
        await store.create_batch("batch1", [item.claim_id for item in new], 8)
        files = await store.batch_files("batch1")
        by_name = {item.relpath: item for item in files}
        await claimer.finish(
            files, {by_name["a.txt"].claim_id: None, by_name["x/b.txt"].claim_id: {"reason": "r"}}
        )
        assert (folders.done / "a.txt").read_text(encoding="utf-8") == "an earlier a.txt"
        renamed = [path for path in folders.done.iterdir() if path.name != "a.txt"]
        assert len(renamed) == 1 and renamed[0].read_text(encoding="utf-8") == "new a"
        assert renamed[0].suffix == ".txt" and renamed[0].name.startswith("a.")
        assert (folders.failed / "x" / "b.txt").read_text(encoding="utf-8") == "bad"
        report = json.loads((folders.failed / "x" / "b.txt.error.json").read_text(encoding="utf-8"))
        assert report["reason"] == "r" and report["batch_id"] == "batch1" and report["path"] == "x/b.txt"
        assert {item.state for item in await store.batch_files("batch1")} == {"done", "failed"}
        assert not folders.claimed.exists()  # emptied and pruned
    finally:
        await store.close()


async def test_delete_done_deletes_finished_inputs_and_keeps_failed_ones(
    folders: DaemonFolders, tmp_path: Path
) -> None:
    store = await IntakeStore.open(tmp_path / "state")
    try:
        claimer = Claimer(store, folders, DaemonSettings(delete_done=True))
        new, _ = await claimer.claim(
            [complete(folders, "ok.txt", "fine"), complete(folders, "no.txt", "bad")]
        )
        await store.create_batch("batch2", [item.claim_id for item in new], 7)
        files = await store.batch_files("batch2")
        outcomes = {item.claim_id: (None if item.relpath == "ok.txt" else {"reason": "r"}) for item in files}
        await claimer.finish(files, outcomes)
        assert list(folders.done.iterdir()) == []
        assert sorted(path.name for path in folders.failed.iterdir()) == ["no.txt", "no.txt.error.json"]
        assert {item.relpath: item.state for item in await store.batch_files("batch2")} == {
            "ok.txt": "done",
            "no.txt": "failed",
        }
    finally:
        await store.close()
