"""Names and ids a run derives (docs/contracts.md formats)."""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime
from pathlib import PurePosixPath, PureWindowsPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator import naming

CONTAINER_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")


def test_run_id_has_the_documented_shape_and_sorts_by_time() -> None:
    early = naming.new_run_id(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "abcdef")
    late = naming.new_run_id(datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC), "000000")
    assert early == "20260102t030405z-abcdef"
    assert early < late
    assert naming.is_run_id(naming.new_run_id())


def test_run_id_refuses_a_bad_suffix() -> None:
    with pytest.raises(ValueError, match="run id"):
        naming.new_run_id(random_hex="xyz")


def test_the_run_containers_are_valid_container_names_of_their_own() -> None:
    run_id = naming.new_run_id()
    longest_prefix = "p" * 35  # [storage] container_prefix allows 2-35 characters
    for prefix in ("topn", longest_prefix):
        assert CONTAINER_NAME.match(naming.output_container(prefix, run_id))
        assert CONTAINER_NAME.match(naming.input_container(prefix, run_id))
    other_run = naming.new_run_id(random_hex="000000")
    assert naming.input_container("topn", run_id) != naming.input_container("topn", other_run)


def test_ids_and_blob_names() -> None:
    assert naming.job_id("r") == "topn-r"
    assert naming.task_id(7) == "t000007"
    assert naming.input_blob_name("r", "a/b c.txt") == "runs/r/a/b c.txt"
    assert naming.node_blob_name("0123456789abcdef") == "node/0123456789ab/node.pyz"
    with pytest.raises(ValueError):
        naming.task_id(-1)


@pytest.mark.parametrize(
    ("relpath", "expected"),
    [
        ("a.txt", "a_OUTPUT.txt"),
        ("x/y/a.txt", "x/y/a_OUTPUT.txt"),
        ("noext", "noext_OUTPUT"),
        ("d.v1/archive.tar.gz", "d.v1/archive.tar_OUTPUT.gz"),
        ("é #%/b c.md", "é #%/b c_OUTPUT.md"),
    ],
)
def test_output_name_keeps_the_folders(relpath: str, expected: str) -> None:
    assert naming.output_name(relpath) == expected


relpaths = st.lists(
    st.text(
        alphabet=st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="/\\"),
        min_size=1,
        max_size=12,
    ).filter(lambda part: part not in {".", ".."}),
    min_size=1,
    max_size=3,
).map("/".join)
# Names input discovery accepts: a leading drive letter (`C:...`) is refused there, so never reaches here.
relpaths = relpaths.filter(lambda relpath: re.match(r"[A-Za-z]:", relpath) is None)


def test_task_command_line_names_the_unit_manifest_and_nothing_user_named() -> None:
    command = naming.task_command_line("t000042")
    outer = shlex.split(command)
    assert outer[:2] == ["/bin/sh", "-c"] and len(outer) == 3
    inner = shlex.split(outer[2])
    script = "$AZ_BATCH_NODE_SHARED_DIR/node.pyz"
    assert inner == ["exec", "python3", script, "unit", "--manifest=unit-t000042.json"]
    assert naming.unit_manifest_file("t000042") == "unit-t000042.json"
    assert "TOPN_OUTPUT_SAS_URL" not in command


@given(relpath=relpaths, task_index=st.integers(0, 999_999))
def test_no_output_name_is_a_unit_result_or_manifest_name(relpath: str, task_index: int) -> None:
    task_id = naming.task_id(task_index)
    assert naming.output_name(relpath) != naming.unit_result_name(task_id)
    assert naming.unit_result_name(task_id).startswith("results/")
    # Manifests share the input container with the inputs, whose blobs are all under `runs/`.
    assert not naming.unit_manifest_blob(task_id).startswith("runs/")


@given(
    sizes=st.lists(st.integers(0, 40 * 1024 * 1024), max_size=400),
    slots=st.integers(1, 16),
)
def test_work_units_cover_inputs_in_order_within_limits(sizes: list[int], slots: int) -> None:
    """Units are sized by count and bytes only: no command line limits them any more."""
    units = naming.plan_work_units(sizes, slots, max_files_per_unit=64, max_unit_bytes=16 * 1024 * 1024)
    assert [index for unit in units for index in unit] == list(range(len(sizes)))
    for unit in units:
        assert 1 <= len(unit) <= 64
        assert len(unit) == 1 or sum(sizes[i] for i in unit) <= 16 * 1024 * 1024
    if len(sizes) <= slots * 4:
        assert all(len(unit) == 1 for unit in units)


def test_many_small_files_share_tasks_but_keep_every_slot_busy() -> None:
    units = naming.plan_work_units([100] * 1000, slots=4)
    # 63 files per unit (1,000 over 4 units per slot), after a ramp of smaller first units.
    assert [len(unit) for unit in units[:5]] == [3, 7, 15, 31, 63]
    assert 16 <= len(units) <= 20 and max(len(unit) for unit in units) == 63


def test_a_unit_of_many_small_files_is_one_task_whatever_their_names() -> None:
    units = naming.plan_work_units([10] * 5000, slots=1, max_files_per_unit=1000)
    assert [len(unit) for unit in units] == [62, 125, 250, 500, 1000, 1000, 1000, 1000, 63]


@given(count=st.integers(1, 100_000), slots=st.integers(1, 64))
def test_the_first_task_waits_for_few_uploads_whatever_the_number_of_files(count: int, slots: int) -> None:
    """A unit's task is added once its inputs are uploaded: the first unit is 1/16 of the others."""
    units = naming.plan_work_units([10] * count, slots)
    planned = max(len(unit) for unit in units)
    assert len(units[0]) <= max(1, planned // 16)
    assert [index for unit in units for index in unit] == list(range(count))


def test_the_node_python_may_live_under_a_batch_variable() -> None:
    venv = "$AZ_BATCH_NODE_SHARED_DIR/topn-venv/bin/python"
    command = naming.task_command_line("t000000", python=venv)
    inner = shlex.split(command)[2]
    assert inner.startswith(f'exec "{venv}" ')  # double quotes: the shell expands the variable
    assert naming.interpreter_word("python3") == "python3"
    assert naming.interpreter_word("$(rm -rf ~)") == "'$(rm -rf ~)'"  # anything else stays literal


# --- names that must never leave their folder -------------------------------------------------------

ESCAPING_NAMES = [
    "",
    "../escape.txt",
    "a/../../escape.txt",
    "a/..",
    "./a.txt",
    "a//b.txt",
    "a/",
    "/etc/passwd",
    "//server/share/x.txt",
    "a\\..\\..\\escape.txt",
    "..\\escape.txt",
    "C:escape.txt",
    "c:/Windows/escape.txt",
    "a\x00b.txt",
]


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_names_that_could_leave_their_folder_are_refused(name: str) -> None:
    with pytest.raises(naming.UnsafeNameError):
        naming.check_relative_name(name)
    with pytest.raises(naming.UnsafeNameError):
        naming.output_name(name)


@pytest.mark.parametrize(
    "name", ["a.txt", "a/b c.txt", "..a", "a..b/c..", "x/C:notes.txt", "日本/数据.txt", "#?%'\".txt", "…"]
)
def test_plain_relative_names_are_kept(name: str) -> None:
    assert naming.check_relative_name(name) == name


@given(st.text(alphabet=st.sampled_from(["a", ".", "/", "\\", ":", "C", " ", "é", "\x00"]), max_size=12))
def test_an_accepted_name_always_stays_below_its_folder(name: str) -> None:
    """Whatever the name, once accepted it resolves strictly inside the folder on POSIX and Windows."""
    try:
        naming.check_relative_name(name)
    except naming.UnsafeNameError:
        return
    for joined in (PurePosixPath("/out") / name, PureWindowsPath("D:/out") / name):
        parts = joined.parts
        assert parts[:2] in (("/", "out"), ("D:\\", "out"))
        assert ".." not in parts and len(parts) > 2
    # The derived name is accepted too, so results land inside the folder as well.
    naming.check_relative_name(naming.output_name(name))


@given(
    index=st.integers(min_value=0, max_value=999_999), generation=st.integers(min_value=0, max_value=10_000)
)
def test_task_generations_are_distinct_valid_batch_ids(index: int, generation: int) -> None:
    unit = naming.task_id(index)
    batch_id = naming.task_generation_id(unit, generation)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", batch_id)
    assert (batch_id == unit) == (generation == 0)
    assert naming.task_generation_id(unit, generation + 1) != batch_id
    with pytest.raises(ValueError, match="negative"):
        naming.task_generation_id(unit, -1)


# Legal input names of exactly 255 bytes: ASCII, 2-byte and 3-byte UTF-8, and no extension at all.
LONGEST_NAMES = [
    "a" * 251 + ".txt",
    "é" * 125 + ".text",
    "語" * 83 + "a.docx",
    "z" * 255,
    "x." + "y" * 253,  # an "extension" too long to keep whole
]


@pytest.mark.parametrize("relpath", LONGEST_NAMES + [f"deep/{name}" for name in LONGEST_NAMES])
def test_a_result_name_never_passes_the_filesystem_limit(relpath: str) -> None:
    assert len(PurePosixPath(relpath).name.encode()) <= naming.MAX_FILE_NAME_BYTES
    result = PurePosixPath(naming.output_name(relpath))
    assert len(result.name.encode()) <= naming.MAX_FILE_NAME_BYTES
    assert result.parent == PurePosixPath(relpath).parent  # folders kept
    assert "_OUTPUT" in result.name
    assert naming.output_name(relpath) == naming.output_name(relpath)  # deterministic
    source = PurePosixPath(relpath)
    if len(source.suffix) <= 5:
        assert result.name.endswith("_OUTPUT" + source.suffix)  # the extension survives
    assert result.name.encode()[:40] == source.name.encode()[:40]  # still recognisable


def test_a_short_result_name_is_unchanged() -> None:
    # 248 bytes + `_OUTPUT` = 255: still fits, so no hash.
    name = "b" * 244 + ".txt"
    assert naming.output_name(name) == "b" * 244 + "_OUTPUT.txt"


long_stems = st.text(alphabet=st.sampled_from(["a", "é", "語", "🙂", " "]), min_size=60, max_size=80)


@given(first=long_stems, second=long_stems)
def test_two_long_names_never_share_a_result_name(first: str, second: str) -> None:
    names = {first * 3 + ".txt", second * 3 + ".txt"}
    outputs = {naming.output_name(name) for name in names}
    assert len(outputs) == len(names)
    for output in outputs:
        assert len(output.encode()) <= naming.MAX_FILE_NAME_BYTES
        output.encode().decode("utf-8")  # cut on a character boundary


name_parts = st.text(
    alphabet=st.sampled_from(["a", "B", ".", " ", "-", "é", "語", "~"]), min_size=1, max_size=12
)


@given(folders=st.lists(name_parts, max_size=3), file_name=name_parts)
def test_stem_and_extension_split_as_pathlib_splits_them(folders: list[str], file_name: str) -> None:
    """output_name splits names with string operations; pathlib's `stem`/`suffix` are the reference."""
    relpath = "/".join([*folders, file_name])
    if any(part in (".", "..") for part in relpath.split("/")):
        return  # refused by check_relative_name, tested above
    source = PurePosixPath(relpath)
    assert naming.split_extension(file_name) == (source.stem, source.suffix)
    assert naming.output_name(relpath) == str(source.with_name(f"{source.stem}_OUTPUT{source.suffix}"))
