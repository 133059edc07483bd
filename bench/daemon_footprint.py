"""The daemon's footprint: memory when idle, open file descriptors batch after batch.

    .venv/bin/python bench/daemon_footprint.py [--batches 30] [--files 2] [--idle-s 15] [--keep DIR]

Starts `topn daemon` in local mode (it starts its own Azurite and emulator) on an empty inbox, as a
user would, and waits `--idle-s` after `daemon.ready`. Then reports the daemon process's memory
(/proc/PID/status VmRSS, VmHWM, threads; /proc/PID/smaps_rollup) and its open file descriptors by
kind (TCP sockets by the service they reach, the health server's listener, SQLite files, pipes,
inotify, epoll). Then `--batches` micro-batches of `--files` tiny files go through one by one
(each waits until `daemon.batch_finished` events account for its files), and the descriptors
are counted after each: a descriptor leaked per batch shows as a count that grows with the batch
number, where pooled HTTP connections stay within the pools' bounds. Nothing here is pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]


class DaemonProcess:
    """`topn daemon` as a child, its JSON events read on a thread."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.events: list[dict[str, Any]] = []
        self._log = (root / "daemon.log").open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "orchestrator", "daemon", "--inbox", str(root / "inbox")),
                *("--listen", "127.0.0.1:0", "--config", str(ROOT / "config" / "local.toml")),
            ],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._log.write(line)
            try:
                self.events.append(json.loads(line))
            except ValueError:
                continue

    def wait_event(self, name: str, count: int = 1, timeout_s: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [event for event in list(self.events) if event.get("event") == name]
            if len(found) >= count:
                return found[count - 1]
            if self.process.poll() is not None:
                raise SystemExit(f"the daemon exited ({self.process.returncode}); see daemon.log")
            time.sleep(0.05)
        raise SystemExit(f"no {name} event #{count} within {timeout_s} s")

    def wait_files_finished(self, files: int, timeout_s: float = 120) -> None:
        """Until the finished batches hold `files` files (a burst may close as more than one batch)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            finished = [event for event in list(self.events) if event.get("event") == "daemon.batch_finished"]
            if sum(int(event.get("files", 0)) for event in finished) >= files:
                return
            if self.process.poll() is not None:
                raise SystemExit(f"the daemon exited ({self.process.returncode}); see daemon.log")
            time.sleep(0.05)
        raise SystemExit(f"{files} files not finished within {timeout_s} s")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        finally:
            self._log.close()


def memory(pid: int) -> dict[str, int]:
    """kB figures of /proc/PID/status and smaps_rollup, and the thread count."""
    figures: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "VmSize", "Threads"):
            figures[name] = int(value.split()[0])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text(encoding="utf-8").splitlines()[1:]:
        name, _, value = line.partition(":")
        if name in ("Pss", "Private_Dirty", "Anonymous"):
            figures[f"smaps.{name}"] = int(value.split()[0])
    return figures


def _socket_ports() -> dict[int, tuple[int, int, str]]:
    """Socket inode -> (local port, remote port, TCP state) for every TCP socket of the machine."""
    ports: dict[int, tuple[int, int, str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text(encoding="utf-8").splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            ports[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state)
    return ports


def descriptors(pid: int, services: dict[int, str]) -> Counter[str]:
    """The process's open descriptors by kind."""
    ports = _socket_ports()
    kinds: Counter[str] = Counter()
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(entry.readlink())
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inode = int(target[8:-1])
            if inode not in ports:
                kinds["socket (unix/udp)"] += 1
                continue
            _, remote, state = ports[inode]
            if state == "0A":  # LISTEN
                kinds["tcp listen"] += 1
            else:
                kinds[f"tcp to {services.get(remote, f'port {remote}')}"] += 1
        elif target.startswith("pipe:"):
            kinds["pipe"] += 1
        elif target.startswith("anon_inode:"):
            kinds[target.removeprefix("anon_inode:").strip("[]")] += 1
        elif ".sqlite3" in target:
            kinds["sqlite " + target.rsplit(".sqlite3", 1)[1].lstrip("-") or "sqlite db"] += 1
        elif target.startswith("/dev/"):
            kinds[target] += 1
        else:
            kinds[f"file {Path(target).name}"] += 1
    return kinds


def _listening_ports(pid: int) -> set[int]:
    ports = _socket_ports()
    found = set()
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(entry.readlink())
        except OSError:
            continue
        if target.startswith("socket:["):
            local, _, state = ports.get(int(target[8:-1]), (0, 0, ""))
            if state == "0A":
                found.add(local)
    return found


def service_ports(pid: int) -> dict[int, str]:
    """The listening ports of the daemon's child services: Azurite's and the emulator's."""
    named: dict[int, str] = {}
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="utf-8").split()
    for child in children:
        command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        name = (
            "azurite" if "azurite" in command else "emulator" if "emulator" in command else f"child {child}"
        )
        for port in _listening_ports(int(child)):
            named[port] = name
    return named


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--files", type=int, default=2, help="files per batch")
    parser.add_argument("--idle-s", type=float, default=15.0)
    parser.add_argument("--keep", type=Path, help="use this folder (kept) instead of a temporary one")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="topn-footprint-"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "inbox").mkdir(exist_ok=True)
    env = {name: value for name, value in os.environ.items() if not name.startswith("TOPN_")}
    env.update(
        {
            "TOPN_LOCAL_STATE_DIR": str(root / "state"),
            "TOPN_DAEMON_SETTLE_S": "0.2",
            "TOPN_DAEMON_MIN_AGE_S": "0.3",
            "TOPN_DAEMON_BATCH_MAX_WAIT_S": "0.5",
            "PYTHONPATH": str(ROOT),
        }
    )
    daemon = DaemonProcess(root, env)
    try:
        ready = daemon.wait_event("daemon.ready")
        pid = daemon.process.pid
        time.sleep(args.idle_s)
        services = service_ports(pid)
        services[int(urlsplit(ready["url"]).port or 0)] = "health server"
        idle = memory(pid)
        print(
            f"idle, {args.idle_s:.0f} s after daemon.ready (kB): "
            + ", ".join(f"{k} {v}" for k, v in idle.items())
        )
        print(
            f"idle descriptors: {sum(descriptors(pid, services).values())} {dict(descriptors(pid, services))}"
        )
        print("batch  fds  tcp  rss_kB  kinds")
        written = 0
        counts: list[int] = []
        for number in range(1, args.batches + 1):
            for index in range(args.files):
                target = root / "inbox" / f"b{number:04d}-{index}.txt"
                target.write_text(f"footprint batch {number} file {index} words words\n", encoding="utf-8")
                written += 1
            daemon.wait_files_finished(written)
            time.sleep(1.0)  # let the batch's last requests settle
            kinds = descriptors(pid, services)
            total = sum(kinds.values())
            counts.append(total)
            tcp = sum(count for kind, count in kinds.items() if kind.startswith("tcp to"))
            print(f"{number:5d} {total:4d} {tcp:4d} {memory(pid)['VmRSS']:7d}  {dict(sorted(kinds.items()))}")
        if counts:
            print(
                f"descriptors after batch 1: {counts[0]}, after batch {len(counts)}: {counts[-1]} "
                f"(min {min(counts)}, max {max(counts)})"
            )
    finally:
        status = daemon.stop()
        print(f"daemon exit status {status}; log in {root / 'daemon.log'}")


if __name__ == "__main__":
    main()
