"""Which inbox files count and when they are complete (pure rules) + the instance lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.service.instance import DaemonAlreadyRunningError, single_instance
from orchestrator.service.intake import Observation, is_complete, is_ignored, next_first_stable, walk_inbox

SECOND = 1_000_000_000


@pytest.mark.parametrize(
    ("relpath", "ignored"),
    [
        ("a.txt", False),
        ("sub/b.md", False),
        (".hidden", True),
        ("sub/.x/a.txt", True),
        (".claimed/abc/a.txt", True),
        ("big.txt.part", True),
        ("big.tmp", True),
        ("a.txt.done", True),
        ("notes.partial", False),
    ],
)
def test_ignored_names(relpath: str, ignored: bool) -> None:
    assert is_ignored(relpath) is ignored


def rule(first: Observation | None, current: Observation, wall_now_ns: int, marker: bool = False) -> bool:
    return is_complete(
        first, current, wall_now_ns=wall_now_ns, settle_s=1.0, min_age_s=2.0, has_marker=marker
    )


def test_a_marker_makes_a_file_complete_at_once() -> None:
    assert rule(None, Observation(5, 10 * SECOND, 0.0), 10 * SECOND, marker=True)


def test_stable_over_settle_and_old_enough_is_complete() -> None:
    first = Observation(5, 10 * SECOND, 100.0)
    assert not rule(None, first, 20 * SECOND)  # one check is never enough
    assert not rule(first, Observation(5, 10 * SECOND, 100.5), 20 * SECOND)  # not settle_s apart
    assert rule(first, Observation(5, 10 * SECOND, 101.0), 20 * SECOND)
    assert not rule(first, Observation(5, 10 * SECOND, 101.0), 11 * SECOND)  # younger than 2 s
    assert not rule(first, Observation(6, 10 * SECOND, 101.0), 20 * SECOND)  # grew


@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=12),
)
def test_a_file_that_changed_at_its_last_check_is_never_complete(changes: list[tuple[int, int]]) -> None:
    first: Observation | None = None
    seen_at = 0.0
    for size, mtime in changes:
        seen_at += 1.5
        current = Observation(size, mtime * SECOND, seen_at)
        complete = rule(first, current, wall_now_ns=100 * SECOND)
        if first is None or (first.size_bytes, first.mtime_ns) != (size, mtime * SECOND):
            assert not complete
        first = next_first_stable(first, current)


def test_walk_skips_hidden_folders_partial_files_and_markers(tmp_path: Path) -> None:
    for relpath in ("a.txt", "s/b.txt", ".claimed/x/c.txt", "d.part", "a.txt.done", "s/.e"):
        path = tmp_path / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x", encoding="utf-8")
    assert sorted(walk_inbox(tmp_path)) == ["a.txt", "s/b.txt"]


def test_a_second_daemon_on_the_same_state_folder_is_refused_naming_the_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path\n"
            "from orchestrator.service.instance import single_instance\n"
            "with single_instance(Path(sys.argv[1]), Path(sys.argv[2])):\n"
            "    print('held', flush=True); time.sleep(30)",
            str(tmp_path / "state"),
            str(tmp_path / "inbox"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(DaemonAlreadyRunningError, match=rf"pid {holder.pid}\b.*state folder") as refused,
            single_instance(tmp_path / "state", tmp_path / "other-inbox"),
        ):
            pass
        assert refused.value.exit_code == 2
        with (
            pytest.raises(DaemonAlreadyRunningError, match=rf"pid {holder.pid}\b.*inbox"),
            single_instance(tmp_path / "other-state", tmp_path / "inbox"),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
    with single_instance(tmp_path / "state", tmp_path / "inbox") as locks:  # free again after the holder died
        assert all(lock.read_text(encoding="utf-8").strip() == str(os.getpid()) for lock in locks)
