"""The two tokenizers, defined once on text and once as the fast byte-level pass that feeds a Counter.

The fast pass works in two steps, so that the per-word work stays in C:

1. for ``words``, ``translate`` each block of bytes with a 256-byte table that turns every ASCII
   separator into a space and ASCII upper case into lower case; decode the block with
   ``surrogateescape`` (lossless: an undecodable byte becomes one lone surrogate) and ``split()`` it.
   The resulting *raw tokens* go straight into a ``Counter``.
2. Once per distinct raw token, :func:`normalize_raw_token` turns it into the words the definition
   asks for (stripping punctuation, case folding non-ASCII text, splitting on non-ASCII punctuation,
   replacing undecodable bytes with U+FFFD).

Raw tokens are cut only at whitespace or ASCII separators, which both tokenizers treat as the end of
a word, so counting raw tokens first and normalizing them afterwards gives exactly the counts of the
text-level definition (:func:`words_of_text`), in the same first-occurrence order.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Literal

Tokenizer = Literal["words", "tutorial"]
TOKENIZERS: tuple[Tokenizer, ...] = ("words", "tutorial")

UTF8_BOM = b"\xef\xbb\xbf"

# A maximal run of Unicode letters and digits: \w without the underscore.
_WORD_RE = re.compile(r"[^\W_]+")
# One undecodable byte after decoding with surrogateescape.
_ESCAPED_BYTE_RE = re.compile("[\udc80-\udcff]")
_ASCII_PUNCTUATION = string.punctuation


def _words_translation_table() -> bytes:
    """256-byte table for `words`: ASCII letters lower-cased, every other ASCII non-alphanumeric a space."""
    table = bytearray(range(256))
    for code in range(128):
        char = chr(code)
        # Casefolding an ASCII letter is lower-casing it; every other ASCII non-alphanumeric
        # (underscore included) ends a word. Bytes >= 0x80 (the rest of UTF-8) stay as they are.
        table[code] = ord(char.lower()) if char.isalnum() else ord(" ")
    return bytes(table)


# `tutorial` needs no table: str.split() after decoding already splits on every kind of whitespace.
TRANSLATION_TABLES: dict[Tokenizer, bytes | None] = {"words": _words_translation_table(), "tutorial": None}


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
    stripped = (token.strip(_ASCII_PUNCTUATION) for token in text.split())
    return [word for word in stripped if word]


def normalize_raw_token(token: str, tokenizer: Tokenizer) -> tuple[list[str], int]:
    """The words of one raw token and the number of undecodable bytes it holds."""
    if token.isascii():
        # Already split on every ASCII separator and, for `words`, lower-cased.
        if tokenizer == "words":
            return [token], 0
        word = token.strip(_ASCII_PUNCTUATION)
        return ([word] if word else []), 0
    invalid_bytes = 0
    if _ESCAPED_BYTE_RE.search(token):
        invalid_bytes = len(_ESCAPED_BYTE_RE.findall(token))
        # Back to the original bytes, then the replacement the user sees (one U+FFFD per bad sequence).
        token = token.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return words_of_text(token, tokenizer), invalid_bytes


def fold_raw_counts(raw: Counter[str], into: Counter[str], tokenizer: Tokenizer) -> int:
    """Add the words of every raw token (in first-occurrence order) to `into`; return undecodable bytes.

    Iterating the raw tokens in the order they were first seen, and each token's words left to right,
    inserts every word at its first occurrence in the text, so `into` keeps first-occurrence order.
    """
    invalid_total = 0
    for token, count in raw.items():
        words, invalid_bytes = normalize_raw_token(token, tokenizer)
        invalid_total += invalid_bytes * count
        for word in words:
            into[word] += count
    return invalid_total


def chop(token: str, max_chars: int) -> list[str]:
    """Cut a run longer than `max_chars` into pieces of `max_chars` (so memory stays bounded)."""
    if len(token) <= max_chars:
        return [token]
    return [token[start : start + max_chars] for start in range(0, len(token), max_chars)]
