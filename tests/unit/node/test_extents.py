"""node/extents.py: one streamed read of a pack blob split into its inputs' exact extents."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.extents import PackSplitter


def _read(blob: bytes, extents: list[tuple[int, int]], chunk_bytes: int) -> tuple[dict[int, bytes], int]:
    """Each extent's bytes as the splitter hands them over a read of the span in chunks; the most
    bytes any one feed handed out."""
    splitter = PackSplitter(extents)
    got: dict[int, bytes] = {}
    done: set[int] = set()
    most = 0
    span = blob[splitter.start : splitter.end]
    for start in range(0, len(span), chunk_bytes):
        pieces = splitter.feed(span[start : start + chunk_bytes])
        most = max(most, sum(len(piece.data) for piece in pieces))
        for piece in pieces:
            assert piece.extent not in done, "a piece after its extent was complete"
            got[piece.extent] = got.get(piece.extent, b"") + piece.data
            if piece.done:
                done.add(piece.extent)
    for piece in splitter.feed(b""):
        got[piece.extent] = got.get(piece.extent, b"") + piece.data
        assert piece.done
        done.add(piece.extent)
    assert splitter.unfinished() == []
    assert done == set(range(len(extents)))
    return got, most


@st.composite
def packs(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int]]]:
    """Files laid end to end (as topn packs them), maybe after some leading bytes; extents shuffled."""
    files = draw(st.lists(st.binary(max_size=40), max_size=12))
    offset = draw(st.integers(0, 10))
    blob = bytes(offset)
    extents = []
    for data in files:
        extents.append((len(blob), len(data)))
        blob += data
    return blob, draw(st.permutations(extents))


@given(packs(), st.integers(1, 64))
def test_every_extent_gets_exactly_its_bytes_whatever_the_chunk_size(
    pack: tuple[bytes, list[tuple[int, int]]], chunk_bytes: int
) -> None:
    blob, extents = pack
    got, most = _read(blob, extents, chunk_bytes)
    assert [got.get(index, b"") for index in range(len(extents))] == [
        blob[offset : offset + length] for offset, length in extents
    ]
    # Memory: one feed hands out no more than the chunk it was given (extents do not overlap).
    assert most <= chunk_bytes


def test_a_pack_of_many_extents_read_in_small_chunks_holds_only_a_chunk_at_a_time() -> None:
    files = [f"file {index} word{index % 7}\n".encode() * (index % 5) for index in range(2000)]
    blob = b"".join(files)
    extents, offset = [], 0
    for data in files:
        extents.append((offset, len(data)))
        offset += len(data)
    got, most = _read(blob, extents, 7)
    assert most <= 7
    assert [got.get(index, b"") for index in range(len(files))] == files


def test_overlapping_extents_each_get_their_bytes() -> None:
    blob = b"abcdefghij"
    got, _ = _read(blob, [(2, 5), (0, 10), (4, 0), (9, 1)], 3)
    assert got == {0: b"cdefg", 1: blob, 2: b"", 3: b"j"}


def test_a_stream_shorter_than_the_pack_leaves_the_extents_it_did_not_reach_unfinished() -> None:
    splitter = PackSplitter([(0, 4), (4, 4), (8, 4)])
    pieces = splitter.feed(b"abcdef")
    assert [(piece.extent, piece.data, piece.done) for piece in pieces] == [
        (0, b"abcd", True),
        (1, b"ef", False),
    ]
    assert splitter.unfinished() == [1, 2]


def test_only_empty_extents_need_no_read_at_all() -> None:
    splitter = PackSplitter([(0, 0), (0, 0)])
    assert splitter.end == splitter.start == 0
    assert [(piece.extent, piece.done) for piece in splitter.feed(b"")] == [(0, True), (1, True)]


def test_a_negative_extent_is_refused() -> None:
    with pytest.raises(ValueError, match="bad extent"):
        PackSplitter([(0, -1)])
