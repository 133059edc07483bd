"""Which inputs are split across tasks, and the work units that count their byte ranges (pure functions).

A file larger than `[run] split_bytes` is uploaded once and counted by several work units, each over
one nominal byte range of its blob: `ceil(size / split_bytes)` ranges of near-equal size that tile
[0, size). The node moves each boundary to just after the next ASCII whitespace byte (node/ranges.py),
so every word is counted by exactly one range and the orchestrator merges the ranges exactly
(`node.result.merge_ranges`). The plan needs only each input's position and size, so it applies to
any input whose blob can be read by range (the blob's ETag is pinned when the unit's manifest is made).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from node.manifest import split_ranges
from orchestrator import naming


@dataclass(frozen=True)
class UnitRange:
    """A work unit counting the nominal byte range [start, end) of input `index`: part `part` of `parts`."""

    index: int
    start: int
    end: int
    part: int
    parts: int

    @property
    def is_last(self) -> bool:
        return self.part == self.parts - 1


@dataclass(frozen=True)
class SplitPlan:
    """The run's work units (input indexes each) and, for the units that count a range, which range."""

    units: list[list[int]]
    ranges: dict[int, UnitRange] = field(default_factory=dict)  # by unit index


def is_split(size: int, split_bytes: int) -> bool:
    """Whether an input of `size` bytes is counted by several tasks."""
    return size > split_bytes


def nominal_ranges(size: int, split_bytes: int) -> list[tuple[int, int]]:
    """`ceil(size / split_bytes)` non-empty ranges of near-equal size, in order, tiling [0, size)."""
    if size < 1 or split_bytes < 1:
        raise ValueError("size and split_bytes must be at least 1")
    return split_ranges(size, math.ceil(size / split_bytes))


def plan_units(
    sizes: Sequence[int],
    slots: int,
    *,
    split_bytes: int,
    max_files_per_unit: int = naming.MAX_FILES_PER_UNIT,
    max_unit_bytes: int = naming.UNIT_TARGET_BYTES,
    ramp_units: int = naming.RAMP_UNITS,
) -> SplitPlan:
    """Pack the inputs into work units (`naming.plan_work_units`), a split input's ranges one unit each.

    A split input is never packed with another: its ranges follow each other in the unit list, so
    the units of a run stay in input order (a range unit is numbered right after its predecessor).
    """
    # A size past the byte limit makes the packer give a split input a unit of its own.
    packed_sizes = [max(size, max_unit_bytes + 1) if is_split(size, split_bytes) else size for size in sizes]
    packed = naming.plan_work_units(
        packed_sizes,
        slots,
        max_files_per_unit=max_files_per_unit,
        max_unit_bytes=max_unit_bytes,
        ramp_units=ramp_units,
    )
    units: list[list[int]] = []
    ranges: dict[int, UnitRange] = {}
    for unit in packed:
        if len(unit) == 1 and is_split(sizes[unit[0]], split_bytes):
            index = unit[0]
            parts = nominal_ranges(sizes[index], split_bytes)
            for part, (start, end) in enumerate(parts):
                ranges[len(units)] = UnitRange(index, start, end, part, len(parts))
                units.append([index])
        else:
            units.append(unit)
    return SplitPlan(units, ranges)


def ranges_of_input(ranges: Mapping[int, UnitRange], index: int) -> list[int]:
    """The unit indexes counting input `index`'s ranges, in file order (empty for an unsplit input)."""
    return sorted(
        (unit for unit, part in ranges.items() if part.index == index), key=lambda unit: ranges[unit].part
    )


def units_staged_with(ranges: Mapping[int, UnitRange], unit_index: int) -> list[int]:
    """The units ready once `unit_index`'s inputs are staged (a split input's first range brings them all)."""
    part = ranges.get(unit_index)
    if part is None or part.part != 0:
        return [unit_index]
    return ranges_of_input(ranges, part.index)


def later_range_units(ranges: Mapping[int, UnitRange]) -> frozenset[int]:
    """Units counting a split input's second or later range: staged along with its first (above)."""
    return frozenset(unit for unit, part in ranges.items() if part.part > 0)


def ranges_from_journal(
    task_ids: Sequence[str], recorded: Mapping[str, tuple[int, int, int]]
) -> dict[int, UnitRange]:
    """A resumed run's ranges by unit index, from its task ids and each range unit's (index, start, end)."""
    by_input: dict[int, list[tuple[int, int, str]]] = {}
    for task_id, (index, start, end) in recorded.items():
        by_input.setdefault(index, []).append((start, end, task_id))
    unit_of = {task_id: unit for unit, task_id in enumerate(task_ids)}
    ranges: dict[int, UnitRange] = {}
    for index, parts in by_input.items():
        parts.sort()
        for part, (start, end, task_id) in enumerate(parts):
            ranges[unit_of[task_id]] = UnitRange(index, start, end, part, len(parts))
    return ranges
