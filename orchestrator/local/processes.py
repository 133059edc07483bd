"""Start and stop the local services (Azurite and the Batch emulator) as child processes.

Both the CLI's local mode and the test fixtures use these functions, so what the tests start is
exactly what a user gets. Output goes to log files, not pipes: a pipe nobody drains would block a
chatty child, and a log file is what a user wants to read when a service fails to start.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio

# The emulator's documented local default account. Not a secret: it only opens the loopback emulator.
EMULATOR_ACCOUNT_NAME = "topnlocal"
EMULATOR_ACCOUNT_KEY = (
    "Zym2mVjNK3UFfWmczha6+QroyGvPwo8CwiNdjvw6UuPd9UYiWHEWzwdOxXtd4H10lyMdrmmGsJxwO8FDTlJkVQ=="
)

# Azurite's documented development account (public, the same on every machine).
AZURITE_ACCOUNT_NAME = "devstoreaccount1"
AZURITE_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

# Linux: a child started for one run gets SIGTERM when topn dies, even by SIGKILL. The signal is
# armed in the child before it execs the service (PR_SET_PDEATHSIG survives exec); it fires when the
# thread that forked it ends, which is the event loop's thread here (asyncio forks on it). If topn
# died before the signal was armed, the child never starts the service at all.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def dies_with_this_process(argv: Sequence[str]) -> list[str]:
    """`argv` behind a launcher that makes the service end with this process (Linux; elsewhere as is)."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]


_AZURITE_READY = re.compile(r"Azurite Blob service successfully listens on (http://[\w.\-]+:\d+)")


class LocalServiceError(RuntimeError):
    """A local service could not be started; the message quotes its log."""


class ServiceHandle(Protocol):
    """What stopping a service needs from its process: anyio's Process and DetachedProcess both fit."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    async def wait(self) -> int: ...


class DetachedProcess:
    """A service started with Popen in its own session, so it outlives this process.

    asyncio kills the children it spawned when their transport is closed at interpreter exit, so a
    service meant to keep running (`topn local up`) cannot be an anyio Process.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def terminate(self) -> None:
        self._popen.terminate()

    def kill(self) -> None:
        self._popen.kill()

    async def wait(self) -> int:
        # A worker thread waits; on cancellation it is abandoned (Popen.wait is safe to leave running).
        return await anyio.to_thread.run_sync(self._popen.wait, abandon_on_cancel=True)


@dataclass
class ServiceProcess:
    """A running local service and where its output goes."""

    name: str
    endpoint: str
    process: ServiceHandle
    log_dir: Path
    details: Mapping[str, Any]

    @property
    def pid(self) -> int:
        return self.process.pid


# Resolved once at import: async callers (start_azurite in a daemon's loop) must not touch the disk.
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def project_root() -> Path:
    """The checkout this package runs from (holds package.json and node_modules/)."""
    return _PROJECT_ROOT


def azurite_command(azurite_bin: Path, location: Path, host: str = "127.0.0.1", port: int = 0) -> list[str]:
    """Azurite's blob service with the flags this machine needs (see shared/reference/azurite.md)."""
    return [
        str(azurite_bin),
        "--blobHost",
        host,
        "--blobPort",
        str(port),
        "--silent",
        "--disableTelemetry",  # offline, telemetry errors would flood the log
        "--skipApiVersionCheck",  # the SDK's API version is newer than any Azurite release knows
        "--location",
        str(location),
    ]


def emulator_command(
    root: Path,
    port: int = 0,
    account_name: str = EMULATOR_ACCOUNT_NAME,
    account_key: str = EMULATOR_ACCOUNT_KEY,
    extra_args: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    return [
        python,
        "-m",
        "emulator",
        "--port",
        str(port),
        "--root",
        str(root),
        "--account-name",
        account_name,
        "--account-key",
        account_key,
        *extra_args,
    ]


def parse_azurite_ready(text: str) -> dict[str, Any] | None:
    """The endpoint Azurite announced, once it is listening."""
    match = _AZURITE_READY.search(text)
    if match is None:
        return None
    return {"endpoint": f"{match.group(1)}/{AZURITE_ACCOUNT_NAME}"}


def parse_emulator_ready(text: str) -> dict[str, Any] | None:
    """The emulator's start line: the first JSON object on stdout that names an endpoint."""
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            announced = json.loads(line)
        except ValueError:
            continue
        if isinstance(announced, dict) and "endpoint" in announced:
            return announced
    return None


def _tail(path: Path, max_lines: int = 20) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no output)"
    return "\n".join(lines[-max_lines:]) or "(no output)"


async def start_service(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    parse_ready: Callable[[str], dict[str, Any] | None],
    timeout_s: float = 30.0,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    detached: bool = False,
) -> ServiceProcess:
    """Start `argv`, wait until `parse_ready` finds its announcement on stdout, and return it.

    `detached` puts the child in its own session so it outlives this process (`topn local up`).
    """
    await anyio.Path(log_dir).mkdir(parents=True, exist_ok=True)
    stdout_path = log_dir / f"{name}.stdout.log"
    stderr_path = log_dir / f"{name}.stderr.log"
    process: ServiceHandle
    with stdout_path.open("wb") as stdout_file, stderr_path.open("wb") as stderr_file:
        try:
            if detached:
                popen = await anyio.to_thread.run_sync(
                    lambda: subprocess.Popen(
                        list(argv),
                        stdin=subprocess.DEVNULL,
                        stdout=stdout_file,
                        stderr=stderr_file,
                        cwd=cwd,
                        env=dict(env) if env is not None else None,
                        start_new_session=True,
                    )
                )
                process = DetachedProcess(popen)
            else:
                # Its own session even as a child: Ctrl-C in a terminal signals the whole foreground
                # group, and the services must outlive the run's clean-up, then be stopped by us.
                process = await anyio.open_process(
                    dies_with_this_process(argv),
                    stdin=None,
                    stdout=stdout_file,
                    stderr=stderr_file,
                    cwd=cwd,
                    env=dict(env) if env is not None else None,
                    start_new_session=True,
                )
        except FileNotFoundError as exc:
            raise LocalServiceError(
                f"cannot start {name}: {argv[0]} not found. "
                "Run `make setup` (pip install -e '.[dev]' and npm ci)."
            ) from exc
    try:
        with anyio.fail_after(timeout_s):
            while True:
                announced = parse_ready(await anyio.Path(stdout_path).read_text(errors="replace"))
                if announced is not None:
                    return ServiceProcess(name, str(announced["endpoint"]), process, log_dir, announced)
                if process.returncode is not None:
                    raise LocalServiceError(
                        f"{name} exited with status {process.returncode} before it was ready.\n"
                        f"stdout:\n{_tail(stdout_path)}\nstderr:\n{_tail(stderr_path)}"
                    )
                await anyio.sleep(0.05)
    except TimeoutError:
        await stop_service_process(process)
        raise LocalServiceError(
            f"{name} did not announce readiness within {timeout_s:.0f} s.\n"
            f"stdout:\n{_tail(stdout_path)}\nstderr:\n{_tail(stderr_path)}"
        ) from None
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stop_service_process(process)
        raise


async def stop_service_process(process: ServiceHandle, grace_s: float = 10.0) -> int | None:
    """SIGTERM, wait up to `grace_s`, then SIGKILL; returns the exit status."""
    if process.returncode is None:
        process.terminate()
        with anyio.move_on_after(grace_s):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode


async def stop_service(service: ServiceProcess, grace_s: float = 10.0) -> int | None:
    status: int | None = None
    with anyio.CancelScope(shield=True):
        status = await stop_service_process(service.process, grace_s)
    return status


async def start_azurite(
    location: Path,
    log_dir: Path,
    azurite_bin: Path | None = None,
    port: int = 0,
    detached: bool = False,
    env: Mapping[str, str] | None = None,
) -> ServiceProcess:
    binary = azurite_bin or project_root() / "node_modules" / ".bin" / "azurite-blob"
    if not await anyio.Path(binary).exists():
        raise LocalServiceError(
            f"Azurite is not installed at {binary}. Run `npm ci` (or `make setup`) first."
        )
    await anyio.Path(location).mkdir(parents=True, exist_ok=True)
    return await start_service(
        "azurite",
        azurite_command(binary, location, port=port),
        log_dir,
        parse_azurite_ready,
        env=env,
        detached=detached,
    )


async def start_emulator(
    root: Path,
    log_dir: Path,
    port: int = 0,
    account_name: str = EMULATOR_ACCOUNT_NAME,
    account_key: str = EMULATOR_ACCOUNT_KEY,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    detached: bool = False,
) -> ServiceProcess:
    argv = emulator_command(root, port, account_name, account_key, extra_args)
    return await start_service("emulator", argv, log_dir, parse_emulator_ready, env=env, detached=detached)


def signal_pid(pid: int, sig: signal.Signals = signal.SIGTERM) -> bool:
    """Signal a service started by an earlier process (`topn local down`); False if it is gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True
