"""Where a `topn run`'s CPU goes, per file and per stage, from py-spy's collapsed stacks.

    .venv/bin/python -m bench.scale_run --scale 1000 --seed-files 0 --profile /tmp/prof
    .venv/bin/python -m bench.profile_map /tmp/prof/topn-1000.folded --files 1000

py-spy (`--format raw --gil`) writes one line per distinct stack, `frame;frame;... samples`, of
the thread holding the GIL: samples / rate is the CPU seconds of Python code (C work that lets the
GIL go, such as fsync, sqlite's own steps or hashing big buffers, is not in it; getrusage of an
unprofiled run gives the whole, and its system part). Each
stack goes to the first stage below that one of its frames matches: the order puts the narrow
stages (events, journal, file reads and writes) before the broad ones (an upload's request) so
that an event emitted inside an upload counts as events. Nothing here is asserted: it is a map.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# py-spy frames read `function (path/to/file.py:line)`; the line is left out when the stack is folded.
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


@dataclass(frozen=True)
class Stage:
    """A stage of a run, recognised by a frame's function name or a fragment of its file's path."""

    name: str
    functions: frozenset[str] = frozenset()
    files: tuple[str, ...] = ()

    def matches(self, function: str, file: str) -> bool:
        return function in self.functions or any(fragment in file for fragment in self.files)


def _stage(name: str, functions: Iterable[str] = (), files: Iterable[str] = ()) -> Stage:
    return Stage(name, frozenset(functions), tuple(files))


STAGES: tuple[Stage, ...] = (
    _stage("imports", ["_find_and_load"]),
    _stage("events (structlog)", files=["structlog/"]),
    _stage("journal (sqlite, its thread)", files=["orchestrator/journal/"]),
    _stage("discovery", ["discover_inputs", "journal_inputs", "new_run_context", "plan_work_units"]),
    _stage("input reads + md5 (thread)", ["_version_and_md5", "file_version", "read_md5"]),
    _stage("_OUTPUT writes (thread)", ["save_outputs", "write_result"]),
    _stage("result decode", ["decode_result_blob"]),
    _stage("render + merge counts", ["settle_unit", "_add_success", "_report_saved", "top_of"]),
    _stage("summary", ["run_summary", "write_summary"]),
    _stage(
        "thread hops (anyio to_thread)", files=["anyio/to_thread.py"], functions=["run_sync_in_worker_thread"]
    ),
    _stage("manifests + task adds", ["stage_manifests", "submit_tasks", "task_of_unit"]),
    _stage("result download request", ["read_unit_result"]),
    _stage("upload request (SDK pipeline)", ["_upload_once", "upload_input_file"]),
    _stage("monitor (polling)", ["watch_job"]),
    _stage("other orchestrator code", files=["orchestrator/"]),
    _stage("event loop + sockets (aiohttp protocol, asyncio)", files=["asyncio/", "aiohttp/", "anyio/"]),
)
OTHER = "other"


def parse_frame(text: str) -> tuple[str, str]:
    """(function, file) of one py-spy frame."""
    match = _FRAME.match(text.strip())
    if match is None:
        return text.strip(), ""
    return match["function"], match["file"]


def read_folded(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    """Each stack (root first) and its sample count."""
    stacks = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text or not count.isdigit():
            continue
        stacks.append(([parse_frame(frame) for frame in stack_text.split(";")], int(count)))
    return stacks


def classify(frames: Sequence[tuple[str, str]], stages: Sequence[Stage] = STAGES) -> str:
    """The first stage (in `stages` order) that any frame of the stack matches."""
    for stage in stages:
        if any(stage.matches(function, file) for function, file in frames):
            return stage.name
    return OTHER


def _short(file: str) -> str:
    for marker in ("site-packages/", "lib/python3"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file.rsplit("/work/", 1)[-1]


def report(path: Path, files: int, rate_hz: float, top: int) -> None:
    stacks = read_folded(path)
    by_stage: Counter[str] = Counter()
    leaves: dict[str, Counter[str]] = {}
    for frames, count in stacks:
        stage = classify(frames)
        by_stage[stage] += count
        leaf_function, leaf_file = frames[-1]
        leaves.setdefault(stage, Counter())[f"{_short(leaf_file)} {leaf_function}"] += count
    total = sum(by_stage.values())
    per_file = 1000.0 / rate_hz / files
    sampled = f"{total / rate_hz:.1f} s CPU sampled, {total * per_file:.2f} ms per file"
    print(f"{path.name}: {sampled} ({files} files)")
    print(f"{'stage':52} {'ms/file':>8} {'share':>6}")
    for stage, count in by_stage.most_common():
        print(f"{stage:52} {count * per_file:>8.3f} {count / total:>6.1%}")
    for stage, _ in by_stage.most_common():
        print(f"\n{stage}: where its samples were (innermost frame)")
        for leaf, leaf_count in leaves[stage].most_common(top):
            print(f"  {leaf_count * per_file:>7.3f} ms/file  {leaf}")


# Launching a profiled child (bench/scale_run.py --profile) and reading what it leaves.


def summary_of(stdout: str) -> dict[str, Any]:
    """summary.json's content from `topn run --json`'s stdout (a profiler may print around it)."""
    start = stdout.find("{") if stdout.startswith("{") else stdout.find("\n{") + 1
    summary: dict[str, Any] = json.JSONDecoder().raw_decode(stdout, start)[0]
    return summary


def profiler_launcher(profile_dir: Path | None, label: str) -> list[str]:
    """The interpreter under py-spy (the thread holding the GIL: Python's CPU), or plain without a folder.

    py-spy is a measuring tool, not a dependency: `.venv/bin/pip install py-spy` first. A profiled
    run's own figures (CPU, wall time) include py-spy's cost: measure and profile in separate runs.
    """
    if profile_dir is None:
        return [sys.executable]
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy (a measuring tool only)")
    profile_dir.mkdir(parents=True, exist_ok=True)
    output = profile_dir / f"topn-{label}.folded"
    return [
        *(py_spy, "record", "--format", "raw", "--gil", "--rate", str(PROFILE_RATE_HZ), "--nonblocking"),
        *("--output", str(output), "--", sys.executable),
    ]


# Samples per second per active thread: each sample stands for 1/rate s of that thread's CPU.
PROFILE_RATE_HZ = 250


def process_cpu_s(pid: int) -> float:
    """CPU seconds of a live process and of its children it has waited for (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    ticks = sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folded", type=Path, help="py-spy --format raw output")
    parser.add_argument("--files", type=int, required=True, help="the run's number of files")
    parser.add_argument("--rate", type=float, default=250.0, help="py-spy's --rate (samples per second)")
    parser.add_argument("--top", type=int, default=8, help="innermost frames shown per stage")
    args = parser.parse_args()
    report(args.folded, args.files, args.rate, args.top)


if __name__ == "__main__":
    main()
