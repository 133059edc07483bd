"""Fixtures and helpers for driving the emulator with Batch clients that topn did not write.

Each client runs as its own process (node, or a Python from a cached venv built by `venvs.py`) and
prints what it read back as one JSON object; the tests here judge that report.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import BatchEndpoint
from tests.integration.emulator.clients import venvs

HERE = Path(__file__).parent
# Set in CI (CI=true): there a client that cannot be installed fails its test instead of skipping it.
# Not a TOPN_ variable: topn refuses TOPN_ variables that name no settings section.
REQUIRE_INSTALLS = "CI"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def client_env(emulator: BatchEndpoint, **extra: str) -> dict[str, str]:
    """A small environment for a client process: where the emulator is, and nothing of ours."""
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "TMPDIR") if name in os.environ}
    env.update(
        BATCH_ENDPOINT=emulator.endpoint,
        BATCH_ACCOUNT=emulator.account_name,
        BATCH_KEY=emulator.account_key,
        **extra,
    )
    return env


_SAS_SIGNATURE = re.compile(r"(sig=)[^&\s\"']+")


def redacted(text: str, env: Mapping[str, str]) -> str:
    """A client's output made safe to show: SAS signatures and the keys it was given removed."""
    text = _SAS_SIGNATURE.sub(r"\1REDACTED", text)
    for name in ("BATCH_KEY", "STORAGE_CONNECTION_STRING"):
        if env.get(name):
            text = text.replace(env[name], f"<{name}>")
    return text


async def run_client(
    command: Sequence[str], env: Mapping[str, str], timeout_s: float = 180.0, cwd: Path | None = None
) -> dict[str, Any]:
    """Run a client script to the end and return its JSON report; fail with its stderr otherwise."""
    with anyio.fail_after(timeout_s):
        completed = await anyio.run_process(list(command), env=dict(env), cwd=cwd, check=False)
    stderr = redacted(completed.stderr.decode("utf-8", "replace"), env)[-4000:]
    if completed.returncode != 0:
        pytest.fail(f"{Path(command[-1]).name} exited {completed.returncode}:\n{stderr}")
    report: dict[str, Any] = json.loads(completed.stdout)
    return report


async def client_python(venv: venvs.ClientVenv) -> Path:
    """The cached venv's Python; building it runs in a worker thread (pip takes seconds to minutes)."""
    return await anyio.to_thread.run_sync(venvs.ensure, venv)


def check_lifecycle_report(report: dict[str, Any], pool_id: str) -> None:
    """What every full-featured client must have read back from the shared lifecycle scenario."""
    assert report["pool"] == {
        "targetDedicatedNodes": 1,
        "currentDedicatedNodes": 1,
        "elevationLevel": "admin",
    }
    assert report["poolListIds"] == [pool_id]
    assert report["nodeStates"] == ["idle"]
    assert {"startup/stdout.txt", "startup/stderr.txt", "shared", "workitems"} <= set(report["nodeFileNames"])
    assert report["startTaskStdout"] == "start task ran\n"
    assert report["resized"] == {"targetDedicatedNodes": 2, "currentDedicatedNodes": 2}
    assert report["jobPriority"] == 100
    assert report["addCollectionStatuses"] == ["success"] * 5
    assert report["taskCounts"] == {"active": 0, "running": 0, "completed": 6, "succeeded": 6, "failed": 0}
    pages = report["completedTaskPages"]
    assert len(pages) == 3 and all(len(page) == 2 for page in pages), pages
    assert sorted(task_id for page in pages for task_id in page) == [f"t{i}" for i in range(6)]
    assert {"stdout.txt", "stderr.txt"} <= set(report["taskFileNames"])
    assert report["taskStdout"] == "hello from t0\n"
    assert report["deletedTaskGet"] == {"status": 404, "code": "TaskNotFound"}
    assert report["wrongKeyDelete"] == {"status": 403, "code": "AuthenticationFailed"}
    assert report["deletedJobGet"] == {"status": 404, "code": "JobNotFound"}
    assert report["deletedPoolGet"] == {"status": 404, "code": "PoolNotFound"}
