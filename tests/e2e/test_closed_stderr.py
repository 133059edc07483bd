"""`topn run DIR 2>&1 | head`: the reader of the events goes away, the run still finishes whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.run_cli import ROOT, RUN_TIMEOUT_S, reference_top, run_topn, topn_environment

TEXTS = {"a.txt": "ebb flow ebb\n", "b.txt": "flow tide flow flow\n"}


def test_a_run_whose_stderr_reader_leaves_still_succeeds_and_saves_everything(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    for name, text in TEXTS.items():
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_text(text, encoding="utf-8")
    env = topn_environment(batch_emulator, azurite, tmp_path / ".topn", TOPN_POOL_ID="e2e-closed-stderr")
    command = [sys.executable, "-m", "orchestrator", "run", "in", "--out", "out", "--json"]
    with subprocess.Popen(
        [*command, "--config", str(ROOT / "config" / "local.toml")],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stderr is not None and process.stdout is not None
        first = json.loads(process.stderr.readline())  # what `head -1` would read, then it leaves
        process.stderr.close()
        stdout = process.stdout.read()
        exit_code = process.wait(timeout=RUN_TIMEOUT_S)
    assert first["event"] == "run.started"
    assert exit_code == 0, stdout[-2000:]
    summary = json.loads(stdout)
    assert summary["state"] == "SUCCEEDED"
    assert summary["top"] == reference_top([TEXTS["a.txt"], TEXTS["b.txt"]], "words", 10)
    assert json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8")) == summary
    assert sorted(path.name for path in (tmp_path / "out").glob("*_OUTPUT.txt")) == [
        "a_OUTPUT.txt",
        "b_OUTPUT.txt",
    ]
    # The journal agrees: the run is finished, not left half-way for a resume.
    status = run_topn(["status", summary["run_id"], "--json"], tmp_path, env)
    assert status.exit_code == 0 and json.loads(status.stdout)["state"] == "SUCCEEDED", status.stdout


def _topn_with_redirection(redirection: str, args: list[str], cwd: Path, env: dict[str, str]) -> int:
    """`topn ARGS <redirection>` through /bin/sh, as a user types it (e.g. `2>&-`, `>/dev/full`)."""
    command = [sys.executable, "-m", "orchestrator", *args, "--config", str(ROOT / "config" / "local.toml")]
    completed = subprocess.run(
        ["/bin/sh", "-c", f'exec "$@" {redirection}', "sh", *command],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        timeout=RUN_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return completed.returncode


# Two runs cover the three faults (each run costs seconds): stderr closed; stdout closed while
# every event write fails with ENOSPC (/dev/full).
@pytest.mark.parametrize(
    "redirection", ["2>&-", ">&- 2>/dev/full"], ids=["stderr-closed", "stdout-closed-stderr-full"]
)
def test_a_run_with_a_closed_or_full_stream_still_runs_and_exits_with_its_status(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path, redirection: str
) -> None:
    (tmp_path / "in").mkdir()
    for name, text in TEXTS.items():
        (tmp_path / "in" / name).write_text(text, encoding="utf-8")
    env = topn_environment(batch_emulator, azurite, tmp_path / ".topn", TOPN_POOL_ID="e2e-closed-streams")
    exit_code = _topn_with_redirection(redirection, ["run", "in", "--out", "out"], tmp_path, env)
    assert exit_code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert summary["state"] == "SUCCEEDED"
    assert summary["top"] == reference_top([TEXTS["a.txt"], TEXTS["b.txt"]], "words", 10)
    status = run_topn(["status", summary["run_id"], "--json"], tmp_path, env)
    assert status.exit_code == 0 and json.loads(status.stdout)["state"] == "SUCCEEDED", status.stdout
    # A failing run keeps its real status with the stream closed too (exit 2: nothing to process).
    assert _topn_with_redirection(redirection, ["run", "missing"], tmp_path, env) == 2


def test_status_with_stdout_closed_is_not_an_internal_error(tmp_path: Path) -> None:
    env = {**os.environ, "TOPN_LOCAL_STATE_DIR": str(tmp_path / ".topn"), "TOPN_LOCAL_ENABLED": "false"}
    assert _topn_with_redirection(">&-", ["status"], tmp_path, env) == 0
    assert _topn_with_redirection(">&- 2>&-", ["status"], tmp_path, env) == 0
