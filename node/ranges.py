"""Count a nominal byte range of a file fed as a stream, with the node's boundary rule.

The rule is `counting.plan_ranges`'s: a range boundary at nominal offset n really lies just after
the first ASCII whitespace byte at or after n (or at the end of the file), and offset 0 stays 0. An
ASCII whitespace byte ends a word for both tokenizers and is never inside a UTF-8 sequence, so the
real ranges of any nominal partition tile the file, every word (and every undecodable sequence)
lies wholly inside one of them, and counting them one by one and adding the counts in file order
(`FileCounts.extend`) gives exactly the one-process count, first-occurrence order (ties) included.

A range never needs the file's size or its neighbours: it reads from its nominal start, skips what
precedes its real start (the previous range counts it), and reads past its nominal end only until
that first whitespace byte. So a blob can be counted over ranged reads by separate tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.counting import _ASCII_WHITESPACE_RE, MAX_RUN_BYTES, FileCounts, WordCounter
from node.tokenizers import UTF8_BOM, Tokenizer


@dataclass
class RangeCounts:
    """A range's counts and the bytes [counted_start, counted_end) they cover."""

    counts: FileCounts
    counted_start: int
    counted_end: int


class RangeCounter:
    """Feed a file's bytes from `start` on, in blocks of any size, until `feed` returns True; then `finish`.

    `end` None counts to the end of the file. A range starting at 0 drops a leading UTF-8 BOM, as
    the one-process count does.
    """

    def __init__(
        self, tokenizer: Tokenizer, start: int, end: int | None, *, max_run_bytes: int = MAX_RUN_BYTES
    ) -> None:
        if start < 0 or (end is not None and end <= start):
            raise ValueError(f"bad range [{start}, {end})")
        self._counter = WordCounter(tokenizer, max_run_bytes=max_run_bytes)
        self._end = end
        self._position = start  # the file offset of the next byte fed
        self._counted_start: int | None = 0 if start == 0 else None
        self._counted_end: int | None = None
        self._head = b""  # the first bytes of the file, held until a BOM can be ruled in or out
        self._checking_bom = start == 0

    @property
    def done(self) -> bool:
        """True once the real end is known: later bytes belong to the next range."""
        return self._counted_end is not None

    @property
    def position(self) -> int:
        """The offset of the next byte wanted (for a reader that resumes after a failed request)."""
        return self._position

    def feed(self, block: bytes) -> bool:
        """Take the next bytes of the file; True when the range needs no more."""
        if self.done or not block:
            return self.done
        offset = self._position
        self._position += len(block)
        if self._counted_start is None:
            found = _ASCII_WHITESPACE_RE.search(block)
            if found is None:
                return False
            self._counted_start = offset + found.end()
            if self._end is not None and offset + found.start() >= self._end:
                # The whole nominal range lies inside one word that the previous range counts.
                self._counted_end = self._counted_start
                return True
            block = block[found.end() :]
            offset = self._counted_start
        if self._end is not None and offset + len(block) > self._end:
            inside = max(0, self._end - offset)
            found = _ASCII_WHITESPACE_RE.search(block, inside)
            if found is not None:
                self._count(block[: found.end()])
                self._counted_end = offset + found.end()
                return True
        self._count(block)
        return False

    def _count(self, block: bytes) -> None:
        if self._checking_bom:
            self._head += block
            if len(self._head) < len(UTF8_BOM):
                return
            block = self._head.removeprefix(UTF8_BOM)
            self._head = b""
            self._checking_bom = False
        self._counter.feed(block)

    def finish(self) -> RangeCounts:
        """The counts, once `feed` returned True or the file ended."""
        if self._checking_bom:
            # Fewer bytes than a BOM in the whole file: they are not one.
            self._checking_bom = False
            self._counter.feed(self._head)
        if self._counted_start is None:
            # The file ended inside the word the range started in: the previous range counted it.
            self._counted_start = self._position
        if self._counted_end is None:
            self._counted_end = self._position
        return RangeCounts(self._counter.finish(), self._counted_start, self._counted_end)
