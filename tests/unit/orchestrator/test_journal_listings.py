"""The journal's record of blob prefixes listed page by page (schema 13, `input_listings`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.journal import Journal, JournalError, JournalInput, JournalListing, JournalRange
from orchestrator.run.resume import unsubmitted_task_ids

RUN = "20261206t180000z-pages1"


def blob_inputs(first: int, count: int, task_of: int = 1) -> list[JournalInput]:
    """Blob inputs `first`.. of container `logs`, `task_of` to a unit (unit numbers follow the index)."""
    return [
        JournalInput(
            index=index,
            relpath=f"f{index:03d}.txt",
            path=f"az://logs/day/f{index:03d}.txt",
            size_bytes=10 + index,
            mtime_ns=0,
            md5_hex=None,
            blob_name=f"az://logs/day/f{index:03d}.txt",
            task_id=f"t{index // task_of:06d}",
            etag='"0x8D1"',
        )
        for index in range(first, first + count)
    ]


def listing(marker: str | None, *, complete: bool = False) -> JournalListing:
    return JournalListing(
        position=0,
        argument="az://logs/day/",
        container="logs",
        prefix="day/",
        marker=marker,
        complete=complete,
    )


async def test_pages_and_their_markers_read_back_in_order_and_survive_reopening(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, blob_inputs(0, 2), listings=[listing("m1")])
        await journal.record_listed_page(RUN, blob_inputs(2, 2), [], listing("m2"))
        # The last page: a split input's two ranges come with it, and the listing is complete.
        ranges = [JournalRange("t000004", 4, 0, 5), JournalRange("t000005", 4, 5, 14)]
        await journal.record_listed_page(RUN, blob_inputs(4, 1), ranges, listing(None, complete=True))
    async with await Journal.open(tmp_path) as journal:
        record = await journal.load_run(RUN)
    assert record is not None
    assert [item.index for item in record.inputs] == [0, 1, 2, 3, 4]
    assert record.listings == (listing(None, complete=True),)
    assert unsubmitted_task_ids(record) == tuple(f"t{number:06d}" for number in range(6))
    assert record.inputs_by_task["t000005"] == (record.inputs[4],)


async def test_a_page_recorded_twice_is_refused_and_leaves_the_marker_where_it_was(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, blob_inputs(0, 2), listings=[listing("m1")])
        await journal.record_listed_page(RUN, blob_inputs(2, 2), [], listing("m2"))
        with pytest.raises(JournalError):
            await journal.record_listed_page(RUN, blob_inputs(2, 2), [], listing("m3"))
        record = await journal.load_run(RUN)
    assert record is not None
    assert len(record.inputs) == 4 and record.listings == (listing("m2"),)


async def test_a_run_without_blob_prefixes_has_no_listing(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run(RUN, {}, blob_inputs(0, 1))
        record = await journal.load_run(RUN)
    assert record is not None and record.listings == ()
