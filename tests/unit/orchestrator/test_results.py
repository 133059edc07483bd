"""The run-level merge, counts parsing, summary and safe writes."""

from __future__ import annotations

import ctypes
import errno
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator import results
from orchestrator.azure.collect import save_outputs
from orchestrator.errors import InputError, LocalWriteError
from orchestrator.naming import UnsafeNameError, output_name
from orchestrator.results import (
    ResultWriter,
    RunCounts,
    check_result_paths_fit,
    claim_results_folder,
    result_path,
    top_of,
    write_atomic,
    write_result,
)

words = st.sampled_from(["a", "b", "c", "d", "é", "the", "Zoë"])
files_of_words = st.lists(st.lists(words, max_size=30), min_size=1, max_size=6)


def ordered_counts(tokens: list[str]) -> list[tuple[str, int]]:
    return list(Counter(tokens).items())  # Counter keeps first-occurrence order


@given(files=files_of_words, order=st.randoms(use_true_random=False), top=st.integers(1, 8))
def test_merge_in_any_order_equals_sequential_counter_merge(files: list[list[str]], order, top: int) -> None:
    reference: Counter[str] = Counter()
    for tokens in files:
        reference.update(tokens)
    merged = RunCounts()
    arrival = list(range(len(files)))
    order.shuffle(arrival)
    for index in arrival:
        merged.add(index, ordered_counts(files[index]))
    assert merged.top(top) == reference.most_common(top)


@given(tokens=st.lists(words, max_size=40), top=st.integers(1, 8))
def test_per_file_top_matches_most_common(tokens: list[str], top: int) -> None:
    assert top_of(ordered_counts(tokens), top) == Counter(tokens).most_common(top)


def test_write_atomic_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "x" / "f.txt"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [path.name for path in target.parent.iterdir()] == ["f.txt"]


def test_results_folder_of_another_run_is_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "out"
    claim_results_folder(out, "run-a")
    claim_results_folder(out, "run-a")  # the same run (a resume) may write again
    with pytest.raises(InputError, match="run-a"):
        claim_results_folder(out, "run-b")
    assert (out / ".topn-run").read_text(encoding="utf-8") == "run-a\n"  # still the first run's


def test_a_results_path_that_is_a_file_is_refused_and_kept(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_bytes(b"a user's file")
    with pytest.raises(InputError, match="not a folder"):
        claim_results_folder(target, "run-a")
    assert target.read_bytes() == b"a user's file"


def test_a_results_folder_below_a_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / "deeper" / "out"
    with pytest.raises(InputError, match=r"notes\.txt is not a folder \(pass another --out\)"):
        claim_results_folder(out, "run-a")
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_results_folder_the_system_refuses_is_an_input_error_not_a_crash() -> None:
    # /proc exists and is a folder, but no one can create entries in it, not even root.
    out = Path("/proc/topn-test-results/out")
    with pytest.raises(InputError, match=r"cannot create the results folder /proc/topn-test-results/out: "):
        claim_results_folder(out, "run-a")
    assert not out.parent.exists()


def test_non_empty_foreign_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        claim_results_folder(tmp_path, "run-a")
    assert [path.name for path in tmp_path.iterdir()] == ["keep.txt"]  # no marker, nothing written
    assert (tmp_path / "keep.txt").read_text() == "mine"


# --- result files never land outside the results folder -------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../escape_OUTPUT.txt",
        "counts/../../escape.counts.json.gz",
        "/tmp/escape_OUTPUT.txt",
        "..\\escape_OUTPUT.txt",
        "C:escape_OUTPUT.txt",
        "c:/escape_OUTPUT.txt",
        "a/./b_OUTPUT.txt",
    ],
)
def test_a_result_name_that_would_escape_is_refused_and_nothing_is_written(tmp_path: Path, name: str) -> None:
    out_dir = tmp_path / "deep" / "out"
    out_dir.mkdir(parents=True)
    with pytest.raises(UnsafeNameError):
        write_result(out_dir, name, b"should never be written")
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []


def test_a_symlink_inside_the_results_folder_cannot_lead_a_result_out(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    (out_dir).mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out_dir / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(UnsafeNameError, match="outside the results folder"):
        write_result(out_dir, "sub/a_OUTPUT.txt", b"x")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def symlinked_results_folder(tmp_path: Path) -> Path:
    """A results folder with a subfolder and a file name that lead outside it, and one that does not."""
    out_dir = tmp_path / "out"
    (out_dir / "real").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (out_dir / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (out_dir / "inside").symlink_to(out_dir / "real", target_is_directory=True)
    (out_dir / "real" / "leak_OUTPUT.txt").symlink_to(tmp_path / "elsewhere" / "x_OUTPUT.txt")
    return out_dir


WRITER_NAMES = [
    "a_OUTPUT.txt",
    "real/b_OUTPUT.txt",
    "sub/c_OUTPUT.txt",
    "inside/d_OUTPUT.txt",
    "real/leak_OUTPUT.txt",
    "new/deeper/e_OUTPUT.txt",
]


def test_a_unit_writer_places_and_refuses_exactly_as_result_path(tmp_path: Path) -> None:
    out_dir = symlinked_results_folder(tmp_path)
    writer = ResultWriter(out_dir)
    refused = set()
    for name in WRITER_NAMES * 2:  # the second time from what the writer remembers
        try:
            expected: Path | str = result_path(out_dir, name)
        except UnsafeNameError:
            expected = "refused"
        try:
            placed: Path | str = writer.path_of(name)
        except UnsafeNameError:
            placed = "refused"
            refused.add(name)
        assert placed == expected, name
    assert refused == {"sub/c_OUTPUT.txt", "real/leak_OUTPUT.txt"}


def test_a_unit_writer_makes_again_a_subfolder_removed_between_its_files(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    writer = ResultWriter(out_dir)
    writer.write("part/a_OUTPUT.txt", b"a\n")
    (out_dir / "part" / "a_OUTPUT.txt").unlink()
    (out_dir / "part").rmdir()
    assert writer.write("part/b_OUTPUT.txt", b"b\n").read_bytes() == b"b\n"


def test_a_plain_result_name_is_written_below_the_folder(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()  # claimed by the run before any result is written
    written = write_result(out_dir, "日本/b c#?%_OUTPUT.txt", b"rows\n")
    assert written == out_dir / "日本" / "b c#?%_OUTPUT.txt"
    assert written.read_bytes() == b"rows\n"
    assert result_path(out_dir, "a/b.txt") == out_dir / "a" / "b.txt"


def test_a_resumed_run_clears_temporaries_a_crash_left_and_keeps_its_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    claim_results_folder(out, "run-a")
    write_atomic(out / "sub" / "kept_OUTPUT.txt", b"whole")
    # What a SIGKILL between write and rename leaves behind:
    (out / "sub" / ".tmp-abc123.part").write_bytes(b"hal")
    (out / "notes.part").write_bytes(b"a user's file that only looks similar")
    claim_results_folder(out, "run-a")
    assert sorted(path.name for path in out.rglob("*") if path.is_file()) == [
        ".topn-run",
        "kept_OUTPUT.txt",
        "notes.part",
    ]


@pytest.mark.parametrize(
    "relpath", ["a" * 251 + ".txt", "é" * 125 + ".text", "語" * 83 + "a.docx", "deep/" + "z" * 255]
)
def test_the_result_of_a_255_byte_input_name_can_be_written(tmp_path: Path, relpath: str) -> None:
    """The input's own name is legal here, so its result must be too (the filesystem holds both)."""
    (tmp_path / "in" / relpath).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "in" / relpath).write_bytes(b"x")  # the input itself is a legal file name
    (tmp_path / "out").mkdir()
    written = write_result(tmp_path / "out", output_name(relpath), b"word\t1\n")
    assert written.read_bytes() == b"word\t1\n"
    assert written.parent == (tmp_path / "out" / relpath).parent


def test_a_results_folder_removed_meanwhile_is_not_made_again(tmp_path: Path) -> None:
    with pytest.raises(LocalWriteError, match="moved or deleted") as raised:
        write_result(tmp_path / "gone", "a_OUTPUT.txt", b"rows\n")
    assert str(tmp_path / "gone") in str(raised.value) and not (tmp_path / "gone").exists()


def test_a_result_path_longer_than_the_system_allows_is_refused_before_the_run(tmp_path: Path) -> None:
    deep = "/".join(["語" * 80] * 12)  # 960 characters, 2,880 bytes of folders
    check_result_paths_fit(tmp_path / "out", [deep + "/a.txt"])  # fits under a short --out
    long_out = tmp_path.joinpath(*[letter * 250 for letter in "outxy"])  # 1,250 bytes more
    with pytest.raises(InputError, match="pass a shorter --out") as raised:
        check_result_paths_fit(long_out, ["ok.txt", deep + "/a.txt"])
    assert raised.value.exit_code == 2


class SyncCalls:
    """Stands in for os.fsync and syncfs, counting the calls; `fail_with` makes syncfs fail."""

    def __init__(self) -> None:
        self.fsyncs = 0
        self.filesystem_syncs: list[str] = []
        self.fail_with: int | None = None

    def fsync(self, descriptor: int) -> None:
        self.fsyncs += 1

    def syncfs(self, descriptor: int) -> int:
        self.filesystem_syncs.append(str(Path(f"/proc/self/fd/{descriptor}").readlink()))
        if self.fail_with is not None:
            ctypes.set_errno(self.fail_with)
            return -1
        return 0


@pytest.fixture
def sync_calls(monkeypatch: pytest.MonkeyPatch) -> SyncCalls:
    calls = SyncCalls()
    monkeypatch.setattr(results.os, "fsync", calls.fsync)
    monkeypatch.setattr(results, "_SYNCFS", calls.syncfs)
    return calls


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="syncfs is Linux's")
def test_a_units_outputs_are_made_durable_by_one_filesystem_sync_not_an_fsync_each(
    tmp_path: Path, sync_calls: SyncCalls
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    names = [f"part{number % 3}/doc{number}_OUTPUT.txt" for number in range(12)]
    saved = save_outputs(out_dir, [(name, name.encode()) for name in names])
    written = [path.read_bytes() for path in saved if isinstance(path, Path)]
    assert written == [name.encode() for name in names]
    assert sync_calls.fsyncs == 0 and sync_calls.filesystem_syncs == [str(out_dir)]
    save_outputs(out_dir, [])  # nothing written: nothing to sync
    assert sync_calls.filesystem_syncs == [str(out_dir)]
    write_result(out_dir, "single_OUTPUT.txt", b"x")  # a lone write is durable on its own
    assert sync_calls.fsyncs == 1 and len(sync_calls.filesystem_syncs) == 1


def test_where_there_is_no_syncfs_each_output_is_fsynced(
    tmp_path: Path, sync_calls: SyncCalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results, "_SYNCFS", None)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    save_outputs(out_dir, [("a_OUTPUT.txt", b"a"), ("b/c_OUTPUT.txt", b"c")])
    assert sync_calls.fsyncs == 2 and (out_dir / "b" / "c_OUTPUT.txt").read_bytes() == b"c"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="syncfs is Linux's")
def test_a_failed_filesystem_sync_stops_the_unit_naming_the_folder_and_the_error(
    tmp_path: Path, sync_calls: SyncCalls
) -> None:
    sync_calls.fail_with = errno.EIO
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(LocalWriteError) as raised:
        save_outputs(out_dir, [("a_OUTPUT.txt", b"a")])
    message = str(raised.value)
    assert f"cannot write its results in the results folder {out_dir}" in message
    assert "Input/output error (EIO)" in message


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="syncfs is Linux's")
def test_the_real_syncfs_is_found_and_succeeds(tmp_path: Path) -> None:
    assert results._SYNCFS is not None
    writer = ResultWriter(tmp_path, sync_later=True)
    writer.write("a_OUTPUT.txt", b"a")
    writer.sync()  # the real system call on the real folder: no error
    assert (tmp_path / "a_OUTPUT.txt").read_bytes() == b"a"
