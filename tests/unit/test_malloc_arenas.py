"""The daemon's cap on glibc malloc arenas takes effect: threads that allocate at once share arenas.

Checked in a fresh interpreter (arenas, once made, stay for the process's life) by counting glibc's
thread arenas in /proc/self/maps: each is an anonymous mapping of 64 MiB (read-write head plus
reserved tail) aligned on 64 MiB.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from orchestrator.service.memory import cap_malloc_arenas

PROBE = textwrap.dedent(
    """
    import sys, threading
    from orchestrator.service.memory import cap_malloc_arenas

    HEAP = 64 * 1024 * 1024

    def thread_arenas():
        maps = []
        with open("/proc/self/maps") as listing:
            for line in listing:
                fields = line.split()
                low, high = (int(bound, 16) for bound in fields[0].split("-"))
                maps.append((low, high, fields[1], len(fields) > 5))
        found = 0
        for position, (low, high, perms, named) in enumerate(maps):
            if named or low % HEAP or perms != "rw-p":
                continue
            end = high
            if position + 1 < len(maps):
                next_low, next_high, next_perms, next_named = maps[position + 1]
                if next_low == high and next_perms == "---p" and not next_named:
                    end = next_high
            found += end - low == HEAP
        return found

    print(cap_malloc_arenas(int(sys.argv[1])))
    start = threading.Barrier(8)
    held = []

    def allocate():
        start.wait()  # all at once, so each finds the arenas busy
        held.append([bytes(4096 + size) for size in range(2000)])  # above pymalloc's 512 bytes

    threads = [threading.Thread(target=allocate) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(thread_arenas())
    """
)


def arenas_after_eight_threads(cap: int) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(cap)], capture_output=True, text=True, timeout=60, check=True
    )
    said, arenas = done.stdout.split()
    return said, int(arenas)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's arenas are read from /proc")
def test_capped_arenas_are_shared_by_threads_that_would_each_make_one() -> None:
    uncapped_said, uncapped = arenas_after_eight_threads(0)
    capped_said, capped = arenas_after_eight_threads(2)
    assert (uncapped_said, capped_said) == ("None", "2")
    # Without the cap the eight threads make several arenas; with it, one besides the main arena.
    assert uncapped >= 3, uncapped
    assert capped == 1, capped


def test_a_zero_cap_leaves_glibc_alone() -> None:
    assert cap_malloc_arenas(0) is None
