"""Packs of a unit's small local inputs: the plan (pure), what a resume keeps, and the journal's extents."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from orchestrator import naming
from orchestrator.azure.staging import StagedInput
from orchestrator.journal import Journal, UploadRecord
from orchestrator.run.pack_plan import MIN_PACKED_INPUTS, plan_packs
from orchestrator.run.preparing import keep_whole_packs
from tests.unit.orchestrator.test_journal import RUN, make_inputs, md5_of


@st.composite
def unit_layouts(draw: st.DrawFn) -> tuple[list[list[int]], list[int]]:
    """Units over consecutive inputs, each input with a size."""
    sizes = draw(st.lists(st.integers(0, 100), min_size=1, max_size=40))
    cuts = sorted(draw(st.sets(st.integers(1, len(sizes) - 1), max_size=10))) if len(sizes) > 1 else []
    bounds = [0, *cuts, len(sizes)]
    return [list(range(bounds[at], bounds[at + 1])) for at in range(len(bounds) - 1)], sizes


@given(
    unit_layouts(),
    st.integers(0, 120),
    st.sets(st.integers(0, 39)),
    st.sets(st.integers(0, 10)),
)
def test_a_pack_holds_a_units_small_packable_inputs_in_unit_order_when_there_are_two_or_more(
    layout: tuple[list[list[int]], list[int]], limit: int, not_packable: set[int], range_units: set[int]
) -> None:
    units, sizes = layout
    task_ids = [naming.task_id(index) for index in range(len(units))]
    packs = plan_packs(units, task_ids, lambda index: index not in not_packable, limit, sizes, range_units)
    by_unit = {pack.unit: pack for pack in packs}
    assert len(by_unit) == len(packs)  # at most one pack per unit
    for unit_index, unit in enumerate(units):
        wanted = [index for index in unit if index not in not_packable and sizes[index] <= limit]
        if limit == 0 or unit_index in range_units or len(wanted) < MIN_PACKED_INPUTS:
            assert unit_index not in by_unit
        else:
            pack = by_unit[unit_index]
            assert list(pack.inputs) == wanted
            assert pack.blob_name == naming.unit_pack_blob(task_ids[unit_index])
    assert [pack.unit for pack in packs] == sorted(by_unit)


def test_a_pack_name_is_beside_the_manifests_and_never_an_input_blobs() -> None:
    assert naming.unit_pack_blob("t000007") == "units/t000007.pack"
    assert not naming.unit_pack_blob("t000007").startswith(naming.run_input_prefix("r"))


def _staged(relpath: str, blob_name: str, extent: tuple[int, int] | None) -> StagedInput:
    return StagedInput(0, relpath, blob_name, md5_of(1), 5, True, extent=extent)


def test_a_resume_keeps_a_pack_only_while_every_input_in_it_is_kept() -> None:
    uploads = {
        "a": UploadRecord(md5_of(1), "units/t0.pack", (0, 5)),
        "b": UploadRecord(md5_of(1), "units/t0.pack", (5, 5)),
        "c": UploadRecord(md5_of(1), "units/t1.pack", (0, 5)),
        "d": UploadRecord(md5_of(1), "units/t1.pack", (5, 5)),
        "e": UploadRecord(md5_of(1), "runs/r/e"),
    }
    kept = {
        "a": _staged("a", "units/t0.pack", (0, 5)),
        "b": _staged("b", "units/t0.pack", (5, 5)),
        "c": _staged("c", "units/t1.pack", (0, 5)),  # d changed: t1 is packed again, whole
        "e": _staged("e", "runs/r/e", None),
    }
    assert sorted(keep_whole_packs(kept, uploads)) == ["a", "b", "e"]


async def test_the_journal_keeps_a_packed_inputs_extent_and_an_unpacked_upload_clears_it(
    tmp_path: Path,
) -> None:
    inputs = make_inputs(3)
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, inputs)
        await journal.record_uploads(
            RUN,
            [
                (inputs[0].relpath, md5_of(1), "units/t000000.pack"),
                (inputs[1].relpath, md5_of(2), "units/t000000.pack"),
            ],
            {inputs[0].relpath: (0, 10), inputs[1].relpath: (10, 0)},
        )
        await journal.record_upload(RUN, inputs[2].relpath, md5_of(3), inputs[2].blob_name)
        record = await journal.load_run(RUN)
        assert record is not None
        assert record.uploads == {
            inputs[0].relpath: UploadRecord(md5_of(1), "units/t000000.pack", (0, 10)),
            inputs[1].relpath: UploadRecord(md5_of(2), "units/t000000.pack", (10, 0)),
            inputs[2].relpath: UploadRecord(md5_of(3), inputs[2].blob_name),
        }
        # Uploaded again as a blob of its own (packing turned off, say): the extent goes.
        await journal.record_upload(RUN, inputs[0].relpath, md5_of(1), inputs[0].blob_name)
        record = await journal.load_run(RUN)
    assert record is not None
    assert record.uploads[inputs[0].relpath] == UploadRecord(md5_of(1), inputs[0].blob_name)
