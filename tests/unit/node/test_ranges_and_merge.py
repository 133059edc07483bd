"""A file counted over nominal byte ranges (as separate tasks would), merged, equals the one-process count."""

from __future__ import annotations

import codecs
import dataclasses
import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.counting import FileCounts, count_file
from node.manifest import split_ranges
from node.ranges import RangeCounter, RangeCounts
from node.result import STATUS_OK, FileResult, MergedFile, MergeError, merge_ranges, render_output
from node.tokenizers import TOKENIZERS, Tokenizer
from tests.unit.node.test_counting import reference


def count_nominal(
    data: bytes, tokenizer: Tokenizer, start: int, end: int | None, block: int, max_run: int = 1 << 20
) -> RangeCounts:
    """What one task does with a ranged read: feed from `start` on, in blocks, until the range is done."""
    counter = RangeCounter(tokenizer, start, end, max_run_bytes=max_run)
    position = start
    while position < len(data):
        if counter.feed(data[position : position + block]):
            break
        position += block
    return counter.finish()


def as_part(
    index: int, relpath: str, nominal: tuple[int, int], counted: RangeCounts, size: int
) -> FileResult:
    return FileResult(
        index,
        relpath,
        STATUS_OK,
        None,
        nominal,
        counted=(counted.counted_start, counted.counted_end),
        size=size,
        etag='"0x1"',
        words=counted.counts.words,
        invalid_bytes=counted.counts.invalid_bytes,
        counts=list(counted.counts.counts.items()),
    )


def split_and_merge(
    data: bytes, tokenizer: Tokenizer, nominal: list[tuple[int, int]], block: int, max_run: int = 1 << 20
) -> MergedFile:
    parts = [
        as_part(index, "f.txt", span, count_nominal(data, tokenizer, *span, block, max_run), len(data))
        for index, span in enumerate(nominal)
    ]
    merged = merge_ranges(reversed(parts))  # any order in, file order out
    assert (merged.size, merged.words) == (len(data), sum(count for _, count in merged.counts))
    return merged


def one_process(path: Path, tokenizer: Tokenizer) -> FileCounts:
    return count_file(path, tokenizer, workers=1)


# A file whose 8 nominal boundaries fall inside multi-byte characters, inside words, on whitespace,
# after a BOM, with ties, undecodable bytes and Unicode punctuation.
EDGE_TEXT = (
    codecs.BOM_UTF8
    + "Žluťoučký kůň úpěl ďábelské ódy. Kůň, KŮŇ; kůň! “Straße” STRASSE straße — "
    "日本語のテキスト 日本語 ok ok zeta alpha Zeta ALPHA ".encode()
    + b"caf\xe9 \xff\xfe bad\x80bytes "
    + "emoji 😀😀 😀 a\u00a0b\u2003c\x1cd end".encode()
)


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
@pytest.mark.parametrize("block", [1, 3, 7, 64, 1 << 16])
def test_a_file_split_into_8_ranges_merges_to_the_one_process_count(
    tmp_path: Path, tokenizer: Tokenizer, block: int
) -> None:
    path = tmp_path / "edge.txt"
    path.write_bytes(EDGE_TEXT)
    nominal = split_ranges(len(EDGE_TEXT), 8)
    assert len(nominal) == 8
    # At least one nominal boundary lands inside a multi-byte UTF-8 sequence (a continuation byte).
    assert any(0x80 <= EDGE_TEXT[start] <= 0xBF for start, _ in nominal[1:])
    expected = one_process(path, tokenizer)
    merged = split_and_merge(EDGE_TEXT, tokenizer, nominal, block).counts
    assert merged == list(expected.counts.items())
    # ... and so is the top, ties included, and the rendered _OUTPUT.
    identity = {"AZ_BATCH_NODE_ID": "tvm-1"}
    assert render_output(merged, 5, identity) == render_output(list(expected.counts.items()), 5, identity)


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
def test_every_split_point_of_a_small_file_gives_the_same_counts(tokenizer: Tokenizer) -> None:
    expected, invalid = reference(EDGE_TEXT, tokenizer)
    assert invalid == 4
    for cut in range(1, len(EDGE_TEXT)):
        merged = split_and_merge(EDGE_TEXT, tokenizer, [(0, cut), (cut, len(EDGE_TEXT))], 5)
        assert (merged.counts, merged.invalid_bytes) == (expected, invalid), cut


def test_a_range_inside_one_word_counts_nothing_and_its_neighbour_counts_the_word() -> None:
    data = b"a longlonglongword b"
    inner = count_nominal(data, "words", 5, 10, 4)
    assert (inner.counted_start, inner.counted_end, inner.counts.words) == (19, 19, 0)
    before = count_nominal(data, "words", 0, 5, 4)
    assert list(before.counts.counts.items()) == [("a", 1), ("longlonglongword", 1)]
    assert before.counted_end == 19


def test_a_bom_is_dropped_only_by_the_range_that_starts_the_file() -> None:
    data = codecs.BOM_UTF8 + b"w " + codecs.BOM_UTF8 + b"w"
    first = count_nominal(data, "tutorial", 0, 2, 1)
    second = count_nominal(data, "tutorial", 2, len(data), 1)
    assert list(first.counts.counts.items()) == [("w", 1)]
    assert list(second.counts.counts.items()) == [("\ufeffw", 1)]


def test_a_file_shorter_than_a_bom_is_counted() -> None:
    assert list(count_nominal(b"\xef\xbb", "tutorial", 0, None, 1).counts.counts.items()) == [("\ufffd", 1)]


text_pieces = st.sampled_from(
    ["a", "Kůň", "kůň", "ß", "日本", "😀", " ", "  ", "\n", "\t", ",", "—", "\u00a0", "\u2003", "x_y", "\x1c"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pieces=st.lists(text_pieces, max_size=60),
    junk=st.lists(st.binary(min_size=1, max_size=3), max_size=3),
    bom=st.booleans(),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=9),
    block=st.integers(min_value=1, max_value=50),
    max_run=st.sampled_from([2, 5, 1 << 20]),
    tokenizer=st.sampled_from(TOKENIZERS),
)
def test_any_nominal_partition_merges_to_the_one_process_count(
    tmp_path: Path,
    pieces: list[str],
    junk: list[bytes],
    bom: bool,
    cuts: list[int],
    block: int,
    max_run: int,
    tokenizer: Tokenizer,
) -> None:
    data = (codecs.BOM_UTF8 if bom else b"") + "".join(pieces).encode() + b" ".join(junk)
    if not data:
        return
    bounds = sorted({0, len(data), *(cut for cut in cuts if cut < len(data))})
    nominal = list(itertools.pairwise(bounds))
    path = tmp_path / "f.txt"
    path.write_bytes(data)
    expected = count_file(path, tokenizer, workers=1, max_run_bytes=max_run)
    merged = split_and_merge(data, tokenizer, nominal, block, max_run)
    assert (merged.counts, merged.invalid_bytes) == (list(expected.counts.items()), expected.invalid_bytes)


def test_merge_refuses_a_gap_two_versions_a_failed_range_and_a_short_end() -> None:
    data = b"one two three four"
    spans = [(0, 5), (5, 10), (10, len(data))]
    parts = [
        as_part(index, "f", span, count_nominal(data, "words", *span, 4), len(data))
        for index, span in enumerate(spans)
    ]
    with pytest.raises(MergeError, match="uncounted"):
        merge_ranges([parts[0], parts[2]])
    with pytest.raises(MergeError, match="end at byte"):
        merge_ranges(parts[:2])
    other_version = dataclasses.replace(parts[1], etag='"0x2"')
    with pytest.raises(MergeError, match="two versions"):
        merge_ranges([parts[0], other_version, parts[2]])
    failed = FileResult(1, "f", "failed", None, (5, 10), error_kind="changed", error_message="412")
    with pytest.raises(MergeError, match="not counted"):
        merge_ranges([parts[0], failed, parts[2]])
    with pytest.raises(MergeError, match="no ranges"):
        merge_ranges([])
    assert [word for word, _ in merge_ranges(parts).counts] == ["one", "two", "three", "four"]
