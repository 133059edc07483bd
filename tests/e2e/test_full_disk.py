"""A results folder on a real, small tmpfs that fills up or turns read-only mid-run (issue 10, point 3).

The run stops as interrupted (exit 1, `run.failed` resumable, the journal not FAILED), its message
names the folder, the error and the fix, and `topn resume RUN_ID` finishes it with exact results
once space is freed or the filesystem is writable again. The disk is really full: the tmpfs is
filled so that exactly the pages the test allows are left (the results marker takes one, each small
`_OUTPUT` one, summary.json at least one). The injected-ENOSPC tests are
tests/integration/orchestrator/test_local_write_errors.py; these run only where `mount` works (as
root). Elsewhere they skip, saying why, unless `CI` is set: there, not mounting is a failure.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import naming
from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.fault_support import LiveRun, check_summary, run_topn_live, write_corpus
from tests.e2e.run_cli import CliResult, run_topn, topn_environment
from tests.e2e.test_crash_resume import load_record, run_id_in

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

FILES = 4
PAGE = 4096
TMPFS_BYTES = 1024 * 1024


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of this test's own, unmounted after it."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = _mount("-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount_point))
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}; it needs root)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: under CI the real full-disk tests must run")
        pytest.skip(reason)
    try:
        yield mount_point
    finally:
        _mount("-o", "remount,rw", str(mount_point))  # a read-only test may have left it so
        subprocess.run(["umount", str(mount_point)], check=True)


def free_pages(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize // PAGE


def fill_leaving(folder: Path, pages: int) -> Path:
    """A filler file that takes every free page of `folder`'s filesystem but `pages`."""
    filler = folder / "filler"
    with filler.open("wb") as stream:
        stream.write(b"\0" * ((free_pages(folder) - pages) * PAGE))
    assert free_pages(folder) == pages  # tmpfs counts whole pages, exactly
    return filler


def _environment(batch: BatchEndpoint, storage: StorageEndpoint, tmp_path: Path) -> dict[str, str]:
    return topn_environment(
        batch,
        storage,
        tmp_path / ".topn",
        TOPN_POOL_ID="e2e-full-disk",
        TOPN_RUN_MAX_FILES_PER_TASK="2",
    )


def _assert_interrupted(run: CliResult | LiveRun, out: Path, reason: str, fix: str) -> str:
    """Exit 1 with one resumable `run.failed` naming the folder, the error and the fix; the run id."""
    assert run.exit_code == 1, run.stderr[-3000:]
    failed = [event for event in run.events() if event["event"] == "run.failed"]
    assert len(failed) == 1, run.stderr[-3000:]
    run_id = run_id_in(run)
    message = failed[0]["error"]
    assert failed[0]["error_type"] == "LocalWriteError" and failed[0]["resumable"] is True, message
    assert f"results folder {out}" in message and reason in message and fix in message, message
    assert f"topn resume {run_id}" in message, message
    assert "internal error" not in run.stderr
    return run_id


async def _assert_resumes_to_exact_results(
    run_id: str, texts: dict[str, str], out: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    record = await load_record(tmp_path / ".topn", run_id)
    assert record.state in ("RUNNING", "COLLECTING") and not record.is_finished  # not FAILED
    resumed = run_topn(["resume", run_id, "--json"], tmp_path, env)
    assert resumed.exit_code == 0, resumed.stderr[-3000:]
    summary = resumed.summary()
    assert check_summary(summary, texts) == []
    for relpath in texts:
        assert (out / naming.output_name(relpath)).is_file(), relpath
    assert (out / "summary.json").is_file()
    assert (await load_record(tmp_path / ".topn", run_id)).state == "SUCCEEDED"


async def test_a_full_disk_stops_the_run_as_interrupted_and_resume_finishes_it(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path, small_tmpfs: Path
) -> None:
    """Full at the first `_OUTPUT`; after a little space is freed, full at summary.json; then not."""
    texts = write_corpus(tmp_path / "in", FILES, seed=31)
    env = _environment(batch_emulator, azurite, tmp_path)
    out = small_tmpfs / "out"
    enospc = f"{os.strerror(errno.ENOSPC)} (ENOSPC)"
    # The marker's page only: the first `_OUTPUT` finds the disk full.
    filler = fill_leaving(small_tmpfs, 1)

    first = run_topn(["run", "in", "--out", str(out), "--json"], tmp_path, env)
    run_id = _assert_interrupted(first, out, enospc, "free some space")
    assert first.stdout == ""  # no summary for a run that did not finish
    assert list(out.rglob("*_OUTPUT.txt")) == [] and not (out / "summary.json").exists()
    assert (await load_record(tmp_path / ".topn", run_id)).state in ("RUNNING", "COLLECTING")

    # One page per `_OUTPUT` freed: every result fits, then summary.json, written last before
    # CLEANING is journalled, finds the disk full (CLEANING itself writes nothing here).
    with filler.open("r+b") as stream:
        stream.truncate(filler.stat().st_size - FILES * PAGE)
    assert free_pages(small_tmpfs) == FILES
    second = run_topn(["resume", run_id, "--json"], tmp_path, env)
    assert _assert_interrupted(second, out, enospc, "free some space") == run_id
    assert len(list(out.rglob("*_OUTPUT.txt"))) == FILES and not (out / "summary.json").exists()

    filler.unlink()  # space freed
    await _assert_resumes_to_exact_results(run_id, texts, out, tmp_path, env)


async def test_a_results_folder_made_read_only_mid_run_stops_it_and_resume_finishes_it(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path, small_tmpfs: Path
) -> None:
    """Remounted read-only once the run has claimed its folder: EROFS, which stops root too."""
    texts = write_corpus(tmp_path / "in", FILES, seed=37)
    env = _environment(batch_emulator, azurite, tmp_path)
    out = small_tmpfs / "out"
    pids: list[int] = []
    remounted: list[subprocess.CompletedProcess[str]] = []

    async def make_read_only(event: dict[str, Any]) -> None:
        # `run.started` comes after the results folder's marker is written. topn is paused until the
        # folder is read-only: no task has run by then, so no result can have been written yet.
        if event["event"] == "run.started" and not remounted:
            os.kill(pids[0], signal.SIGSTOP)
            try:
                remounted.append(_mount("-o", "remount,ro", str(small_tmpfs)))
            finally:
                os.kill(pids[0], signal.SIGCONT)

    first = await run_topn_live(
        ["run", "in", "--out", str(out), "--json"], tmp_path, env, make_read_only, pids.append
    )
    assert remounted and remounted[0].returncode == 0, remounted
    run_id = _assert_interrupted(
        first, out, f"{os.strerror(errno.EROFS)} (EROFS)", "remount the filesystem read-write"
    )
    assert list(out.rglob("*_OUTPUT.txt")) == []

    assert _mount("-o", "remount,rw", str(small_tmpfs)).returncode == 0
    await _assert_resumes_to_exact_results(run_id, texts, out, tmp_path, env)
