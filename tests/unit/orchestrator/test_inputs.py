"""discover_inputs: the run's input list from the user's paths."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from orchestrator.errors import InputError
from orchestrator.inputs import discover_inputs, make_relpaths_unique, renamed_inputs


def write(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_folder_is_read_recursively_with_relative_posix_paths(tmp_path: Path) -> None:
    write(tmp_path / "t" / "b.txt", "hello")
    write(tmp_path / "t" / "sub" / "a.txt")
    write(tmp_path / "t" / "sub" / "deeper" / "é #%.txt")
    inputs = discover_inputs([tmp_path / "t"])
    assert [item.relpath for item in inputs] == ["b.txt", "sub/a.txt", "sub/deeper/é #%.txt"]
    assert inputs[0].size_bytes == 5
    assert inputs[0].path == tmp_path / "t" / "b.txt"


def test_file_argument_relpath_is_its_name(tmp_path: Path) -> None:
    inputs = discover_inputs([write(tmp_path / "deep" / "one.txt")])
    assert [item.relpath for item in inputs] == ["one.txt"]


def test_colliding_names_from_several_arguments_are_made_unique(tmp_path: Path) -> None:
    first = write(tmp_path / "a" / "same.txt")
    second = write(tmp_path / "b" / "same.txt")
    # The argument named first keeps its name, whichever folder it is in; which file became `~2`
    # matters, as its results are filed under that name.
    inputs = discover_inputs([first, second])
    assert [(item.relpath, item.path) for item in inputs] == [("same.txt", first), ("same~2.txt", second)]
    swapped = discover_inputs([second, first])
    assert [(item.relpath, item.path) for item in swapped] == [("same.txt", second), ("same~2.txt", first)]


def test_only_inputs_given_another_name_are_reported_as_renamed(tmp_path: Path) -> None:
    first = write(tmp_path / "a" / "same.txt")
    second = write(tmp_path / "b" / "same.txt")
    third = write(tmp_path / "c" / "same~2.txt")  # its own name, though it looks like a rename
    inputs = discover_inputs([first, second, third, tmp_path / "a"])
    assert [(item.relpath, item.path) for item in renamed_inputs(inputs)] == [("same~3.txt", second)]


def test_same_file_named_twice_is_processed_once(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt")
    assert len(discover_inputs([path, path, tmp_path])) == 1


def test_missing_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"not found: .*nope"):
        discover_inputs([tmp_path / "nope"])


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InputError) as raised:
        discover_inputs([tmp_path / "empty"])
    message = str(raised.value)
    assert "no files to process" in message and str(tmp_path / "empty") in message
    assert "Put text files in it" in message  # the fix, not only the problem


def test_no_argument_is_refused() -> None:
    with pytest.raises(InputError, match="no input"):
        discover_inputs([])


def test_symlink_loop_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "t" / "a.txt")
    (tmp_path / "t" / "loop").symlink_to(tmp_path / "t")
    with pytest.raises(InputError, match="loop"):
        discover_inputs([tmp_path / "t"])


def test_broken_symlink_is_named(tmp_path: Path) -> None:
    write(tmp_path / "t" / "a.txt")
    (tmp_path / "t" / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(InputError, match="dangling"):
        discover_inputs([tmp_path / "t"])


def test_control_characters_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "t" / "bad\nname.txt")
    with pytest.raises(InputError, match="control character"):
        discover_inputs([tmp_path / "t"])


@given(st.lists(st.sampled_from(["a.txt", "a~2.txt", "b/a.txt", "c", "c~2"]), max_size=12))
def test_unique_relpaths_keep_first_names_and_never_collide(relpaths: list[str]) -> None:
    unique = make_relpaths_unique(relpaths)
    assert len(set(unique)) == len(unique) == len(relpaths)
    first_positions = {relpath: relpaths.index(relpath) for relpath in relpaths}
    for relpath, position in first_positions.items():
        assert unique[position] == relpath
    assert make_relpaths_unique(relpaths) == unique


def test_hidden_entries_inside_folders_are_skipped_unless_named(tmp_path: Path) -> None:
    write(tmp_path / "t" / "a.txt")
    write(tmp_path / "t" / ".git" / "config")
    hidden = write(tmp_path / "t" / ".notes.txt")
    assert [item.relpath for item in discover_inputs([tmp_path / "t"])] == ["a.txt"]
    assert [item.relpath for item in discover_inputs([hidden])] == [".notes.txt"]


def test_a_name_starting_with_a_drive_letter_is_refused_with_the_fix(tmp_path: Path) -> None:
    write(tmp_path / "t" / "C:notes.txt")
    with pytest.raises(InputError, match=r"drive letter.*rename the file"):
        discover_inputs([tmp_path / "t"])


def test_awkward_but_safe_names_are_kept_exactly(tmp_path: Path) -> None:
    names = ["with space.txt", "hash#tag.txt", "question?.txt", "per%25cent%.txt", "it's.txt", 'say "hi".txt']
    for name in names:
        write(tmp_path / "t" / "ünï" / name)
    assert [item.relpath for item in discover_inputs([tmp_path / "t"])] == sorted(f"ünï/{n}" for n in names)


def make_fifo(root: Path) -> Path:
    os.mkfifo(root / "pipe")
    return root / "pipe"


def make_self_link(root: Path) -> Path:
    (root / "t").mkdir()
    (root / "t" / "me").symlink_to(root / "t" / "me")  # ELOOP when followed
    return root / "t"


def make_named(name: str) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        write(root / "t" / name)
        return root / "t"

    return make


@pytest.mark.parametrize(
    ("make", "problem", "fix"),
    [
        (make_fifo, "neither a file nor a folder", "name regular files or folders"),
        (make_self_link, "symbolic link loop", "remove the link"),
        (make_named("back\\slash.txt"), "backslash", "rename the file"),
        (make_named("trailing."), "ends with a dot", "rename the file or folder"),
        (make_named("tab\there.txt"), "control character", "rename the file"),
        (make_named("/".join(letter * 200 for letter in "vwxyz")), "longer than", "shorten"),
    ],
)
def test_every_refused_input_names_the_problem_and_the_fix(
    tmp_path: Path, make: Callable[[Path], Path], problem: str, fix: str
) -> None:
    argument = make(tmp_path)
    with pytest.raises(InputError) as raised:
        discover_inputs([argument])
    message = str(raised.value)
    assert problem in message and fix in message, message
    assert "\n" not in message  # one line


def test_results_of_an_earlier_run_below_the_inputs_are_not_inputs(tmp_path: Path) -> None:
    # `topn run .` twice: the first run's results/<run_id>/ (marked by .topn-run) sit below `.`.
    write(tmp_path / "texts" / "a.txt")
    earlier = tmp_path / "texts" / "results" / "20261122t010203z-abcdef"
    write(earlier / ".topn-run")
    write(earlier / "a_OUTPUT.txt")
    write(earlier / "summary.json")
    write(tmp_path / "texts" / "results" / "notes.txt")  # the user's own file next to it is kept
    assert [item.relpath for item in discover_inputs([tmp_path / "texts"])] == ["a.txt", "results/notes.txt"]
    # Named explicitly, a results folder is read like any other.
    named = discover_inputs([earlier])
    assert [item.relpath for item in named] == ["a_OUTPUT.txt", "summary.json"]


DISCOVER_AS_USER = """
import sys
from pathlib import Path
from orchestrator.errors import InputError
from orchestrator.inputs import discover_inputs
try:
    discover_inputs([Path(sys.argv[1])])
except InputError as error:
    print(error)
    sys.exit(2)
"""


DISCOVER_SKIPPING_AS_USER = """
import json, sys
from pathlib import Path
from orchestrator.errors import InputError
from orchestrator.inputs import discover_inputs
skipped = []
try:
    found = discover_inputs([Path(sys.argv[1])], skipped)
except InputError as error:
    print(error)
    sys.exit(2)
print(json.dumps({"found": [item.relpath for item in found],
                  "skipped": [[str(item.path), item.reason] for item in skipped]}))
"""


def _discover_without_privileges(
    folder: Path, script: str = DISCOVER_AS_USER
) -> subprocess.CompletedProcess[str]:
    """discover_inputs as a user whom permission bits stop (root reads everything, so: nobody)."""
    command = [sys.executable, "-c", script, str(folder)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.fail("running as root, this test needs `setpriv` to drop to an unprivileged user")
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    root = Path(__file__).resolve().parents[3]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(root)}
    )


@pytest.mark.parametrize("unreadable", ["file", "folder"])
def test_an_unreadable_file_or_folder_is_refused_at_discovery_naming_it(
    reachable_tmp: Path, unreadable: str
) -> None:
    folder = reachable_tmp / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "ok.txt").write_text("fine")
    (folder / "sub" / "secret.txt").write_text("hidden")
    target = folder / "sub" / "secret.txt" if unreadable == "file" else folder / "sub"
    target.chmod(0)
    try:
        completed = _discover_without_privileges(folder)
    finally:
        target.chmod(0o755 if unreadable == "folder" else 0o644)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert str(target) in completed.stdout and "Permission denied" in completed.stdout


def test_skipping_unreadable_files_and_folders_keeps_the_rest_and_names_them(reachable_tmp: Path) -> None:
    folder = reachable_tmp / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "locked").mkdir()
    (folder / "ok.txt").write_text("fine")
    (folder / "sub" / "also-ok.txt").write_text("fine too")
    (folder / "sub" / "secret.txt").write_text("hidden")
    (folder / "locked" / "inside.txt").write_text("hidden too")
    unreadable = [folder / "locked", folder / "sub" / "secret.txt"]
    for target in unreadable:
        target.chmod(0)
    try:
        completed = _discover_without_privileges(folder, DISCOVER_SKIPPING_AS_USER)
    finally:
        (folder / "locked").chmod(0o755)
        (folder / "sub" / "secret.txt").chmod(0o644)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["found"] == ["ok.txt", "sub/also-ok.txt"]
    assert result["skipped"] == [[str(path), "unreadable: Permission denied"] for path in unreadable]
    # One input.skipped warning per left-out path (structlog's default output, before the JSON line).
    for path in unreadable:
        assert sum(1 for line in lines[:-1] if "input.skipped" in line and str(path) in line) == 1


def test_skipping_everything_is_still_exit_2_naming_the_first(reachable_tmp: Path) -> None:
    folder = reachable_tmp / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("hidden")
    (folder / "a.txt").chmod(0)
    try:
        completed = _discover_without_privileges(folder, DISCOVER_SKIPPING_AS_USER)
    finally:
        (folder / "a.txt").chmod(0o644)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert "no readable input" in completed.stdout and str(folder / "a.txt") in completed.stdout


def make_socket(path: Path) -> socket.socket:
    """A listening Unix socket at `path` (a pytest tmp_path stays well under the 108-byte limit)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    return server


@pytest.mark.parametrize(("kind", "name", "said"), [("fifo", "pipe", "FIFO"), ("socket", "node", "a socket")])
def test_a_fifo_or_socket_inside_a_folder_is_skipped_with_an_event(
    tmp_path: Path, kind: str, name: str, said: str
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("words")
    with contextlib.ExitStack() as stack:
        if kind == "fifo":
            os.mkfifo(tmp_path / "in" / name)
        else:
            stack.enter_context(make_socket(tmp_path / "in" / name))
        with capture_logs() as logs:
            found = discover_inputs([tmp_path / "in"])
    assert [item.relpath for item in found] == ["a.txt"]
    skipped = [entry for entry in logs if entry["event"] == "input.skipped"]
    assert [entry["file"] for entry in skipped] == [str(tmp_path / "in" / name)]
    assert said in skipped[0]["reason"] and "not a regular file" in skipped[0]["reason"]
