"""Daemon soak: files at a steady rate, injected 5xx/429, SIGKILL restarts; nothing lost or doubled.

    .venv/bin/python bench/daemon_soak.py [--duration 1800] [--rate 10] [--kills 2] [--faults 0.1]

Azurite and the emulator are started here (the emulator answers `--faults` of Batch requests with
503 or 429); the daemon is a child process (tests/integration/daemon/daemon_process.py), killed with
SIGKILL `--kills` times at evenly spread moments and restarted. Reports: inputs lost or doubled (must
be 0), the daemon's RSS and open file descriptors over time (growth after the first 5 minutes, or
the first quarter of a shorter soak), and the Batch job count (completed jobs are deleted after
`job_retention_s`, here 60 s, so it stays flat).
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


def finished_inputs(root: Path) -> list[str]:
    done = [path.name for path in (root / "done").rglob("*") if path.is_file()]
    failed = [path.name for path in (root / "failed").rglob("*") if path.is_file()]
    return done + [name for name in failed if not name.endswith(".error.json")]


async def soak(root: Path, duration_s: float, rate: float, kills: int, faults: float) -> None:
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
                "TOPN_DAEMON_BATCH_MAX_WAIT_S": "5",
                "TOPN_DAEMON_JOB_RETENTION_S": "60",
                "TOPN_POOL_ID": "soak-pool",
                "PYTHONPATH": str(ROOT),
            }
        )
        log = root / "daemon.log"
        daemon = start_daemon(inbox, env, log)
        kill_at = [duration_s * (index + 1) / (kills + 1) for index in range(kills)]
        samples: list[tuple[float, int, int, int]] = []
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
                    samples.append((elapsed, -1, -1, -1))  # a restart: a new process
                if elapsed >= next_sample:
                    next_sample += 10
                    jobs = len([job async for job in observer.list_jobs()])
                    try:
                        rss, fds = rss_and_fds(daemon.pid)
                    except (OSError, StopIteration):
                        rss, fds = -1, -1
                    samples.append((elapsed, rss, fds, jobs))
                await anyio.sleep(0.05)
            deadline = time.monotonic() + 300
            while len(await anyio.to_thread.run_sync(finished_inputs, root)) < written:
                if time.monotonic() > deadline:
                    break
                await anyio.sleep(1)
        daemon.send_signal(signal.SIGTERM)
        exit_status = daemon.wait(60)
    finally:
        await local.stop_service(emulator)
        await local.stop_service(azurite)
    names = await anyio.to_thread.run_sync(finished_inputs, root)
    expected = {f"s{index:06d}.txt" for index in range(written)}
    outputs = [path.name for path in (root / "outbox").rglob("*_OUTPUT*")]
    print(f"soak: {written} files at {rate}/s over {duration_s:.0f} s, {kills} SIGKILL restarts")
    print(f"  Batch faults injected: {faults:.0%} (503 and 429)")
    print(f"  lost: {len(expected - set(names))}, doubled in done/failed: {len(names) - len(set(names))}")
    print(
        f"  results: {len(outputs)} _OUTPUT files for {len(expected)} inputs ({len(set(outputs))} distinct)"
    )
    print(f"  drain exit status: {exit_status}")
    steady = [sample for sample in samples if sample[1] > 0 and sample[0] >= min(300, duration_s / 4)]
    last_restart = max((sample[0] for sample in samples if sample[1] == -1), default=0.0)
    steady = [sample for sample in steady if sample[0] > last_restart + 30] or steady
    if len(steady) >= 2:
        rss_growth = steady[-1][1] / steady[0][1] - 1
        fd_growth = steady[-1][2] / max(steady[0][2], 1) - 1
        first, last = steady[0], steady[-1]
        print(f"  RSS {first[1] >> 20} -> {last[1] >> 20} MiB ({rss_growth:+.1%})")
        print(f"  open fds {first[2]} -> {last[2]} ({fd_growth:+.1%})")
    print(
        "  Batch jobs over time (s: jobs): " + ", ".join(f"{int(s[0])}: {s[3]}" for s in samples if s[3] >= 0)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1800.0)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--faults", type=float, default=0.1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="topn-soak-") as folder:
        anyio.run(soak, Path(folder), args.duration, args.rate, args.kills, args.faults)


if __name__ == "__main__":
    main()
