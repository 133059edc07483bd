"""`topn run --skip-unreadable` (issue 10, point 5): what cannot be read is left out with a warning
and listed in summary.json; the rest runs. Without the flag the same inputs are exit 2, naming one.

Permission bits do not stop root, so topn runs as `nobody` (setpriv) here, as the discovery unit
tests do; the services are the fixtures' (started as this user), reached over loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from tests.conftest import BatchEndpoint, StartEmulator, StorageEndpoint
from tests.e2e.run_cli import ROOT, SHARED_POOL_ID, CliResult, reference_top, topn_environment

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOBODY = "65534"


def run_topn_as_nobody(args: list[str], cwd: Path, env: dict[str, str]) -> CliResult:
    command = [sys.executable, "-m", "orchestrator", *args, "--config", str(ROOT / "config" / "local.toml")]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.fail("running as root, this test needs `setpriv` to drop to an unprivileged user")
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
    completed = subprocess.run(
        command,
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT), "HOME": str(cwd / "home")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


def open_to_nobody(root: Path) -> None:
    """The unprivileged user may write in `root` (it can reach it) and its folders: state, results, HOME."""
    for folder in root.rglob("*"):
        if folder.is_dir():
            folder.chmod(0o777)
    root.chmod(0o777)


async def test_unreadable_inputs_are_skipped_with_the_flag_and_refused_without(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, reachable_tmp: Path
) -> None:
    batch = batch_emulator
    folder = reachable_tmp / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "locked").mkdir()
    readable = {"ok.txt": "heron heron egret\n", "sub/fine.txt": "egret stork heron\n"}
    for relpath, text in readable.items():
        (folder / relpath).write_text(text, encoding="utf-8")
    (folder / "sub" / "secret.txt").write_text("never counted\n", encoding="utf-8")
    (folder / "locked" / "inside.txt").write_text("never counted either\n", encoding="utf-8")
    (reachable_tmp / "home").mkdir()
    env = topn_environment(batch, azurite, reachable_tmp / "state", TOPN_POOL_ID=SHARED_POOL_ID)
    open_to_nobody(reachable_tmp)
    unreadable = [folder / "locked", folder / "sub" / "secret.txt"]
    for target in unreadable:
        target.chmod(0)
    try:
        refused = await anyio.to_thread.run_sync(
            run_topn_as_nobody, ["run", "in", "--out", "refused"], reachable_tmp, env
        )
        assert refused.exit_code == 2, refused.stderr[-2000:]
        assert "in/locked: Permission denied" in refused.stderr and "--skip-unreadable" in refused.stderr
        assert not (reachable_tmp / "refused").exists()

        run = await anyio.to_thread.run_sync(
            run_topn_as_nobody,
            ["run", "in", "--out", "out", "--json", "--skip-unreadable", "--log-format", "json"],
            reachable_tmp,
            env,
        )
    finally:
        (folder / "locked").chmod(0o755)
        (folder / "sub" / "secret.txt").chmod(0o644)
    assert run.exit_code == 0, run.stderr[-3000:]
    summary = run.summary()
    # Named as the user gave them (`in`, relative to where topn ran).
    left_out = [str(path.relative_to(reachable_tmp)) for path in unreadable]
    expected_skipped = [{"path": path, "reason": "unreadable: Permission denied"} for path in left_out]
    assert summary["skipped"] == expected_skipped
    assert list(summary)[-1] == "skipped"
    assert sorted(entry["path"] for entry in summary["files"]) == sorted(readable)
    assert summary["top"] == reference_top(list(readable.values()), "words", 10)
    on_disk = json.loads((reachable_tmp / "out" / "summary.json").read_text(encoding="utf-8"))
    assert on_disk["skipped"] == expected_skipped
    warnings = [event for event in run.events() if event["event"] == "input.skipped"]
    assert [(event["file"], event["level"]) for event in warnings] == [(path, "warning") for path in left_out]


async def test_a_resumed_run_lists_the_skipped_inputs_as_an_uninterrupted_run_does(
    start_emulator: StartEmulator, azurite: StorageEndpoint, reachable_tmp: Path
) -> None:
    # The pool has no node for its first 8 s: the first run stops at its 3 s deadline (resumable).
    batch = await start_emulator(["--pool-allocation-delay-s", "8"])
    folder = reachable_tmp / "in"
    folder.mkdir()
    readable = {"ok.txt": "heron heron egret\n", "more.txt": "egret stork heron\n"}
    for relpath, text in readable.items():
        (folder / relpath).write_text(text, encoding="utf-8")
    (folder / "secret.txt").write_text("never counted\n", encoding="utf-8")
    (reachable_tmp / "home").mkdir()
    env = topn_environment(
        batch, azurite, reachable_tmp / "state", TOPN_POOL_ID=f"skipr-{reachable_tmp.name[-8:]}"
    )
    open_to_nobody(reachable_tmp)
    (folder / "secret.txt").chmod(0)
    args = ["--out", "out", "--json", "--log-format", "json"]
    try:
        stopped = await anyio.to_thread.run_sync(
            run_topn_as_nobody,
            ["run", "in", "--skip-unreadable", *args],
            reachable_tmp,
            {**env, "TOPN_RUN_RUN_TIMEOUT_S": "3"},
        )
        assert stopped.exit_code == 1, stopped.stderr[-3000:]
        (failed,) = [event for event in stopped.events() if event["event"] == "run.failed"]
        assert failed["resumable"] is True, failed
        run_id = failed["run_id"]
        resumed = await anyio.to_thread.run_sync(
            run_topn_as_nobody, ["resume", run_id, "--json", "--log-format", "json"], reachable_tmp, env
        )
    finally:
        (folder / "secret.txt").chmod(0o644)
    assert resumed.exit_code == 0, resumed.stderr[-3000:]
    summary = resumed.summary()
    # Exactly what the uninterrupted run lists (the test above): path as given, why, after `totals`.
    expected_skipped = [{"path": "in/secret.txt", "reason": "unreadable: Permission denied"}]
    assert summary["skipped"] == expected_skipped
    assert list(summary)[-1] == "skipped"
    assert sorted(entry["path"] for entry in summary["files"]) == sorted(readable)
    assert summary["top"] == reference_top(list(readable.values()), "words", 10)
    on_disk = json.loads((reachable_tmp / "out" / "summary.json").read_text(encoding="utf-8"))
    assert on_disk == summary
