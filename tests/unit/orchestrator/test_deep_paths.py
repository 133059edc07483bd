"""Every blob name a run derives stays within Blob Storage's limits, however deep the input's folders.

Blob Storage refuses (400) a blob name of more than 1,024 characters or of more than 254 path
segments (Microsoft's "Naming and Referencing Containers, Blobs, and Metadata"). Azurite enforces
neither, so no end-to-end run can catch a name over them: the names are checked here, on the
functions that derive them, for every relpath input discovery accepts (`inputs.check_relpath`).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator import naming
from orchestrator.errors import InputError
from orchestrator.inputs import check_relpath, discover_inputs
from orchestrator.results import check_result_paths_fit

RUN_ID = "20261207t020304z-abcdef"
BLOB_SEGMENTS = 254  # the service's limit, spelled out here rather than read from the code under test
BLOB_CHARS = 1024
FILE_NAME_BYTES = 255


def accepted(relpath: str) -> bool:
    """Whether input discovery accepts `relpath` as an input's name."""
    try:
        check_relpath(relpath, Path(relpath))
    except InputError:
        return False
    return True


def assert_usable_blob_name(name: str) -> None:
    assert len(name) <= BLOB_CHARS, (len(name), name[:80])
    assert len(name.split("/")) <= BLOB_SEGMENTS, (len(name.split("/")), name[:80])


def derived_names(relpath: str) -> list[str]:
    """The blob names a run derives from one input: its input blob and its `_OUTPUT` blob."""
    return [naming.input_blob_name(RUN_ID, relpath), naming.output_name(relpath)]


def deep(levels: int, file_name: str = "x.txt", folder: str = "a") -> str:
    return "/".join([folder] * levels + [file_name])


# Letters of 1 to 4 UTF-8 bytes, a space, and the characters the shortened names themselves use.
ALPHABET = st.sampled_from(["a", "B", "é", "語", "🙂", " ", "-", "~", "."])
folder_names = st.text(alphabet=ALPHABET, min_size=1, max_size=3).filter(lambda part: not part.endswith("."))
file_names = st.text(alphabet=ALPHABET, min_size=1, max_size=90).filter(
    lambda name: not name.endswith(".") and len(name.encode("utf-8")) <= FILE_NAME_BYTES
)
shallow_relpaths = st.builds(
    lambda folders, name: "/".join([*folders, name]), st.lists(folder_names, max_size=4), file_names
)
# Deep: one-character folders, as many as 960 characters allow (up to 479 levels).
deep_relpaths = st.builds(
    lambda folders, name: "/".join([*folders, name]),
    st.lists(st.sampled_from(["a", "é", "語", "z"]), min_size=200, max_size=478),
    file_names,
)
legal_relpaths = st.one_of(shallow_relpaths, deep_relpaths).filter(accepted)


@given(relpath=legal_relpaths)
def test_every_derived_blob_name_fits_blob_storage(relpath: str) -> None:
    for name in derived_names(relpath):
        assert_usable_blob_name(name)
    output = naming.output_name(relpath)
    naming.check_relative_name(output)  # a result file below the results folder, too
    assert all(len(part.encode("utf-8")) <= FILE_NAME_BYTES for part in output.split("/"))
    assert "_OUTPUT" in output.rsplit("/", 1)[-1]
    assert derived_names(relpath) == derived_names(relpath)  # deterministic


# Siblings below the same 260 folders: what tells them apart is past what a blob name can keep.
COMMON = "/".join(["d"] * 260)
tails = st.lists(folder_names, min_size=0, max_size=3).map("/".join)


@given(
    tails=st.lists(tails, min_size=2, max_size=6, unique=True),
    name=file_names,
    prefix=st.sampled_from(["", COMMON, "/".join(["d"] * 251), "/".join(["d"] * 253)]),
)
def test_distinct_inputs_get_distinct_blob_names(tails: list[str], name: str, prefix: str) -> None:
    relpaths = {"/".join(part for part in (prefix, tail, name) if part) for tail in tails}
    relpaths = {relpath for relpath in relpaths if accepted(relpath)}
    outputs = {naming.output_name(relpath) for relpath in relpaths}
    input_blobs = {naming.input_blob_name(RUN_ID, relpath) for relpath in relpaths}
    assert len(outputs) == len(input_blobs) == len(relpaths)


@pytest.mark.parametrize("levels", [254, 300, 470])
def test_a_tree_deeper_than_a_blob_name_allows_gets_a_shortened_result_name(levels: int) -> None:
    relpath = deep(levels, "report.final.txt")
    assert accepted(relpath)
    output = naming.output_name(relpath)
    segments = output.split("/")
    assert len(segments) == BLOB_SEGMENTS
    assert segments[:-1] == relpath.split("/")[: BLOB_SEGMENTS - 1]  # the first folders are kept
    # The extension and the start of the name survive, with a hash between them and `_OUTPUT`.
    assert segments[-1].startswith("report.final~") and segments[-1].endswith("_OUTPUT.txt")
    assert len(segments[-1]) == len("report.final~") + 12 + len("_OUTPUT.txt")


def test_the_deepest_names_that_fit_are_left_as_they_are() -> None:
    # 253 folders + the file: 254 segments, the most a blob name may have.
    relpath = deep(253)
    assert naming.output_name(relpath) == deep(253, "x_OUTPUT.txt")
    # Below `runs/<run_id>/` an input blob has two segments fewer to spare.
    fitting = deep(251)
    assert naming.input_blob_name(RUN_ID, fitting) == f"runs/{RUN_ID}/{fitting}"
    too_deep = naming.input_blob_name(RUN_ID, deep(252))
    assert len(too_deep.split("/")) == BLOB_SEGMENTS and too_deep.endswith(".txt") and "~" in too_deep


def test_a_deep_local_tree_is_an_input_like_any_other(tmp_path: Path) -> None:
    """Discovery accepts it and its result path fits: nothing refuses it before the run."""
    relpath = deep(300, "leaf.txt")
    path = tmp_path / "in" / relpath
    path.parent.mkdir(parents=True)
    path.write_text("deep words\n", encoding="utf-8")
    (found,) = discover_inputs([tmp_path / "in"])
    assert found.relpath == relpath
    check_result_paths_fit(tmp_path / "out", [found.relpath])
    assert len(PurePosixPath(naming.output_name(found.relpath)).parts) == BLOB_SEGMENTS
