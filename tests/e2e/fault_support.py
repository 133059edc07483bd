"""Helpers shared by the fault tests and bench/fault_runs.py: corpora, live CLI runs, emulator state.

Everything here talks to the real services (the emulator's HTTP API, Azurite, `topn` as a process);
the expected results come from `run_cli.reference_top`, written from the spec, never from topn.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from tests.e2e.run_cli import ROOT, reference_top

# A small vocabulary with a skewed draw, so every file has a clear top list and ties too.
VOCABULARY = tuple(
    [
        "harbour",
        "gull",
        "net",
        "tide",
        "rope",
        "anchor",
        "lantern",
        "keel",
        "mast",
        "sail",
        "storm",
        "quay",
        "salt",
        "fog",
        "bell",
        "orchard",
        "apple",
        "wasp",
        "jam",
        "pear",
        "ladder",
        "basket",
        "cider",
        "blossom",
        "hedge",
        "mill",
        "wheel",
        "flour",
        "loaf",
    ]
)


def write_corpus(folder: Path, files: int, seed: int = 7) -> dict[str, str]:
    """`files` small texts under `folder` (some in a subfolder); returns relative path -> text."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(len(VOCABULARY))]
    texts: dict[str, str] = {}
    for number in range(files):
        relpath = f"part{number % 3}/text {number:04d}.txt"
        words = rng.choices(VOCABULARY, weights=weights, k=rng.randint(8, 40))
        texts[relpath] = " ".join(words) + "\n"
    for relpath, text in texts.items():
        path = folder / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return texts


def check_summary(summary: Mapping[str, Any], texts: Mapping[str, str], top: int = 10) -> list[str]:
    """Every way `summary` differs from the independent reference (empty when it is right)."""
    problems: list[str] = []
    if summary.get("state") != "SUCCEEDED":
        problems.append(f"state is {summary.get('state')!r}, not 'SUCCEEDED'")
    files = {entry["path"]: entry for entry in summary.get("files", [])}
    if set(files) != set(texts):
        problems.append(f"files differ: missing {set(texts) - set(files)}, extra {set(files) - set(texts)}")
    for relpath, text in texts.items():
        entry = files.get(relpath)
        if entry is None:
            continue
        if entry["status"] != "succeeded":
            problems.append(f"{relpath}: status {entry['status']} ({entry.get('error')})")
        elif entry["top"] != reference_top([text], "words", top):
            problems.append(f"{relpath}: top {entry['top']} is wrong")
    in_run_order = [texts[relpath] for relpath in sorted(texts)]
    if summary.get("top") != reference_top(in_run_order, "words", top):
        problems.append(f"run-level top {summary.get('top')} is wrong")
    return problems


async def emulator_stats(endpoint: str) -> dict[str, Any]:
    """The emulator's request and fault counters (GET /_emulator/stats)."""
    async with aiohttp.ClientSession() as session, session.get(f"{endpoint}/_emulator/stats") as response:
        response.raise_for_status()
        stats: dict[str, Any] = await response.json()
        return stats


def stats_delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """What one run added to the emulator's counters (the emulator may have served earlier runs)."""

    def minus(new: Mapping[str, int], old: Mapping[str, int]) -> dict[str, int]:
        return {key: value - old.get(key, 0) for key, value in new.items() if value - old.get(key, 0)}

    return {
        "requests": minus(after["requests"], before["requests"]),
        "requests_total": after["requests_total"] - before["requests_total"],
        "responses_by_status": minus(after["responses_by_status"], before["responses_by_status"]),
        "faults_injected": minus(after["faults_injected"], before["faults_injected"]),
    }


async def job_tasks(endpoint: str, account_name: str, account_key: str, job_id: str) -> list[Any]:
    """Every task of a job, read back through the Batch API with the real SDK client."""
    credential = AzureNamedKeyCredential(account_name, account_key)
    async with BatchClient(endpoint, credential) as client:
        return [task async for task in client.list_tasks(job_id)]


@dataclass
class LiveRun:
    """A `topn` process whose JSON events are read as they arrive."""

    exit_code: int = -1
    stdout: str = ""
    stderr_lines: list[str] = field(default_factory=list)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stderr_lines if line.strip()]

    def summary(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.stdout)
        return document

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)


EventHook = Callable[[dict[str, Any]], Awaitable[None]]


async def run_topn_live(
    args: list[str],
    cwd: Path,
    env: Mapping[str, str],
    on_event: EventHook | None = None,
    on_started: Callable[[int], None] | None = None,
) -> LiveRun:
    """Run `python -m orchestrator ARGS`, calling `on_event` for each event line as it is written.

    The hook runs while topn keeps going, so a test can act at a chosen moment of a live run
    (stop a service, kill the emulator, signal topn: `on_started` receives its pid) and then let
    the run carry on.
    """
    run = LiveRun()
    argv = [sys.executable, "-m", "orchestrator", *args, "--config", str(ROOT / "config" / "local.toml")]
    process: Process = await anyio.open_process(argv, cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)})
    if on_started is not None:
        on_started(process.pid)
    async with process:
        assert process.stdout is not None and process.stderr is not None
        stdout_stream, stderr_stream = process.stdout, process.stderr

        async def read_stdout() -> None:
            run.stdout = "".join([chunk async for chunk in TextReceiveStream(stdout_stream)])

        async def read_events() -> None:
            pending = ""
            async for chunk in TextReceiveStream(stderr_stream):
                pending += chunk
                *complete, pending = pending.split("\n")
                for line in complete:
                    run.stderr_lines.append(line)
                    if on_event is not None and line.startswith("{"):
                        await on_event(json.loads(line))
            if pending:
                run.stderr_lines.append(pending)

        async with anyio.create_task_group() as group:
            group.start_soon(read_stdout)
            group.start_soon(read_events)
        run.exit_code = await process.wait()
    return run
