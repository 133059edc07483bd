"""Keep a long-lived process's resident memory flat: cap glibc's malloc arenas before threads start.

glibc gives each new thread that meets a busy arena an arena of its own (up to 8 per core). Worker
threads (journal transactions, file reads, hashing) come and go, and each arena keeps the memory
freed in it scattered among live blocks, so a daemon's resident size crept up for as long as it
ran (+18-21 % over 15 minutes of a 30-minute soak at 10 files/s) although the Python heap stayed
flat (tracemalloc). With the arenas capped it stays flat (docs/daemon.md, "Memory").
"""

from __future__ import annotations

import ctypes

# mallopt's parameter number for the arena cap (glibc's malloc.h: M_ARENA_MAX).
M_ARENA_MAX = -8


def cap_malloc_arenas(most: int) -> int | None:
    """Ask glibc for at most `most` malloc arenas; the cap now in force, or None (0 given, no glibc)."""
    if most <= 0:
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS' libc has no mallopt)
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return most if mallopt(M_ARENA_MAX, most) == 1 else None
