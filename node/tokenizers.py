"""The two tokenizers, defined once on text and once as the fast byte-level pass that feeds a Counter.

The fast pass works in two steps, so that the per-word work stays in C:

1. Each block of bytes is made ready for ``bytes.split()``: for ``words`` it is translated with a
   256-byte table (every ASCII non-alphanumeric becomes a space, ASCII letters are lower-cased) and
   General Punctuation becomes spaces; for ``tutorial`` only \\x1c-\\x1f (whitespace to
   ``str.split()``, not to ``bytes.split()``) are translated, and only when present; no-break spaces
   become spaces. ``bytes.split()`` then cuts the block into *raw tokens*, which stay ``bytes``, so
   nothing is decoded per token; ``tutorial`` strips ASCII punctuation from both ends with
   ``bytes.strip`` (through ``map``, in C). Raw tokens go straight into a ``Counter``.
2. Once per distinct raw token, :func:`fold_raw_counts` turns it into the words the definition asks
   for: UTF-8 decoding (bad bytes become U+FFFD), splitting on other Unicode whitespace, casefolding
   and splitting non-ASCII text. For clean text (valid UTF-8, no rare whitespace) this is one decode
   of all distinct tokens joined by newlines.

Raw tokens are cut only where both tokenizers end a word (whitespace or, for ``words``, an ASCII
separator), and an ASCII byte or a no-break space is never part of another UTF-8 sequence, so
counting raw tokens first and normalizing them afterwards gives exactly the counts of the text-level
definition (:func:`words_of_text`), in the same first-occurrence order.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable
from typing import Literal

Tokenizer = Literal["words", "tutorial"]
TOKENIZERS: tuple[Tokenizer, ...] = ("words", "tutorial")

UTF8_BOM = b"\xef\xbb\xbf"

# A maximal run of Unicode letters and digits: \w without the underscore.
_WORD_RE = re.compile(r"[^\W_]+")
# One undecodable byte after decoding with surrogateescape.
_ESCAPED_BYTE_RE = re.compile("[\udc80-\udcff]")
# Whitespace as str.split() sees it (re's \s is str.isspace), except the newline that joins tokens.
_WHITESPACE_BUT_NEWLINE_RE = re.compile(r"[^\S\n]")
# Anything that ends a `words` word, except the newline that joins tokens.
_NOT_WORD_RE = re.compile(r"[^\w\n]|_")
ASCII_PUNCTUATION = string.punctuation
ASCII_PUNCTUATION_BYTES = ASCII_PUNCTUATION.encode("ascii")


def _translation_table(tokenizer: Tokenizer) -> bytes:
    """256-byte table: separators become a space; for `words`, ASCII letters are lower-cased."""
    table = bytearray(range(256))
    for code in range(128):
        char = chr(code)
        if tokenizer == "words":
            # Casefolding an ASCII letter is lower-casing it; every other ASCII non-alphanumeric
            # (underscore included) ends a word. Bytes >= 0x80 (the rest of UTF-8) stay as they are.
            table[code] = ord(char.lower()) if char.isalnum() else ord(" ")
        elif char.isspace():
            # str.split() would also split on \x1c-\x1f; so must we.
            table[code] = ord(" ")
    return bytes(table)


TRANSLATION_TABLES: dict[Tokenizer, bytes] = {name: _translation_table(name) for name in TOKENIZERS}
# U+00A0 NO-BREAK SPACE, the commonest non-ASCII whitespace; C2 is never a continuation byte, so these
# two bytes are always this character. (Rarer Unicode whitespace is split off in normalize_raw_token.)
NO_BREAK_SPACE = "\u00a0".encode()


def check_tokenizer(name: str) -> Tokenizer:
    """Return `name` as a Tokenizer, or raise ValueError naming the choices."""
    for tokenizer in TOKENIZERS:
        if name == tokenizer:
            return tokenizer
    raise ValueError(f"unknown tokenizer {name!r}: choose one of {', '.join(TOKENIZERS)}")


def words_of_text(text: str, tokenizer: Tokenizer) -> list[str]:
    """The definition: the words of already-decoded text, in order (DESIGN §4)."""
    if tokenizer == "words":
        return _WORD_RE.findall(text.casefold())
    stripped = (token.strip(ASCII_PUNCTUATION) for token in text.split())
    return [word for word in stripped if word]


def normalize_raw_token(token: bytes, tokenizer: Tokenizer) -> tuple[list[str], int]:
    """The words of one raw token (its bytes) and the number of undecodable bytes in it."""
    if token.isascii():
        # Already split on every ASCII separator and, for `words`, lower-cased.
        word = (token if tokenizer == "words" else token.strip(ASCII_PUNCTUATION_BYTES)).decode("ascii")
        return ([word] if word else []), 0
    try:
        text = token.decode("utf-8")
        invalid_bytes = 0
    except UnicodeDecodeError:
        invalid_bytes = len(_ESCAPED_BYTE_RE.findall(token.decode("utf-8", "surrogateescape")))
        # The replacement the user sees: one U+FFFD per maximal bad sequence, as bytes.decode does.
        text = token.decode("utf-8", "replace")
    return words_of_text(text, tokenizer), invalid_bytes


def fold_raw_counts(raw: Counter[bytes], into: Counter[str], tokenizer: Tokenizer) -> int:
    """Add the words of every raw token (in first-occurrence order) to `into`; return undecodable bytes.

    Iterating the raw tokens in the order they were first seen, and each token's words left to right,
    inserts every word at its first occurrence in the text, so `into` keeps first-occurrence order,
    also when several raw tokens give the same word (`word` and `word,`; two bad byte sequences that
    both become U+FFFD).

    Raw `tutorial` tokens must already be stripped of ASCII punctuation (WordCounter strips every
    token it counts); the fast path below relies on it.
    """
    if not raw:
        return 0
    # Raw tokens never contain ASCII whitespace, so one newline-joined decode gives every token's
    # text, aligned, for the price of one call; the per-token work below is then a dict update.
    text = b"\n".join(raw).decode("utf-8", "surrogateescape")
    if _ESCAPED_BYTE_RE.search(text) is None and _WHITESPACE_BUT_NEWLINE_RE.search(text) is None:
        # All valid UTF-8 and no Unicode whitespace inside a token: each token is at most one word.
        if tokenizer == "tutorial":
            # Already stripped, and distinct bytes decode to distinct text: each token is its word.
            words = text.split("\n")
            if not into:
                dict.update(into, zip(words, raw.values(), strict=True))
                into.pop("", None)
                return 0
            _add_counts(into, zip(words, raw.values(), strict=True))
            return 0
        folded = text.casefold()
        if _NOT_WORD_RE.search(folded) is None:
            # Every casefolded token is one run of letters and digits (tokens that only differ in
            # case, such as "Čau" and "čau", now meet, so the counts are added).
            _add_counts(into, zip(folded.split("\n"), raw.values(), strict=True))
            return 0
    return _fold_each_token(raw, into, tokenizer)


def _add_counts(into: Counter[str], pairs: Iterable[tuple[str, int]]) -> None:
    current = into.get  # plain dict access: Counter's __missing__ is a Python call per new word
    for word, count in pairs:
        if word:
            into[word] = current(word, 0) + count


def _fold_each_token(raw: Counter[bytes], into: Counter[str], tokenizer: Tokenizer) -> int:
    """fold_raw_counts for any input: undecodable bytes, Unicode whitespace, marks after casefolding."""
    invalid_total = 0
    strip = tokenizer == "tutorial"
    current = into.get  # plain dict access: Counter's __missing__ is a Python call per new word
    for token, count in raw.items():
        if token.isascii():  # the common case, inlined: one word or none
            word = (token.strip(ASCII_PUNCTUATION_BYTES) if strip else token).decode("ascii")
            if word:
                into[word] = current(word, 0) + count
            continue
        if strip:
            # Also common (`tutorial`, any non-English text): valid UTF-8, no Unicode whitespace inside.
            try:
                parts = token.decode("utf-8").split()
            except UnicodeDecodeError:
                parts = []
            if len(parts) == 1:
                word = parts[0].strip(ASCII_PUNCTUATION)
                if word:
                    into[word] = current(word, 0) + count
                continue
        words, invalid_bytes = normalize_raw_token(token, tokenizer)
        invalid_total += invalid_bytes * count
        for word in words:
            into[word] = current(word, 0) + count
    return invalid_total


def chop(run: bytes, max_bytes: int) -> list[bytes]:
    """Cut a raw token longer than `max_bytes` into pieces of at most `max_bytes` (bounded memory).

    Each cut moves back over at most three UTF-8 continuation bytes so it falls between characters.
    Cuts depend only on the run's own bytes, so cutting a run as it streams in (emitting all pieces
    but the last, which carries on) gives the same pieces as cutting it whole.
    """
    pieces: list[bytes] = []
    start = 0
    while len(run) - start > max_bytes:
        cut = start + max_bytes
        back = cut
        while back > start and back > cut - 3 and 0x80 <= run[back] <= 0xBF:
            back -= 1
        if back == start:
            back = cut
        pieces.append(run[start:back])
        start = back
    pieces.append(run[start:])
    return pieces
