"""Run `topn` as a user would: a subprocess in a temporary folder, endpoints from TOPN_* variables."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import string
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.shared_cache import exclusive

ROOT = Path(__file__).resolve().parents[2]
# The pool of the tests whose runs need nothing of a pool of their own (the configuration's nodes and
# slots, the session's services, every task run to its end): they share it on each worker's emulator.
# A new pool costs seconds of CPU, for its start task and for each node's first task, which unpacks
# the node bundle's wheels.
SHARED_POOL_ID = "e2e-shared"
# One node of two slots, the crash tests' pool, shared as well. A run plans at least four work units
# per slot (when it has that many files), each one task and one node process: the tests that need
# neither two nodes nor four slots run fewer processes on it.
ONE_NODE_POOL = {
    "TOPN_POOL_ID": "resume-pool",
    "TOPN_POOL_DEDICATED_NODES": "1",
    "TOPN_POOL_TASK_SLOTS_PER_NODE": "2",
}
# A hung run must fail the test, not stall the suite; runs here take seconds.
RUN_TIMEOUT_S = 240


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def events(self) -> list[dict[str, Any]]:
        """The JSON event lines on stderr (every line must be one)."""
        return [json.loads(line) for line in self.stderr.splitlines() if line.strip()]

    def summary(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.stdout)
        return document


def topn_environment(
    batch: BatchEndpoint, storage: StorageEndpoint, state_dir: Path, **overrides: str
) -> dict[str, str]:
    """The user's environment plus the endpoints of the services the fixtures started.

    Local mode is off: with it on, a fixture service that had died would be silently replaced by
    one topn starts on the same port, and the test would pass without the service it set up.
    """
    keep = {name: value for name, value in os.environ.items() if not name.startswith("TOPN_")}
    seed_wheel_cache(state_dir)
    return {
        **keep,
        "TOPN_LOCAL_ENABLED": "false",
        "TOPN_BATCH_ENDPOINT": batch.endpoint,
        "TOPN_BATCH_ACCOUNT_KEY": batch.account_key,
        "TOPN_STORAGE_BLOB_ENDPOINT": storage.endpoint,
        "TOPN_STORAGE_ACCOUNT_KEY": storage.account_key,
        "TOPN_LOCAL_STATE_DIR": str(state_dir),
        "TOPN_RUN_POLL_MIN_S": "0.1",
        "TOPN_RUN_POLL_MAX_S": "0.5",
        **overrides,
    }


PROJECT_WHEEL_CACHE = ROOT / ".topn" / "node-wheels"


@functools.cache
def project_wheel_cache() -> Path:
    """The checkout's cache of the node bundle's wheels, every locked wheel in it (checked by SHA-256).

    Filled once per checkout (the first call downloads, as `make node-bundle` does); under a lock,
    so a pytest-xdist worker never sees another's half-filled cache or its download scratch folder.
    Checked once per process.
    """
    from node import bundle

    with exclusive(PROJECT_WHEEL_CACHE):
        bundle.fetch_wheels(bundle.read_lock(), PROJECT_WHEEL_CACHE)
    return PROJECT_WHEEL_CACHE


def seed_wheel_cache(state_dir: Path) -> None:
    """Give a test's state folder the node bundle's wheels (local mode off: topn builds the bundle).

    Copied from the checkout's cache (`project_wheel_cache`), so no run spends its deadline on PyPI.
    """
    shutil.copytree(project_wheel_cache(), state_dir / "node-wheels", dirs_exist_ok=True)


def run_topn(args: list[str], cwd: Path, env: dict[str, str]) -> CliResult:
    """`python -m orchestrator ARGS` with JSON events, as `topn` would run."""
    completed = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args, "--config", str(ROOT / "config" / "local.toml")],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


# Independent references for the two tokenizers (DESIGN §4), written from the spec, not from node/.
def words_tokens(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.casefold())


def tutorial_tokens(text: str) -> list[str]:
    stripped = (token.strip(string.punctuation) for token in text.split())
    return [token for token in stripped if token]


TOKENIZERS = {"words": words_tokens, "tutorial": tutorial_tokens}


def reference_top(texts: list[str], tokenizer: str, top: int) -> list[list[Any]]:
    """Counter over the texts in the given order, then most_common: ties by first occurrence."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(TOKENIZERS[tokenizer](text))
    return [[word, count] for word, count in counts.most_common(top)]


def output_rows(path: Path) -> list[list[Any]]:
    """The `word:<TAB>count` rows of an `_OUTPUT` file, between its two rules."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "Word\tCount"
    rule = "-" * 30
    body = lines[2 : lines.index(rule, 2)]
    rows = []
    for line in body:
        word, count = line.rsplit("\t", 1)
        assert word.endswith(":")
        rows.append([word[:-1], int(count)])
    return rows
