"""Split one streamed read of a blob into the exact extents of the inputs packed in it.

A unit's small local inputs are uploaded as one pack blob; the manifest gives each its extent
(offset, length) in that blob. The node reads the pack's span in one streamed GET and hands each
chunk to `PackSplitter.feed`, which cuts it into pieces of the extents it touches, in stream order,
and says when an extent is complete. Memory holds one chunk and its pieces, never the pack. Extents
may come in any order, be empty, or (though topn never writes such a pack) overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Piece:
    """Bytes of one extent (by its position in the list given), and whether they are its last."""

    extent: int
    data: bytes
    done: bool


class PackSplitter:
    """Feed a blob's bytes from `start` on, chunk by chunk; each call returns the extents' pieces."""

    def __init__(self, extents: Sequence[tuple[int, int]]) -> None:
        for offset, length in extents:
            if offset < 0 or length < 0:
                raise ValueError(f"bad extent ({offset}, {length})")
        self._extents = list(extents)
        self._order = sorted(range(len(extents)), key=lambda index: extents[index])
        self.start = min((offset for offset, _ in extents), default=0)
        self.end = max((offset + length for offset, length in extents), default=0)
        self._position = self.start
        self._next = 0  # in `_order`: the first extent not opened yet
        self._active: list[int] = []  # opened, not complete

    @property
    def position(self) -> int:
        """The blob offset of the next byte wanted."""
        return self._position

    def feed(self, chunk: bytes) -> list[Piece]:
        """The pieces of the extents that `chunk` (the next bytes of the blob) touches, in extent order.

        An empty chunk completes the empty extents at the current position (all of them, when the
        pack's span is empty and nothing needs to be read).
        """
        chunk_start = self._position
        chunk_end = chunk_start + len(chunk)
        self._position = chunk_end
        while self._next < len(self._order):
            offset, length = self._extents[self._order[self._next]]
            if offset > chunk_end or (offset == chunk_end and length > 0):
                break
            self._active.append(self._order[self._next])
            self._next += 1
        pieces: list[Piece] = []
        still_open: list[int] = []
        for index in self._active:
            offset, length = self._extents[index]
            low = max(offset, chunk_start) - chunk_start
            high = min(offset + length, chunk_end) - chunk_start
            done = offset + length <= chunk_end
            data = chunk[low:high] if high > low else b""
            if data or done:
                pieces.append(Piece(index, data, done))
            if not done:
                still_open.append(index)
        self._active = still_open
        return pieces

    def unfinished(self) -> list[int]:
        """The extents not complete yet (after the stream ended: it was shorter than the pack)."""
        return sorted(self._active + self._order[self._next :])
