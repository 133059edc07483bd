"""Virtual environments for Batch clients other than topn's own, cached under .topn/ between runs.

Each venv is keyed by its pinned requirements file and the Python version, built once (with uv)
under a file lock, so parallel sessions wait instead of racing, and marked complete only after the
install succeeded, so a broken half-install is rebuilt, never reused.
`python -m tests.integration.emulator.clients.venvs` builds them all ahead of time and prints what
each cost.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
REPO = HERE.parents[3]
CACHE = REPO / ".topn" / "client-venvs"
COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class ClientVenv:
    name: str
    requirements: Path


AZURE_BATCH_14 = ClientVenv("azure-batch-14", HERE / "requirements" / "azure-batch-14.txt")
TUTORIAL = ClientVenv("tutorial", HERE / "requirements" / "tutorial.txt")
AZURE_CLI = ClientVenv("azure-cli", HERE / "requirements" / "azure-cli.txt")
ALL = (AZURE_BATCH_14, TUTORIAL, AZURE_CLI)


class VenvInstallError(RuntimeError):
    """A client venv could not be built (offline, index unreachable, a wheel missing)."""


def venv_dir(venv: ClientVenv) -> Path:
    """The cache folder: a new requirements file or Python version gets a new venv."""
    digest = hashlib.sha256(venv.requirements.read_bytes())
    digest.update(f"{sys.version_info.major}.{sys.version_info.minor}".encode())
    return CACHE / f"{venv.name}-{digest.hexdigest()[:16]}"


def python_of(folder: Path) -> Path:
    return folder / "bin" / "python"


def ensure(venv: ClientVenv, timeout_s: float = 900.0) -> Path:
    """The venv's Python, building the venv first if it is not cached yet."""
    folder = venv_dir(venv)
    if (folder / COMPLETE_MARKER).exists():
        return python_of(folder)
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{folder.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until the with block ends (also on errors)
        if not (folder / COMPLETE_MARKER).exists():
            _build(venv, folder, timeout_s)
    return python_of(folder)


def _build(venv: ClientVenv, folder: Path, timeout_s: float) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    # uv (a dev dependency) instead of pip: azure-cli's 150 packages take ~10 s instead of minutes.
    # The venv's base is the interpreter running the tests, never one uv would download.
    uv = [sys.executable, "-m", "uv"]
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    steps = [
        [*uv, "venv", "--quiet", "--python", sys.executable, str(folder)],
        [*uv, "pip", "install", "--quiet", "--python", str(python_of(folder)), "-r", str(venv.requirements)],
    ]
    for command in steps:
        try:
            completed = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise VenvInstallError(f"building the {venv.name} venv took over {timeout_s:.0f} s") from exc
        if completed.returncode != 0:
            raise VenvInstallError(
                f"{' '.join(command[2:4])} for {venv.name} failed ({completed.returncode}):\n"
                f"{completed.stderr[-3000:]}"
            )
    (folder / COMPLETE_MARKER).write_text(f"{time.time():.0f}\n")
    for stale in CACHE.glob(f"{venv.name}-*"):
        if stale.is_dir() and stale != folder:
            shutil.rmtree(stale, ignore_errors=True)  # an older pin set, no longer used


def main() -> None:
    for venv in ALL:
        started = time.perf_counter()
        cached = (venv_dir(venv) / COMPLETE_MARKER).exists()
        ensure(venv)
        state = "cached" if cached else "built"
        print(f"{venv.name}: {state} in {time.perf_counter() - started:.1f} s -> {venv_dir(venv)}")


if __name__ == "__main__":
    main()
