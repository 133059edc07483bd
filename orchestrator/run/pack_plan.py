"""Which of a unit's local inputs go up together as its pack blob, and where each lies in it (pure).

A unit's local inputs of at most `[run] pack_max_bytes` each are concatenated, in unit order, into
one blob (naming.unit_pack_blob): one upload per unit instead of one per file, and one streamed read
on the node. Bigger inputs, inputs read where they live and split inputs (a range unit) keep a blob
of their own; a unit with fewer than two small inputs has no pack (one file is one upload either way).
The extents are laid out at upload time (azure/packing.py), from the bytes really read.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from orchestrator import naming

# A pack needs at least this many inputs: a pack of one would save nothing and change the blob's name.
MIN_PACKED_INPUTS = 2


@dataclass(frozen=True)
class Pack:
    """A unit's pack: its blob and the inputs (run indexes, in unit order) it holds."""

    unit: int
    blob_name: str
    inputs: tuple[int, ...]


def plan_packs(
    units: Sequence[Sequence[int]],
    task_ids: Sequence[str],
    packable: Callable[[int], bool],
    pack_max_bytes: int,
    sizes: Sequence[int],
    range_units: Collection[int] = (),
) -> list[Pack]:
    """The packs of the units, in unit order: per unit, its inputs for which `packable` holds (local,
    still to upload) of at most `pack_max_bytes` each, when there are at least two. 0 turns packing off."""
    if pack_max_bytes <= 0:
        return []
    packs: list[Pack] = []
    for unit_index, unit in enumerate(units):
        if unit_index in range_units:
            continue
        members = tuple(index for index in unit if packable(index) and sizes[index] <= pack_max_bytes)
        if len(members) >= MIN_PACKED_INPUTS:
            packs.append(Pack(unit_index, naming.unit_pack_blob(task_ids[unit_index]), members))
    return packs
