"""An unusable state folder is exit 2 before anything starts; `topn status` still reads a read-only one.

Read-only is made for real: as root (whom permission bits do not stop) a small tmpfs remounted
read-only, otherwise a folder without write permission. Neither possible is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from orchestrator import cli
from orchestrator.journal import Journal, JournalUnusableError, check_state_folder, journal_path
from orchestrator.service.status import recent_runs_in


def _make_read_only(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)
    else:
        folder.chmod(0o555)


@pytest.fixture
def writable_then_read_only(tmp_path: Path) -> Iterator[Path]:
    """A folder to fill now and make read-only later (`_make_read_only`)."""
    folder = tmp_path / "state"
    folder.mkdir()
    if os.geteuid() == 0:
        if shutil.which("mount") is None:
            pytest.fail("running as root, a read-only folder needs `mount` (a tmpfs remounted read-only)")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], check=True)
        try:
            yield folder
        finally:
            subprocess.run(["umount", str(folder)], check=True)
    else:
        try:
            yield folder
        finally:
            folder.chmod(0o755)


def test_a_state_folder_that_is_a_file_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a folder")
    with pytest.raises(JournalUnusableError, match="is a file") as raised:
        check_state_folder(tmp_path / "state")
    assert str(tmp_path / "state") in str(raised.value) and "TOPN_LOCAL_STATE_DIR" in str(raised.value)
    assert raised.value.exit_code == 2


def test_a_state_folder_below_a_file_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(JournalUnusableError, match="cannot create the state folder") as raised:
        check_state_folder(tmp_path / "file" / "state")
    assert str(tmp_path / "file" / "state") in str(raised.value)


def test_a_read_only_state_folder_is_refused_but_status_still_reads_it(writable_then_read_only: Path) -> None:
    folder = writable_then_read_only

    async def fill() -> None:
        async with await Journal.open(journal_path(folder)) as journal:
            await journal.create_run("20261206t010203z-abcdef", {}, [], out_dir=folder.parent / "out")

    anyio.run(fill)
    _make_read_only(folder)
    with pytest.raises(JournalUnusableError, match="not writable") as raised:
        check_state_folder(folder)
    assert str(folder) in str(raised.value)
    runs = anyio.run(recent_runs_in, journal_path(folder), 20, False)
    assert [run["run_id"] for run in runs] == ["20261206t010203z-abcdef"]


def test_topn_run_with_an_unusable_state_folder_is_exit_2_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "state").write_text("not a folder")
    (tmp_path / "in.txt").write_text("words")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOPN_LOCAL_STATE_DIR", str(tmp_path / "state"))
    exit_code = cli.main(["run", "in.txt", "--log-format", "console"])
    assert exit_code == 2
    assert f"the state folder {tmp_path / 'state'} is a file" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()  # nothing started, nothing written


def test_a_deleted_working_folder_is_exit_2_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "gone").mkdir()
    monkeypatch.chdir(tmp_path / "gone")
    (tmp_path / "gone").rmdir()
    assert cli.main(["status", "--log-format", "console"]) == 2
    assert "current folder no longer exists" in capsys.readouterr().err
