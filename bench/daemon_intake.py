"""Daemon intake: files claimed per second from a local inbox (tiny files; no Batch involved).

The daemon's own path - one check of the inbox (stat, completeness), SHA-256, the journal rows (one
transaction per check), the renames into `.claimed/` and the batch rows - against a baseline
measured in the same run: renaming the same number of files into a folder with nothing else.
Issue 12's goal is ≥ 1,000 files/s.

    .venv/bin/python bench/daemon_intake.py [--files 5000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import anyio

from orchestrator.journal.intake import IntakeStore
from orchestrator.service.batching import BatchLimits, Claimed, close_batches
from orchestrator.service.claims import Claimer, DaemonFolders
from orchestrator.service.intake import Inbox, walk_inbox
from orchestrator.settings import DaemonSettings


def make_files(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    old = time.time() - 60  # older than min_age_s: complete after one settle interval
    for index in range(count):
        path = folder / f"f{index:06d}.txt"
        path.write_text(f"word{index} tiny file {index}\n", encoding="utf-8")
        os.utime(path, (old, old))


def baseline_renames(folder: Path, count: int) -> float:
    target = folder.parent / "renamed"
    target.mkdir()
    started = time.perf_counter()
    for path in folder.iterdir():
        path.rename(target / path.name)
    return count / (time.perf_counter() - started)


async def daemon_claims(root: Path, count: int) -> float:
    settings = DaemonSettings(settle_s=0.01, min_age_s=0.0)
    folders = DaemonFolders(root / "inbox", root / "done", root / "failed", root / "outbox")
    store = await IntakeStore.open(root / "state")
    try:
        claimer = Claimer(store, folders, settings)
        inbox = Inbox(folders.inbox, settle_s=settings.settle_s, min_age_s=settings.min_age_s)
        limits = BatchLimits(settings.batch_max_files, settings.batch_max_bytes, settings.batch_max_wait_s)
        started = time.perf_counter()
        claimed = 0
        waiting: list[Claimed] = []
        inbox.add(await anyio.to_thread.run_sync(walk_inbox, folders.inbox), "rescan")
        while claimed < count:
            complete = await inbox.check()
            if complete:
                new, _ = await claimer.claim(complete)
                claimed += len(new)
                waiting.extend(Claimed(item.claim_id, item.size_bytes, 0.0) for item in new)
                batches, waiting = close_batches(waiting, limits, time.monotonic())
                for number, batch in enumerate(batches):
                    await store.create_batch(f"b{claimed}-{number}", [item.claim_id for item in batch], 0)
            else:
                await anyio.sleep(settings.settle_s)
        return count / (time.perf_counter() - started)
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="topn-intake-") as folder:
        root = Path(folder)
        make_files(root / "base" / "inbox", args.files)
        baseline = baseline_renames(root / "base" / "inbox", args.files)
        make_files(root / "daemon" / "inbox", args.files)
        rate = anyio.run(daemon_claims, root / "daemon", args.files)
    print(f"files: {args.files}")
    print(f"daemon intake: {rate:,.0f} files/s claimed (check + SHA-256 + journal + rename + batch rows)")
    print(f"baseline renames: {baseline:,.0f} files/s")
    print(f"ratio daemon/baseline: {rate / baseline:.3f}")
    print(f"goal >= 1,000 files/s: {'met' if rate >= 1000 else 'NOT met'}")


if __name__ == "__main__":
    main()
