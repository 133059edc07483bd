"""Blob inputs named and planned page by page (run/listing.py, blobinputs.InputNamer): pure rules.

Whatever pages the listing cuts the blobs into, and wherever a resume picks the listing up again,
the run's inputs, their names and its work units cover every blob once, named as one list would be.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator import blobinputs
from orchestrator.errors import InputError
from orchestrator.inputs import BlobSource, InputFile
from orchestrator.run.listing import plan_page
from orchestrator.run.split_plan import nominal_ranges


def blob(container: str, name: str, relpath: str, size: int = 10) -> InputFile:
    source = BlobSource(container, name, '"0x1"')
    return InputFile(Path(source.address), relpath, size, blob=source)


def cut(items: list[InputFile], cuts: list[int]) -> list[list[InputFile]]:
    """`items` in pages, cut at the given positions (any, repeated, out of order: empty pages too)."""
    points = sorted({0, len(items), *(min(point, len(items)) for point in cuts)})
    pages = [items[start:end] for start, end in itertools.pairwise(points)]
    return [*pages, []]  # a listing may end with an empty page (folder markers only)


def named(result: list[InputFile]) -> list[tuple[str, str, str]]:
    return [(item.relpath, item.blob.container, item.blob.name) for item in result if item.blob is not None]


def test_a_clash_becomes_stem_n_with_the_smallest_free_n_and_a_blob_seen_again_is_left_out() -> None:
    namer = blobinputs.InputNamer(["c.txt", "c~2.txt"])  # local inputs keep their names
    first = namer.name([blob("logs", "2026/c.txt", "c.txt"), blob("logs", "2026/a/b.txt", "a/b.txt")])
    second = namer.name(
        [
            blob("other", "c.txt", "c.txt"),
            blob("logs", "2026/a/b.txt", "a/b.txt"),  # the same blob through a second prefix
            blob("other", "c~3.txt", "c~3.txt"),  # a real name a rename took already
            blob("other", "noext", "noext"),
            blob("more", "noext", "noext"),
        ]
    )
    assert [item.relpath for item in first] == ["c~3.txt", "a/b.txt"]
    assert [item.relpath for item in second] == ["c~4.txt", "c~3~2.txt", "noext", "noext~2"]
    assert [item.shown for item in second] == [
        "az://other/c.txt",
        "az://other/c~3.txt",
        "az://other/noext",
        "az://more/noext",
    ]


def test_a_listed_name_that_cannot_be_a_result_name_is_refused() -> None:
    with pytest.raises(InputError, match="backslash"):
        blobinputs.InputNamer().name([blob("logs", "a\\b.txt", "a\\b.txt")])


NAMES = st.sampled_from(["a.txt", "a~2.txt", "a~3.txt", "b/a.txt", "b", "b~2", "c.log"])
BLOBS = st.lists(st.tuples(st.sampled_from(["one", "two"]), NAMES), max_size=30)


@given(
    local=st.lists(NAMES, unique=True, max_size=3),
    blobs=BLOBS,
    cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=6),
    resume_at=st.integers(min_value=0, max_value=8),
)
def test_pages_in_any_split_and_a_resume_anywhere_give_the_names_of_one_list(
    local: list[str], blobs: list[tuple[str, str]], cuts: list[int], resume_at: int
) -> None:
    items = [blob(container, f"p/{name}", name) for container, name in blobs]
    whole = named(blobinputs.InputNamer(local).name(items))

    pages = cut(items, cuts)
    namer = blobinputs.InputNamer(local)
    paged: list[InputFile] = []
    for number, page in enumerate(pages):
        if number == resume_at:  # a resumed run: a new namer from what the journal holds
            namer = blobinputs.InputNamer(
                [*local, *(item.relpath for item in paged)],
                [(item.blob.container, item.blob.name) for item in paged if item.blob is not None],
            )
        paged.extend(namer.name(page))
    assert named(paged) == whole
    # Every distinct blob once, every name distinct and distinct from the local ones.
    assert len(whole) == len(set(blobs))
    relpaths = [relpath for relpath, _, _ in whole]
    assert len(set(relpaths)) == len(relpaths) and not set(relpaths) & set(local)
    # A blob keeps its own name when nothing before it had that name.
    for position, (relpath, _, name) in enumerate(whole):
        earlier = set(local) | {taken for taken, _, _ in whole[:position]}
        if name.removeprefix("p/") not in earlier:
            assert relpath == name.removeprefix("p/")


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=5),
    slots=st.integers(min_value=1, max_value=4),
    max_files=st.integers(min_value=1, max_value=6),
)
def test_pages_planned_one_by_one_give_units_that_cover_every_input_once_within_its_page(
    sizes: list[int], cuts: list[int], slots: int, max_files: int
) -> None:
    split_bytes, max_bytes = 30, 40
    points = sorted({0, len(sizes), *(min(point, len(sizes)) for point in cuts)})
    units: list[list[int]] = []
    ranges = {}
    for start, end in itertools.pairwise(points):
        plan = plan_page(
            sizes[start:end],
            slots,
            first_input=start,
            first_unit=len(units),
            split_bytes=split_bytes,
            max_files_per_unit=max_files,
            max_unit_bytes=max_bytes,
        )
        # Units and ranges are numbered after the run's, inputs after the run's, never past the page.
        assert all(len(units) <= unit < len(units) + len(plan.units) for unit in plan.ranges)
        assert all(start <= index < end for unit in plan.units for index in unit)
        units.extend(plan.units)
        ranges.update(plan.ranges)
    covered = sorted(
        index for unit_index, unit in enumerate(units) for index in unit if unit_index not in ranges
    )
    split = [index for index, size in enumerate(sizes) if size > split_bytes]
    assert covered == [index for index in range(len(sizes)) if index not in split]
    for unit_index, unit in enumerate(units):
        if unit_index in ranges:
            continue
        assert len(unit) <= max_files
        assert len(unit) == 1 or sum(sizes[index] for index in unit) <= max_bytes
    for index in split:  # a split input's ranges: in order, one unit each, tiling the input
        parts = sorted(
            (part.part, part.start, part.end, unit) for unit, part in ranges.items() if part.index == index
        )
        assert [(start, end) for _, start, end, _ in parts] == nominal_ranges(sizes[index], split_bytes)
        assert all(units[unit] == [index] for _, _, _, unit in parts)
        assert [unit for *_, unit in parts] == list(range(parts[0][3], parts[0][3] + len(parts)))
