"""Daemon soak: files at a steady rate, injected 5xx/429, SIGKILL restarts; nothing lost or doubled.

    .venv/bin/python bench/daemon_soak.py [--duration 1800] [--rate 10] [--kills 2] [--faults 0.1]
        [--samples FILE] [--keep DIR] [--batch-wait 30] [--nodes 1]

Azurite and the emulator are started here (the emulator answers `--faults` of Batch requests with
503 or 429); the daemon is a child process (tests/integration/daemon/daemon_process.py), killed with
SIGKILL `--kills` times at moments spread evenly over the first half of the soak and restarted, so
the last daemon process lives at least half the soak: its RSS and open file descriptors are judged
from 5 minutes after its start (or a quarter of its life, if shorter) to the end. Reports: inputs
finished, still unfinished (claimed, in the journal: a pipeline that cannot keep up shows here,
and in the backlog figure) and lost or doubled (must be 0), `_OUTPUT` files per input, RSS and fd
growth (first steady sample to the last and to the peak; medians of the first and last minute,
since open fds swing with HTTP connections), and the Batch job count by state over time
(completed jobs are deleted after `job_retention_s`, here 60 s, so the count stays flat). Every
sample (every 10 s) is appended to `--samples` as CSV while the soak runs, so it can be watched.
After the stream stops, the backlog gets up to 15 minutes to finish (it stops waiting after 5
minutes without progress: under load a batch of a few hundred files takes minutes).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple, TextIO

import anyio
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from orchestrator.local import processes as local

ROOT = Path(__file__).resolve().parents[1]


def start_daemon(inbox: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.daemon.daemon_process", str(inbox)],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def rss_and_fds(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return rss_kb * 1024, len(list(Path(f"/proc/{pid}/fd").iterdir()))


class Sample(NamedTuple):
    """One look at the daemon and the Batch account; rss = fds = -1 marks a restart."""

    elapsed_s: float
    pid: int
    rss: int
    fds: int
    jobs_active: int
    jobs_completed: int
    written: int
    finished: int  # inputs in done/ or failed/ so far


def unfinished_inputs(root: Path) -> list[str]:
    """Inputs still in the inbox or claimed (`inbox/.claimed/`): in the journal, not lost."""
    return [path.name for path in (root / "inbox").rglob("*.txt") if path.is_file()]


def median(values: list[int]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def finished_inputs(root: Path) -> list[str]:
    done = [path.name for path in (root / "done").rglob("*") if path.is_file()]
    failed = [path.name for path in (root / "failed").rglob("*") if path.is_file()]
    return done + [name for name in failed if not name.endswith(".error.json")]


async def count_jobs(observer: BatchClient) -> tuple[int, int]:
    """Jobs not completed and jobs completed (the retention sweep deletes the latter)."""
    states = [str(job.state) async for job in observer.list_jobs()]
    completed = sum(1 for state in states if state.lower().endswith("completed"))
    return len(states) - completed, completed


def record(samples: list[Sample], sample: Sample, out: TextIO | None) -> None:
    samples.append(sample)
    if out is not None:
        out.write(",".join(str(round(value, 1)) for value in sample) + "\n")
        out.flush()


async def soak(
    root: Path,
    duration_s: float,
    rate: float,
    kills: int,
    faults: float,
    samples_file: Path | None,
    batch_wait_s: float,
    nodes: int,
) -> None:
    azurite = await local.start_azurite(root / "azurite", root / "logs")
    emulator = await local.start_emulator(
        root / "nodes",
        root / "logs",
        extra_args=[
            "--fault-503",
            str(faults / 2),
            "--fault-429",
            str(faults / 2),
            "--fault-retry-after-s",
            "0.5",
        ],
    )
    try:
        inbox = root / "inbox"
        inbox.mkdir()
        env = {name: value for name, value in os.environ.items() if not name.startswith("TOPN_")}
        env.update(
            {
                "TOPN_LOCAL_ENABLED": "false",
                "TOPN_BATCH_ENDPOINT": emulator.endpoint,
                "TOPN_BATCH_ACCOUNT_KEY": local.EMULATOR_ACCOUNT_KEY,
                "TOPN_STORAGE_BLOB_ENDPOINT": azurite.endpoint,
                "TOPN_STORAGE_ACCOUNT_KEY": local.AZURITE_ACCOUNT_KEY,
                "TOPN_LOCAL_STATE_DIR": str(root / "state"),
                "TOPN_DAEMON_AUTOSCALE": "false",
                "TOPN_DAEMON_SETTLE_S": "0.5",
                "TOPN_DAEMON_MIN_AGE_S": "1",
                "TOPN_DAEMON_BATCH_MAX_WAIT_S": str(batch_wait_s),
                # One node, two slots: batches of a few hundred tiny files become 8 tasks, so task
                # processes (CPU-bound on a shared 2-core machine) do not fall behind 10 files/s.
                "TOPN_POOL_DEDICATED_NODES": str(nodes),
                "TOPN_DAEMON_JOB_RETENTION_S": "60",
                "TOPN_POOL_ID": "soak-pool",
                "PYTHONPATH": str(ROOT),
            }
        )
        log = root / "daemon.log"
        daemon = start_daemon(inbox, env, log)
        kill_at = [duration_s / 2 * (index + 1) / (kills + 1) for index in range(kills)]
        samples: list[Sample] = []
        out = samples_file.open("w", encoding="utf-8") if samples_file else None
        if out is not None:
            out.write(",".join(Sample._fields) + "\n")
        credential = AzureNamedKeyCredential(local.EMULATOR_ACCOUNT_NAME, local.EMULATOR_ACCOUNT_KEY)
        written = 0
        started = time.monotonic()
        next_sample = 0.0
        async with BatchClient(emulator.endpoint, credential) as observer:
            while (elapsed := time.monotonic() - started) < duration_s:
                while written < int(elapsed * rate):
                    (inbox / f"s{written:06d}.txt").write_text(f"soak{written} word word\n", encoding="utf-8")
                    written += 1
                if kill_at and elapsed >= kill_at[0]:
                    kill_at.pop(0)
                    daemon.send_signal(signal.SIGKILL)
                    daemon.wait()
                    daemon = start_daemon(inbox, env, log)
                    record(samples, Sample(elapsed, daemon.pid, -1, -1, -1, -1, written, -1), out)
                if elapsed >= next_sample:
                    next_sample += 10
                    try:
                        active, completed = await count_jobs(observer)
                    except Exception:  # an injected fault past the SDK's retries: no job figure this time
                        active, completed = -2, -2
                    try:
                        rss, fds = rss_and_fds(daemon.pid)
                    except (OSError, StopIteration):
                        rss, fds = -2, -2
                    finished = len(await anyio.to_thread.run_sync(finished_inputs, root))
                    sample = Sample(elapsed, daemon.pid, rss, fds, active, completed, written, finished)
                    record(samples, sample, out)
                await anyio.sleep(0.05)
            # The backlog gets time to finish while it makes progress (at most 15 min).
            deadline, last_count, last_progress = time.monotonic() + 900, -1, time.monotonic()
            while (count := len(await anyio.to_thread.run_sync(finished_inputs, root))) < written:
                if count != last_count:
                    last_count, last_progress = count, time.monotonic()
                if time.monotonic() > deadline or time.monotonic() - last_progress > 300:
                    break
                await anyio.sleep(2)
            drained_at = time.monotonic() - started
        daemon.send_signal(signal.SIGTERM)
        exit_status = daemon.wait(60)
        if out is not None:
            out.close()
    finally:
        await local.stop_service(emulator)
        await local.stop_service(azurite)
    names = await anyio.to_thread.run_sync(finished_inputs, root)
    waiting = set(await anyio.to_thread.run_sync(unfinished_inputs, root))
    expected = {f"s{index:06d}.txt" for index in range(written)}
    outputs = [path.name for path in (root / "outbox").rglob("*_OUTPUT*")]
    print(f"soak: {written} files at {rate}/s over {duration_s:.0f} s, {kills} SIGKILL restarts")
    print(f"  Batch faults: {faults:.0%} (503 and 429); batch_max_wait_s {batch_wait_s}; {nodes} node(s)")
    print(
        f"  finished: {len(set(names))} by {drained_at:.0f} s; unfinished (claimed, in the journal): "
        f"{len(waiting - set(names))}"
    )
    print(
        f"  lost: {len(expected - set(names) - waiting)}, "
        f"doubled in done/failed: {len(names) - len(set(names))}"
    )
    print(
        f"  results: {len(outputs)} _OUTPUT files for {len(expected)} inputs ({len(set(outputs))} distinct)"
    )
    print(f"  drain exit status: {exit_status}")
    report_growth(samples, duration_s)


def report_growth(samples: list[Sample], duration_s: float) -> None:
    """RSS, fds and jobs of the last daemon process, from its warm-up to the end of the soak."""
    restarts = [sample.elapsed_s for sample in samples if sample.rss == -1]
    last_start = max(restarts, default=0.0)
    warm_up = min(300.0, (duration_s - last_start) / 4)
    steady = [s for s in samples if s.rss > 0 and s.elapsed_s >= last_start + warm_up]
    if len(steady) < 2:
        print("  too few steady samples to judge growth")
        return
    first, last = steady[0], steady[-1]
    rss_peak = max(s.rss for s in steady)
    fds_peak = max(s.fds for s in steady)
    # Single samples of open fds swing with the HTTP connections in flight: minute medians compare.
    head, tail = steady[:6], steady[-6:]
    rss_head, rss_tail = median([s.rss for s in head]), median([s.rss for s in tail])
    fds_head, fds_tail = median([s.fds for s in head]), median([s.fds for s in tail])
    print(
        f"  last daemon process judged from {first.elapsed_s:.0f} s to {last.elapsed_s:.0f} s "
        f"({len(steady)} samples; restarts at {', '.join(f'{t:.0f} s' for t in restarts) or 'none'})"
    )
    print(
        f"  RSS {first.rss >> 20} -> {last.rss >> 20} MiB ({last.rss / first.rss - 1:+.1%}), "
        f"peak {rss_peak >> 20} MiB ({rss_peak / first.rss - 1:+.1%}); minute medians "
        f"{rss_head / 2**20:.0f} -> {rss_tail / 2**20:.0f} MiB ({rss_tail / rss_head - 1:+.1%})"
    )
    print(
        f"  open fds minute medians {fds_head:.0f} -> {fds_tail:.0f} ({fds_tail / max(fds_head, 1) - 1:+.1%})"
    )
    backlog = [s.written - s.finished for s in steady]
    print(f"  backlog (written - finished), steady window: {backlog[0]} -> {backlog[-1]}, max {max(backlog)}")
    print(
        f"  open fds {first.fds} -> {last.fds} ({last.fds / max(first.fds, 1) - 1:+.1%}), "
        f"peak {fds_peak} ({fds_peak / max(first.fds, 1) - 1:+.1%})"
    )
    jobs = [s for s in steady if s.jobs_active >= 0]
    if jobs:
        totals = [s.jobs_active + s.jobs_completed for s in jobs]
        print(
            f"  Batch jobs in the steady window: {min(totals)}..{max(totals)} "
            f"(first {totals[0]}, last {totals[-1]}; at most {max(s.jobs_completed for s in jobs)} completed "
            "awaiting deletion)"
        )
    print(
        "  Batch jobs over time (s: active+completed): "
        + ", ".join(
            f"{int(s.elapsed_s)}: {s.jobs_active}+{s.jobs_completed}"
            for s in samples[::6]
            if s.jobs_active >= 0
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1800.0)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--faults", type=float, default=0.1)
    parser.add_argument("--samples", type=Path, default=None, help="append every sample here as CSV")
    parser.add_argument("--keep", type=Path, default=None, help="work in this new folder and keep it")
    parser.add_argument("--batch-wait", type=float, default=30.0, help="[daemon] batch_max_wait_s")
    parser.add_argument("--nodes", type=int, default=1, help="dedicated nodes (two task slots each)")
    args = parser.parse_args()
    settings = (args.duration, args.rate, args.kills, args.faults, args.samples, args.batch_wait, args.nodes)
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        anyio.run(soak, args.keep, *settings)
        return
    with tempfile.TemporaryDirectory(prefix="topn-soak-") as folder:
        anyio.run(soak, Path(folder), *settings)


if __name__ == "__main__":
    main()
