"""A unit is ready once all its inputs are staged, whatever order uploads finish in (issue 13, point 4)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from orchestrator import naming
from orchestrator.azure.staging import StagedInput
from orchestrator.run.preparing import UnitTracker


def staged(relpath: str, unreadable: str | None = None) -> StagedInput:
    # The index staging gives is its own (of the inputs it was given); the tracker renumbers.
    return StagedInput(99, relpath, f"runs/r/{relpath}", "0" * 32, 1, False, unreadable)


@given(
    sizes=st.lists(st.integers(0, 100), min_size=1, max_size=60),
    slots=st.integers(1, 4),
    kept_share=st.floats(0, 1),
    seed=st.integers(0, 2**32),
)
def test_each_unit_is_ready_exactly_once_with_all_its_inputs_in_unit_order(
    sizes: list[int], slots: int, kept_share: float, seed: int
) -> None:
    chooser = random.Random(seed)
    relpaths = [f"f{index:03d}.txt" for index in range(len(sizes))]
    work_units = naming.plan_work_units(sizes, slots, max_files_per_unit=7)
    kept = {relpath: staged(relpath) for relpath in relpaths if chooser.random() < kept_share}
    tracker = UnitTracker(relpaths, work_units, kept)
    ready = dict(tracker.already_staged())
    assert all(all(relpaths[index] in kept for index in work_units[unit]) for unit in ready)
    pending = [relpath for relpath in relpaths if relpath not in kept]
    chooser.shuffle(pending)  # uploads finish in any order
    for relpath in pending:
        finished = tracker.settle(staged(relpath, unreadable="gone" if chooser.random() < 0.1 else None))
        if finished is not None:
            unit, items = finished
            assert unit not in ready
            ready[unit] = items
    assert sorted(ready) == list(range(len(work_units)))
    for unit, items in ready.items():
        assert [item.index for item in items] == work_units[unit]
        assert [item.relpath for item in items] == [relpaths[index] for index in work_units[unit]]


def test_a_unit_is_not_ready_while_one_input_is_still_uploading() -> None:
    tracker = UnitTracker(["a", "b", "c"], [[0, 1], [2]], {})
    assert tracker.already_staged() == []
    assert tracker.settle(staged("b")) is None
    finished = tracker.settle(staged("c"))
    assert finished is not None and finished[0] == 1
    finished = tracker.settle(staged("a", unreadable="vanished"))
    assert finished is not None and finished[0] == 0
    assert [item.unreadable for item in finished[1]] == ["vanished", None]
