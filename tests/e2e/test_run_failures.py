"""Runs that go wrong: a failed task (exit 1, other files delivered); a failed start task (exit 1, stderr)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator import naming
from tests.conftest import StartEmulator, StorageEndpoint
from tests.e2e.run_cli import reference_top, run_topn, topn_environment

# The emulator fixtures live on the session's event loop; these tests must run on it too.
pytestmark = pytest.mark.asyncio(loop_scope="session")

TEXTS = {
    "alpha.txt": "one two two three three three",
    "zebra stripes.txt": "stripes stripes zebra",
    "gamma/omega.txt": "omega omega alpha",
}


def write_texts(folder: Path) -> None:
    for relpath, text in TEXTS.items():
        path = folder / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


async def test_a_failed_task_gives_exit_1_and_a_summary_naming_the_file(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    # Three files, one task each (at least four units per slot), in sorted order: the third task
    # counts "zebra stripes.txt". The emulator fails the task whose command line names its manifest.
    failing_task = naming.task_id(sorted(TEXTS).index("zebra stripes.txt"))
    batch = await start_emulator(
        [
            "--fault-task-fail-match",
            naming.unit_manifest_file(failing_task),
            "--fault-task-fail-exit-code",
            "42",
        ]
    )
    write_texts(tmp_path / "in")
    env = topn_environment(batch, azurite, tmp_path / ".topn", TOPN_RUN_TASK_MAX_RETRIES="1")
    result = run_topn(["run", "in", "--out", "out", "--json"], tmp_path, env)
    assert result.exit_code == 1, result.stderr[-3000:]
    summary = result.summary()
    assert summary["state"] == "FAILED"
    files = {entry["path"]: entry for entry in summary["files"]}
    failed = files["zebra stripes.txt"]
    assert failed["status"] == "failed" and failed["task_id"] == failing_task
    assert failed["error"]["exit_code"] == 42
    # Batch's code for a task that exited non-zero (azure-batch-rest.md), not merely any text.
    assert failed["error"]["failure_code"] == "FailureExitCode"
    assert "injected task failure" in failed["error"]["stderr_tail"]
    for relpath in ("alpha.txt", "gamma/omega.txt"):
        assert files[relpath]["status"] == "succeeded"
        assert files[relpath]["top"] == reference_top([TEXTS[relpath]], "words", 10)
    assert summary["top"] == reference_top([TEXTS["alpha.txt"], TEXTS["gamma/omega.txt"]], "words", 10)
    assert (tmp_path / "out" / "alpha_OUTPUT.txt").is_file()
    assert not (tmp_path / "out" / "zebra stripes_OUTPUT.txt").exists()
    assert json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8")) == summary
    failures = [event for event in result.events() if event["event"] == "task.failed"]
    assert [event["file"] for event in failures] == ["zebra stripes.txt"]


async def test_a_start_task_failure_ends_the_run_with_its_stderr(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator(["--fault-start-task-failures", "8"])
    write_texts(tmp_path / "in")
    # A long readiness deadline: the run must end on the failure itself, long before this.
    env = topn_environment(batch, azurite, tmp_path / ".topn", TOPN_POOL_READY_TIMEOUT_S="3600")
    result = run_topn(["run", "in", "--out", "out", "--json"], tmp_path, env)
    assert result.exit_code == 1
    assert "injected start task failure" in result.stderr
    assert "start task failed" in result.stderr
    failed = [event for event in result.events() if event["event"] == "run.failed"]
    assert len(failed) == 1 and failed[0]["error_type"] == "PoolError"
