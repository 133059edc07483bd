"""Count a file's words in bounded memory: streamed in blocks, optionally over byte ranges in processes."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import re
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from node.tokenizers import (
    ASCII_PUNCTUATION_BYTES,
    NO_BREAK_SPACE,
    TRANSLATION_TABLES,
    UTF8_BOM,
    Tokenizer,
    chop,
    fold_raw_counts,
)

BLOCK_BYTES = 1 << 18
# A run of bytes with no ASCII whitespace or no-break space (and, for `words`, no ASCII separator or
# General Punctuation) longer than this is cut into pieces of at most this many bytes (see
# tokenizers.chop): a word that long is not a word, and it would otherwise be held in memory whole
# (a 2 GB file of NUL bytes is one such "word" for `tutorial`).
MAX_RUN_BYTES = 1 << 20
# Distinct raw tokens held before they are folded into words, so junk input cannot grow them forever.
RAW_TOKEN_LIMIT = 1 << 20
# Below this many bytes per process, starting another process costs more than it saves.
PARALLEL_MIN_BYTES_PER_WORKER = 16 << 20

_ASCII_WHITESPACE_RE = re.compile(rb"[\t\n\x0b\x0c\r\x1c-\x1f ]")
# U+2000-U+206F (General Punctuation: dashes, curly quotes, ellipsis, thin spaces) holds no letter or
# digit and nothing that casefolds to one, so for `words` each is a separator; found at C speed and
# turned into a space so that "„slovo“" and "slovo" are one raw token.
_GENERAL_PUNCTUATION_RE = re.compile(b"\xe2(?:\x80[\x80-\xbf]|\x81[\x80-\xaf])")


@dataclass
class FileCounts:
    """A file's full counts (insertion order = first occurrence in the file) and its totals."""

    counts: Counter[str] = field(default_factory=Counter)
    invalid_bytes: int = 0

    @property
    def words(self) -> int:
        return sum(self.counts.values())

    @property
    def distinct(self) -> int:
        return len(self.counts)

    def top(self, n: int) -> list[tuple[str, int]]:
        """The n most frequent words; ties go to the word seen first (most_common is stable)."""
        return self.counts.most_common(n)

    def extend(self, later: FileCounts) -> None:
        """Add the counts of the part of the file that comes right after this one."""
        # Counter.update appends unseen words in `later`'s order, after all of ours: exactly the
        # first-occurrence order of the two parts read one after the other.
        self.counts.update(later.counts)
        self.invalid_bytes += later.invalid_bytes


class WordCounter:
    """Feed a file's bytes in order, in blocks of any size; `finish` returns the counts."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        max_run_bytes: int = MAX_RUN_BYTES,
        raw_token_limit: int = RAW_TOKEN_LIMIT,
    ) -> None:
        if max_run_bytes < 1:
            raise ValueError("max_run_bytes must be at least 1")
        self._tokenizer = tokenizer
        self._table = TRANSLATION_TABLES[tokenizer]
        self._strip_punctuation = tokenizer == "tutorial"
        self._table_is_words = tokenizer == "words"
        self._max_run = max_run_bytes
        self._raw_token_limit = raw_token_limit
        self._raw: Counter[bytes] = Counter()
        self._result = FileCounts()
        # The bytes of a token that may continue in the next block (already translated).
        self._carry = b""

    def feed(self, block: bytes) -> None:
        """Count every token that is complete once `block` follows what was fed before."""
        # A run that fits inside one block is never checked against the limit, so no block may be longer.
        for start in range(0, len(block), self._max_run):
            self._feed_block(block[start : start + self._max_run])

    def _feed_block(self, block: bytes) -> None:
        had_carry = bool(self._carry)
        data = self._carry + block if had_carry else block
        if not data:
            return
        if self._strip_punctuation:
            # bytes.split() splits on ASCII whitespace but not on \x1c-\x1f, which str.split() does:
            # four memchr scans are far cheaper than translating every block.
            if b"\x1f" in data or b"\x1e" in data or b"\x1d" in data or b"\x1c" in data:
                data = data.translate(self._table)
        else:
            data = data.translate(self._table)
        if not data.isascii():
            # Two spaces for the two bytes: an equal-length replace is about twice as fast, and
            # bytes.replace returns the block itself when there is nothing to replace.
            data = data.replace(NO_BREAK_SPACE, b"  ")
            if self._table_is_words and b"\xe2" in data:
                data = _GENERAL_PUNCTUATION_RE.sub(b" ", data)
        # bytes.split() splits only on ASCII whitespace, which is never inside a UTF-8 sequence, and
        # drops empty tokens; the raw tokens stay bytes, so nothing is decoded per token.
        tokens = data.split()
        partial = tokens.pop() if tokens and not data[-1:].isspace() else b""
        if had_carry and tokens and len(tokens[0]) > self._max_run:
            tokens[0:1] = chop(tokens[0], self._max_run)
        self._count_raw(tokens)
        self._carry = self._keep_partial(partial)
        if len(self._raw) > self._raw_token_limit:
            self._fold()

    def _count_raw(self, tokens: list[bytes]) -> None:
        if self._strip_punctuation:
            # Stripping here (in C, through map) rather than once per distinct token in the fold costs
            # a little per token but folds "word," "word." '"word' into one key, and a smaller Counter
            # stays in the CPU caches. fold_raw_counts relies on every `tutorial` key being stripped.
            self._raw.update(map(bytes.strip, tokens, itertools.repeat(ASCII_PUNCTUATION_BYTES)))
        else:
            self._raw.update(tokens)

    def _keep_partial(self, partial: bytes) -> bytes:
        """Count the whole pieces of an overlong unfinished run now; return the rest to carry."""
        if len(partial) > self._max_run:
            pieces = chop(partial, self._max_run)
            self._count_raw(pieces[:-1])
            partial = pieces[-1]
        return partial

    def _fold(self) -> None:
        self._result.invalid_bytes += fold_raw_counts(self._raw, self._result.counts, self._tokenizer)
        self._raw = Counter()

    def finish(self) -> FileCounts:
        """Count what is left and return the counts; the counter must not be fed afterwards."""
        if self._carry:
            self._count_raw(chop(self._carry, self._max_run))
            self._carry = b""
        self._fold()
        return self._result


def count_range(
    path: str | os.PathLike[str],
    start: int,
    end: int | None,
    tokenizer: Tokenizer,
    *,
    block_bytes: int = BLOCK_BYTES,
    max_run_bytes: int = MAX_RUN_BYTES,
) -> FileCounts:
    """Count the words in bytes [start, end) of a file (to its end when `end` is None)."""
    counter = WordCounter(tokenizer, max_run_bytes=max_run_bytes)
    with Path(path).open("rb", buffering=0) as stream:
        position = start
        stream.seek(start)
        if start == 0:
            head = stream.read(len(UTF8_BOM))
            if head == UTF8_BOM:
                position = len(UTF8_BOM)
            else:
                stream.seek(0)
        while end is None or position < end:
            wanted = block_bytes if end is None else min(block_bytes, end - position)
            block = stream.read(wanted)
            if not block:
                break
            position += len(block)
            counter.feed(block)
    return counter.finish()


def _first_whitespace_at_or_after(stream_path: Path, offset: int, window: int = 1 << 16) -> int | None:
    """Offset just after the first ASCII whitespace byte at or after `offset`, or None before the end."""
    with stream_path.open("rb", buffering=0) as stream:
        stream.seek(offset)
        while True:
            data = stream.read(window)
            if not data:
                return None
            found = _ASCII_WHITESPACE_RE.search(data)
            if found:
                return offset + found.end()
            offset += len(data)


def plan_ranges(path: str | os.PathLike[str], size: int, parts: int) -> list[tuple[int, int]]:
    """Split [0, size) into up to `parts` ranges that each end just after an ASCII whitespace byte.

    An ASCII whitespace byte is never inside a UTF-8 sequence and ends a word for both tokenizers,
    so every word (and every undecodable sequence) lies wholly inside one range.
    """
    file_path = Path(path)
    bounds = [0]
    for index in range(1, parts):
        nominal = max(size * index // parts, bounds[-1])
        cut = _first_whitespace_at_or_after(file_path, nominal)
        if cut is None or cut >= size:
            break
        if cut > bounds[-1]:
            bounds.append(cut)
    bounds.append(size)
    return list(itertools.pairwise(bounds))


def available_cpus() -> int:
    """CPUs this process may run on (affinity and container limits), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def count_file(
    path: str | os.PathLike[str],
    tokenizer: Tokenizer,
    *,
    workers: int = 1,
    block_bytes: int = BLOCK_BYTES,
    max_run_bytes: int = MAX_RUN_BYTES,
    parallel_min_bytes: int = PARALLEL_MIN_BYTES_PER_WORKER,
) -> FileCounts:
    """Count a whole file, over byte ranges in up to `workers` processes when it is large enough."""
    size = Path(path).stat().st_size
    parts = max(1, min(workers, size // max(1, parallel_min_bytes)))
    ranges = plan_ranges(path, size, parts) if parts > 1 else [(0, size)]
    if len(ranges) == 1:
        return count_range(path, 0, None, tokenizer, block_bytes=block_bytes, max_run_bytes=max_run_bytes)
    # spawn: no inherited locks or threads, the same on every OS, and it works from a zipapp because
    # children import `node.counting` by name from the parent's sys.path. This process counts the
    # first range itself while the others start, which hides one process start-up.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(ranges) - 1, mp_context=context) as pool:
        futures = [
            pool.submit(
                count_range,
                os.fspath(path),
                start,
                end,
                tokenizer,
                block_bytes=block_bytes,
                max_run_bytes=max_run_bytes,
            )
            for start, end in ranges[1:]
        ]
        try:
            merged = count_range(
                path, *ranges[0], tokenizer, block_bytes=block_bytes, max_run_bytes=max_run_bytes
            )
            for future in futures:
                merged.extend(future.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return merged
