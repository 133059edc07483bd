"""Which inputs are split across tasks and the byte ranges their units count (run/split_plan.py)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.manifest import parse_manifest
from orchestrator.azure.staging import StagedInput
from orchestrator.run.preparing import UnitTracker
from orchestrator.run.split_plan import (
    UnitRange,
    later_range_units,
    nominal_ranges,
    plan_units,
    ranges_from_journal,
    ranges_of_input,
    units_staged_with,
)
from orchestrator.run.units import UnitEntry, build_manifest

MIB = 1 << 20


@given(split_bytes=st.integers(1, 1 << 32), parts=st.integers(1, 300), data=st.data())
def test_nominal_ranges_tile_the_blob_in_ceil_size_over_split_bytes_non_empty_parts(
    split_bytes: int, parts: int, data: st.DataObject
) -> None:
    size = split_bytes * (parts - 1) + data.draw(st.integers(1, split_bytes))
    ranges = nominal_ranges(size, split_bytes)
    assert len(ranges) == math.ceil(size / split_bytes) == parts
    assert ranges[0][0] == 0 and ranges[-1][1] == size
    assert all(start < end for start, end in ranges)
    assert all(left[1] == right[0] for left, right in itertools.pairwise(ranges))
    # About split_bytes each: none larger, and the sizes differ by at most one byte.
    lengths = [end - start for start, end in ranges]
    assert max(lengths) <= split_bytes and max(lengths) - min(lengths) <= 1


def test_a_2_gib_file_at_the_default_split_is_8_ranges_of_256_mib() -> None:
    assert nominal_ranges(2048 * MIB, 256 * MIB) == [
        (part * 256 * MIB, (part + 1) * 256 * MIB) for part in range(8)
    ]
    assert nominal_ranges(2048 * MIB + 1, 256 * MIB)[-1][1] == 2048 * MIB + 1  # 9 ranges


@pytest.mark.parametrize("size", [0, -1])
def test_an_empty_blob_has_no_ranges_to_plan(size: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        nominal_ranges(size, 10)


@given(
    sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=60),
    slots=st.integers(1, 8),
    split_bytes=st.integers(1, 3000),
    max_files=st.integers(1, 10),
)
def test_plan_units_counts_each_byte_of_each_input_once_in_input_order(
    sizes: list[int], slots: int, split_bytes: int, max_files: int
) -> None:
    plan = plan_units(
        sizes, slots, split_bytes=split_bytes, max_files_per_unit=max_files, max_unit_bytes=4000
    )
    # Every input in order; a split input once per range, in consecutive units, alone in each.
    flattened = [index for unit in plan.units for index in unit]
    assert sorted(set(flattened)) == list(range(len(sizes))) and flattened == sorted(flattened)
    for index, size in enumerate(sizes):
        units = ranges_of_input(plan.ranges, index)
        if size <= split_bytes:
            assert units == [] and flattened.count(index) == 1
            continue
        assert units == list(range(units[0], units[0] + len(units)))
        assert all(plan.units[unit] == [index] for unit in units)
        parts = [plan.ranges[unit] for unit in units]
        assert [(part.start, part.end) for part in parts] == nominal_ranges(size, split_bytes)
        assert [part.part for part in parts] == list(range(len(parts)))
        assert {part.parts for part in parts} == {len(parts)} and parts[-1].is_last


def test_a_split_input_is_never_packed_with_small_ones() -> None:
    plan = plan_units([10, 10, 100, 10], 1, split_bytes=40, max_files_per_unit=10, max_unit_bytes=1000)
    assert plan.units == [[0], [1], [2], [2], [2], [3]]  # one unit per file here, big.txt's 3 ranges
    assert plan.ranges == {
        2: UnitRange(2, 0, 33, 0, 3),
        3: UnitRange(2, 33, 66, 1, 3),
        4: UnitRange(2, 66, 100, 2, 3),
    }
    assert units_staged_with(plan.ranges, 2) == [2, 3, 4]  # the first range brings the others
    assert units_staged_with(plan.ranges, 0) == [0]
    assert later_range_units(plan.ranges) == {3, 4}


def test_a_resumed_run_gets_its_ranges_back_from_the_journal() -> None:
    plan = plan_units([10, 100], 1, split_bytes=40, max_files_per_unit=10, max_unit_bytes=1000)
    task_ids = [f"t{unit:06d}" for unit in range(len(plan.units))]
    recorded = {task_ids[unit]: (part.index, part.start, part.end) for unit, part in plan.ranges.items()}
    assert ranges_from_journal(task_ids, dict(reversed(list(recorded.items())))) == plan.ranges


def staged(index: int, relpath: str) -> StagedInput:
    return StagedInput(index, relpath, f"runs/r/{relpath}", "00", 1, False)


def test_the_tracker_reports_a_split_inputs_first_range_only() -> None:
    """The feeder adds the other ranges with it (units_staged_with): none is reported twice."""
    plan = plan_units([10, 100, 10], 1, split_bytes=40, max_files_per_unit=1, max_unit_bytes=1000)
    assert plan.units == [[0], [1], [1], [1], [2]]
    tracker = UnitTracker(["a", "big", "c"], plan.units, {}, later_range_units(plan.ranges))
    assert tracker.already_staged() == []
    finished = tracker.settle(staged(1, "big"))
    assert finished is not None and finished[0] == 1
    assert tracker.settle(staged(2, "c")) == (4, [staged(2, "c")])
    assert tracker.settle(staged(0, "a")) == (0, [staged(0, "a")])
    kept = UnitTracker(
        ["a", "big", "c"], plan.units, {"big": staged(1, "big")}, later_range_units(plan.ranges)
    )
    assert [unit for unit, _ in kept.already_staged()] == [1]


def test_a_range_units_manifest_names_its_range_and_etag_and_no_output() -> None:
    data = build_manifest(
        "t000003",
        tokenizer="words",
        top=10,
        source_url="https://account.blob.core.windows.net/topn-in-run?sig=x",
        entries=[UnitEntry("logs/big.log", "runs/r/logs/big.log", 300, (100, 200), '"0x8DD1"')],
    )
    (item,) = parse_manifest(data).inputs
    assert (item.byte_range, item.etag, item.output_name, item.size) == ((100, 200), '"0x8DD1"', None, 300)
    whole = build_manifest(
        "t000000",
        tokenizer="words",
        top=10,
        source_url="https://account.blob.core.windows.net/topn-in-run?sig=x",
        entries=[UnitEntry("a.txt", "runs/r/a.txt", 3)],
    )
    (item,) = parse_manifest(whole).inputs
    assert (item.byte_range, item.etag, item.output_name) == (None, None, "a_OUTPUT.txt")
