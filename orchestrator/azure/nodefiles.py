"""What topn reads of the files a node keeps for a task or a start task (their stderr)."""

from __future__ import annotations

STDERR_TAIL_BYTES = 2048


def stderr_tail(data: bytes, max_bytes: int = STDERR_TAIL_BYTES, max_lines: int = 20) -> str:
    """The last lines of a log, decoded leniently, at most `max_bytes` and `max_lines`."""
    text = data[-max_bytes:].decode("utf-8", errors="replace")
    return "\n".join(text.rstrip("\n").splitlines()[-max_lines:])
