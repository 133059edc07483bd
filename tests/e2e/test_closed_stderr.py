"""`topn run DIR 2>&1 | head`: the reader of the events goes away, the run still finishes whole."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
