"""The node's counting: the two tokenizers, chunked streaming, byte ranges and their merge."""

from __future__ import annotations

import codecs
import itertools
import re
import string
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.counting import FileCounts, WordCounter, count_file, count_range, plan_ranges
from node.tokenizers import TOKENIZERS, Tokenizer, check_tokenizer, words_of_text

# --- independent references -------------------------------------------------------------------

_invalid_byte_total = 0


def _count_invalid(error: UnicodeError) -> tuple[str, int]:
    """A codec error handler that behaves like 'replace' and adds up the bytes it replaced."""
    global _invalid_byte_total
    assert isinstance(error, UnicodeDecodeError)
    _invalid_byte_total += error.end - error.start
    return "\ufffd", error.end


codecs.register_error("test-count-invalid", _count_invalid)


def decode_reference(data: bytes) -> tuple[str, int]:
    """Whole-file decoding as a user would describe it: BOM dropped, bad bytes replaced and counted."""
    global _invalid_byte_total
    _invalid_byte_total = 0
    text = data.removeprefix(codecs.BOM_UTF8).decode("utf-8", "test-count-invalid")
    return text, _invalid_byte_total


def seed_counts(text: str) -> Counter[str]:
    """The seed script's algorithm, minus the empty tokens it would count."""
    counts = Counter(word.strip(string.punctuation) for word in text.split())
    del counts[""]
    return counts


def reference(data: bytes, tokenizer: Tokenizer) -> tuple[list[tuple[str, int]], int]:
    """Counts in first-occurrence order and invalid bytes, computed on the whole file at once."""
    text, invalid = decode_reference(data)
    if tokenizer == "tutorial":
        return list(seed_counts(text).items()), invalid
    return list(Counter(words_of_text(text, "words")).items()), invalid


def count_in_blocks(
    data: bytes, tokenizer: Tokenizer, sizes: list[int], max_run: int = 1 << 20
) -> FileCounts:
    counter = WordCounter(tokenizer, max_run_bytes=max_run)
    data = data.removeprefix(codecs.BOM_UTF8)
    position, index = 0, 0
    while position < len(data):
        size = sizes[index % len(sizes)] if sizes else len(data)
        counter.feed(data[position : position + size])
        position += size
        index += 1
    return counter.finish()


# --- tokenizers on hand-written examples --------------------------------------------------------


def test_tutorial_strips_ascii_punctuation_and_keeps_case() -> None:
    text = '"Hello," she said. Hello -- hello! (e.g. don\'t) ...'
    assert words_of_text(text, "tutorial") == ["Hello", "she", "said", "Hello", "hello", "e.g", "don't"]


def test_tutorial_splits_on_unicode_whitespace_like_str_split() -> None:
    text = "a\u00a0b\u2003c\u3000d\x1ce\u2028f\u0085g"
    assert words_of_text(text, "tutorial") == ["a", "b", "c", "d", "e", "f", "g"]


def test_tutorial_keeps_unicode_punctuation() -> None:
    assert words_of_text("„Žluťoučký kůň“ — konec…", "tutorial") == ["„Žluťoučký", "kůň“", "—", "konec…"]


def test_words_casefolds_and_takes_letter_digit_runs() -> None:
    text = "Straße STRASSE snake_case „Žluťoučký kůň“—konec… R2-D2 ǅungla"
    assert words_of_text(text, "words") == [
        "strasse",
        "strasse",
        "snake",
        "case",
        "žluťoučký",
        "kůň",
        "konec",
        "r2",
        "d2",
        "ǆungla",
    ]


def test_check_tokenizer_names_the_choices() -> None:
    assert check_tokenizer("tutorial") == "tutorial"
    with pytest.raises(ValueError, match="words, tutorial"):
        check_tokenizer("bigrams")


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
def test_empty_input_has_no_words(tokenizer: Tokenizer) -> None:
    result = count_in_blocks(b"", tokenizer, [])
    assert (result.words, result.distinct, result.invalid_bytes, result.top(3)) == (0, 0, 0, [])


def test_leading_bom_is_ignored_but_not_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(codecs.BOM_UTF8 + b"word x\xef\xbb\xbfword")
    result = count_range(path, 0, None, "tutorial")
    assert list(result.counts.items()) == [("word", 1), ("x\ufeffword", 1)]


def test_undecodable_bytes_become_replacement_characters_and_are_counted() -> None:
    data = b"caf\xc3\xa9 caf\xe9 \xff\xfe ok \xe2\x82"
    tutorial = count_in_blocks(data, "tutorial", [3])
    assert list(tutorial.counts.items()) == [
        ("café", 1),
        ("caf\ufffd", 1),
        ("\ufffd\ufffd", 1),
        ("ok", 1),
        ("\ufffd", 1),
    ]
    assert tutorial.invalid_bytes == 5
    words = count_in_blocks(data, "words", [3])
    assert list(words.counts.items()) == [("café", 1), ("caf", 1), ("ok", 1)]
    assert words.invalid_bytes == 5


def test_ties_go_to_the_word_seen_first() -> None:
    result = count_in_blocks(b"zeta alpha Zeta ALPHA beta beta", "words", [4])
    assert result.top(3) == [("zeta", 2), ("alpha", 2), ("beta", 2)]


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
def test_binary_input_never_crashes(tokenizer: Tokenizer) -> None:
    data = bytes(range(256)) * 64 + b"\x00" * 5000 + bytes(reversed(range(256))) * 64
    result = count_in_blocks(data, tokenizer, [1000, 7], max_run=1024)
    assert result.invalid_bytes == 2 * 64 * 128
    assert result.words >= len(result.counts)
    # Against an independent tokenization of the decoded text (DESIGN §4), not `words`'s own definition
    # (the sum of its counts); with runs left whole, which the reference does not cut.
    whole = count_in_blocks(data, tokenizer, [1000, 7])
    text, _ = decode_reference(data)
    independent = (
        Counter(re.findall(r"[^\W_]+", text.casefold())) if tokenizer == "words" else seed_counts(text)
    )
    assert dict(whole.counts) == dict(independent)
    assert whole.words == sum(independent.values())


def test_an_overlong_run_is_cut_into_pieces_of_the_limit() -> None:
    result = count_in_blocks(b"ab " + b"x" * 10 + b" ab", "tutorial", [3], max_run=4)
    assert list(result.counts.items()) == [("ab", 2), ("xxxx", 2), ("xx", 1)]


# --- properties: streaming equals the whole-file definition ---------------------------------------

# Letters with and without case, digits, ASCII and Unicode punctuation and whitespace, and bytes that
# are not UTF-8, so that chunk boundaries fall inside multi-byte characters and bad sequences.
_ALPHABET = "aAbBzZ09éÉßŽžǅİΣσς中\u0345_'.,-\"“”—…!? \t\n\x1c\u00a0\u2003\u3000\u2028\ufeff\ufffd"
_pieces = st.one_of(
    st.text(alphabet=_ALPHABET, max_size=12).map(lambda text: text.encode("utf-8")),
    st.binary(max_size=4),
)
random_documents = st.lists(_pieces, max_size=40).map(b"".join)
block_sizes = st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(data=random_documents, sizes=block_sizes, tokenizer=st.sampled_from(TOKENIZERS))
def test_chunked_counting_equals_whole_file_reference(
    data: bytes, sizes: list[int], tokenizer: Tokenizer
) -> None:
    expected_counts, expected_invalid = reference(data, tokenizer)
    result = count_in_blocks(data, tokenizer, sizes)
    assert list(result.counts.items()) == expected_counts
    assert result.invalid_bytes == expected_invalid
    assert result.words == sum(count for _, count in expected_counts)


@settings(max_examples=150, deadline=None)
@given(data=random_documents, sizes=block_sizes, tokenizer=st.sampled_from(TOKENIZERS))
def test_overlong_runs_are_cut_the_same_way_whatever_the_blocks(
    data: bytes, sizes: list[int], tokenizer: Tokenizer
) -> None:
    # With a tiny limit many runs are cut; the cuts depend only on the text, never on the blocks.
    one_byte_at_a_time = count_in_blocks(data, tokenizer, [1], max_run=5)
    chunked = count_in_blocks(data, tokenizer, sizes, max_run=5)
    whole = count_in_blocks(data, tokenizer, [], max_run=5)
    assert (
        list(chunked.counts.items()) == list(one_byte_at_a_time.counts.items()) == list(whole.counts.items())
    )
    assert chunked.invalid_bytes == one_byte_at_a_time.invalid_bytes == whole.invalid_bytes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=random_documents, parts=st.integers(min_value=2, max_value=6), tokenizer=st.sampled_from(TOKENIZERS)
)
def test_byte_ranges_merged_in_order_equal_one_pass(
    tmp_path: Path, data: bytes, parts: int, tokenizer: Tokenizer
) -> None:
    path = tmp_path / "doc.txt"
    path.write_bytes(codecs.BOM_UTF8 + data)
    ranges = plan_ranges(path, path.stat().st_size, parts)
    assert ranges[0][0] == 0 and ranges[-1][1] == path.stat().st_size
    assert all(end == next_start for (_, end), (next_start, _) in itertools.pairwise(ranges))
    merged = count_range(path, *ranges[0], tokenizer, block_bytes=7)
    for start, end in ranges[1:]:
        merged.extend(count_range(path, start, end, tokenizer, block_bytes=5))
    expected_counts, expected_invalid = reference(codecs.BOM_UTF8 + data, tokenizer)
    assert list(merged.counts.items()) == expected_counts
    assert merged.invalid_bytes == expected_invalid


def test_worker_processes_give_the_single_process_result(tmp_path: Path) -> None:
    # Words that first appear late in the file and ties across range boundaries are the hard part.
    lines = [f"w{index % 97} shared{index % 3} Tie{index % 5}" for index in range(40_000)]
    lines.insert(30_000, "latecomer " * 3)
    path = tmp_path / "big.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    single = count_file(path, "words", workers=1)
    multi = count_file(path, "words", workers=3, parallel_min_bytes=64 << 10)
    assert list(multi.counts.items()) == list(single.counts.items())
    assert multi.top(10) == single.top(10)
    assert multi.counts["latecomer"] == 3


def test_cuts_in_an_overlong_run_never_split_a_character() -> None:
    # With a 2-byte limit, "aéaé" (6 bytes) is cut between characters only: no U+FFFD appears.
    result = count_in_blocks("aéaé".encode(), "tutorial", [1], max_run=2)
    assert list(result.counts.items()) == [("a", 2), ("é", 2)]
    assert result.invalid_bytes == 0


# --- properties for the fast paths: valid text, where the one-decode fold applies ------------------

# Valid UTF-8 with no Unicode whitespace but the no-break space: what real text looks like, and what
# the fold's one-decode path takes. ASCII and non-ASCII separators and punctuation sit side by side so
# that block boundaries fall between and inside them (\xc2 + \xa0, a curly quote's three bytes).
_CLEAN_ALPHABET = "aAzZ09éÉßŽžǅİΣσς中\u0345_'.,-\"“”„—…«»!?() \t\n\u00a0"
clean_documents = st.lists(
    st.text(alphabet=_CLEAN_ALPHABET, max_size=12).map(lambda text: text.encode("utf-8")), max_size=40
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(data=clean_documents, sizes=block_sizes, tokenizer=st.sampled_from(TOKENIZERS))
def test_chunked_counting_of_valid_text_equals_whole_file_reference(
    data: bytes, sizes: list[int], tokenizer: Tokenizer
) -> None:
    expected_counts, expected_invalid = reference(data, tokenizer)
    result = count_in_blocks(data, tokenizer, sizes)
    assert list(result.counts.items()) == expected_counts
    assert result.invalid_bytes == expected_invalid == 0


# Raw tokens as WordCounter produces them: no ASCII whitespace, `tutorial` ones already stripped.
_raw_token_texts = st.text(
    alphabet=_ALPHABET.replace(" ", "").replace("\t", "").replace("\n", ""), max_size=8
)
_raw_tokens = st.one_of(
    _raw_token_texts.map(lambda text: text.encode("utf-8")),
    st.binary(max_size=4).map(lambda data: bytes(byte for byte in data if not bytes([byte]).isspace())),
)


@settings(max_examples=300, deadline=None)
@given(
    tokens=st.lists(st.tuples(_raw_tokens, st.integers(min_value=1, max_value=5)), max_size=12),
    earlier=st.lists(st.sampled_from(["a", "é", "\ufffd", "ß", "ss"]), max_size=3),
    tokenizer=st.sampled_from(TOKENIZERS),
)
def test_one_decode_fold_equals_folding_token_by_token(
    tokens: list[tuple[bytes, int]], earlier: list[str], tokenizer: Tokenizer
) -> None:
    from node.tokenizers import ASCII_PUNCTUATION_BYTES, TRANSLATION_TABLES, _fold_each_token, fold_raw_counts

    raw: Counter[bytes] = Counter()
    for token, count in tokens:
        if tokenizer == "tutorial":
            raw[token.strip(ASCII_PUNCTUATION_BYTES)] += count
        else:  # split on ASCII separators and ASCII letters lower-cased, as WordCounter does
            for key in token.translate(TRANSLATION_TABLES["words"]).split():
                raw[key] += count
    fast: Counter[str] = Counter(dict.fromkeys(earlier, 1))
    slow: Counter[str] = Counter(dict.fromkeys(earlier, 1))
    fast_invalid = fold_raw_counts(raw, fast, tokenizer)
    slow_invalid = _fold_each_token(raw, slow, tokenizer)
    assert list(fast.items()) == list(slow.items())
    assert fast_invalid == slow_invalid
