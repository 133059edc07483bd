"""Local mode: make sure Azurite and the Batch emulator are serving, starting them when they are not.

Two lifetimes:
* for one run (`topn run`): services are children of this process, stopped when the run ends, by
  any path (success, error, Ctrl-C, SIGTERM) through the caller's AsyncExitStack;
* across runs (`topn local up` / `down`): services are detached, and `<state_dir>/local/services.json`
  records their pids and endpoints so later runs find them and `down` stops them.
An endpoint with port 0 in the config means "whatever local mode started"; a real port is used as
is when something serves there, and otherwise a service is started on exactly that port.
"""

from __future__ import annotations

import json
import os
import signal
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import structlog

from orchestrator.azure.clients import accepts_connections, endpoint_port
from orchestrator.errors import ConfigError, ServiceUnavailableError, UsageError
from orchestrator.files import LockHeldError, release_pid_lock, take_pid_lock
from orchestrator.local import processes
from orchestrator.settings import Settings

log = structlog.get_logger()

AZURITE = "azurite"
EMULATOR = "emulator"
SERVICES_FILE = "services.json"
PROBE_TIMEOUT_S = 1.0
STOP_GRACE_S = 10.0
POLL_S = 0.05


@dataclass(frozen=True)
class RecordedService:
    """A detached service as written in the state file."""

    name: str
    pid: int
    endpoint: str


def local_dir(settings: Settings) -> Path:
    """Where local mode keeps service data, logs and the state file."""
    return settings.local.state_dir / "local"


def services_file(settings: Settings) -> Path:
    return local_dir(settings) / SERVICES_FILE


def read_recorded(settings: Settings) -> dict[str, RecordedService]:
    """The services `topn local up` recorded; empty when there is no (readable) state file."""
    try:
        document = json.loads(services_file(settings).read_text(encoding="utf-8"))
        return {
            name: RecordedService(name, int(entry["pid"]), str(entry["endpoint"]))
            for name, entry in document.get("services", {}).items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def write_recorded(settings: Settings, services: dict[str, RecordedService]) -> None:
    """Write the state file atomically (a reader never sees half of it)."""
    path = services_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "services": {
            name: {"pid": service.pid, "endpoint": service.endpoint} for name, service in services.items()
        }
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)


def with_port(endpoint: str, announced: str) -> str:
    """`endpoint` with the scheme, host and port of the `announced` one, keeping the configured path."""
    configured, actual = urlsplit(endpoint), urlsplit(announced)
    return urlunsplit((actual.scheme, actual.netloc, configured.path, configured.query, ""))


async def is_serving(endpoint: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when something accepts TCP connections at the endpoint's host and port."""
    return await accepts_connections(endpoint, timeout_s)


def check_emulator_key(settings: Settings) -> None:
    """Refuse to start the emulator for a Batch key that is not its public development key.

    Such a key came from TOPN_BATCH_ACCOUNT_KEY (a config file may only hold the public one), most
    likely a real account's key still exported from working with Azure. Starting the emulator with
    it would put it on a process command line, readable by every user of the machine, and make any
    key look right; so local mode refuses it and says how to proceed.
    """
    if settings.batch.account_key not in (None, processes.EMULATOR_ACCOUNT_KEY):
        raise ConfigError(
            "TOPN_BATCH_ACCOUNT_KEY is set, but local mode starts the Batch emulator with its public "
            "development key (the one config/local.toml holds). Unset TOPN_BATCH_ACCOUNT_KEY for local "
            "mode, or set TOPN_BATCH_ENDPOINT to an emulator already running with that key."
        )


async def _start(settings: Settings, name: str, port: int, detached: bool) -> processes.ServiceProcess:
    base = local_dir(settings)
    try:
        if name == AZURITE:
            return await processes.start_azurite(
                base / "azurite", base / "logs", port=port, detached=detached
            )
        check_emulator_key(settings)
        return await processes.start_emulator(
            base / "emulator",
            base / "logs",
            port=port,
            account_name=settings.batch.account_name,
            account_key=processes.EMULATOR_ACCOUNT_KEY,
            detached=detached,
        )
    except processes.LocalServiceError as exc:
        raise ServiceUnavailableError(f"local mode could not start {name}: {exc}") from None


def _configured(settings: Settings, name: str) -> str:
    return settings.storage.blob_endpoint if name == AZURITE else settings.batch.endpoint


def _with_endpoint(settings: Settings, name: str, endpoint: str) -> Settings:
    if name == AZURITE:
        return replace(settings, storage=replace(settings.storage, blob_endpoint=endpoint))
    return replace(settings, batch=replace(settings.batch, endpoint=endpoint))


async def _find_serving(settings: Settings, name: str) -> str | None:
    """An endpoint already serving for this service: the configured one, or the one `local up` recorded."""
    configured = _configured(settings, name)
    if endpoint_port(configured) != 0:
        return configured if await is_serving(configured) else None
    recorded = (await anyio.to_thread.run_sync(read_recorded, settings)).get(name)
    # The recorded process must still be ours: after a reboot its port may belong to something else.
    ours = recorded is not None and await anyio.to_thread.run_sync(_is_our_process, recorded)
    if recorded is not None and ours and await is_serving(recorded.endpoint):
        return with_port(configured, recorded.endpoint)
    return None


async def ensure_services(settings: Settings, stack: AsyncExitStack) -> Settings:
    """Settings whose endpoints serve: reuse running services, start the missing ones as children.

    What this starts is stopped when `stack` closes. Outside local mode, settings come back unchanged.
    """
    if not settings.local.enabled:
        return settings
    serving = {name: await _find_serving(settings, name) for name in (AZURITE, EMULATOR)}
    if serving[EMULATOR] is None:
        check_emulator_key(settings)  # before anything is started
    if None in serving.values():
        # Taken before starting and released after the services below are stopped.
        stack.callback(release_pid_lock, await anyio.to_thread.run_sync(acquire_start_lock, settings))
        # Whoever started services on this state folder before us is gone (it no longer holds the
        # lock): what it left running would share our data folders, so it is stopped first.
        await stop_survivors(settings)
    for name, endpoint in serving.items():
        if endpoint is None:
            configured = _configured(settings, name)
            service = await _start(settings, name, endpoint_port(configured), detached=False)
            await anyio.to_thread.run_sync(_record_child, settings, service)
            stack.push_async_callback(_stop_child, settings, service)
            endpoint = with_port(configured, service.endpoint)
            log.info(
                "local.service_started", service=name, endpoint=endpoint, pid=service.pid, detached=False
            )
        settings = _with_endpoint(settings, name, endpoint)
    return settings


def acquire_start_lock(settings: Settings) -> int:
    """Refuse a second process starting services on the same state folder while this one runs.

    Two Azurite processes writing one `--location` would corrupt its database; `topn local up` is
    how several runs share services. `release_pid_lock` of the returned descriptor releases it.
    """
    try:
        return take_pid_lock(local_dir(settings) / "start.lock")
    except LockHeldError as held:
        raise UsageError(
            f"another topn run (pid {held.holder}) is using local services it started from "
            f"{local_dir(settings)}. Wait for it to finish, or run `topn local up` once so that runs "
            "share the services."
        ) from None


async def _stop_child(settings: Settings, service: processes.ServiceProcess) -> None:
    reclaim = service.name == AZURITE and settings.run.delete_run_blobs
    reclaim = reclaim and await _only_bundle_left(settings, service)
    status = await processes.stop_service(service, STOP_GRACE_S)
    _child_record(settings, service.name).unlink(missing_ok=True)
    log.info("local.service_stopped", service=service.name, pid=service.pid, exit_status=status)
    if reclaim:
        # The run deleted its blobs and nothing but the node bundle is left: Azurite would free the
        # extent files only at a start 10 minutes later (orchestrator/local/prune.py), so topn does.
        from orchestrator.local.prune import remove_data_folder

        removed = await anyio.to_thread.run_sync(remove_data_folder, local_dir(settings) / "azurite")
        log.info("local.data_reclaimed", service=AZURITE, bytes=removed.size_bytes)


async def _only_bundle_left(settings: Settings, service: processes.ServiceProcess) -> bool:
    """Our own Azurite holds no blob but the node bundle (a failure to ask says no)."""
    from orchestrator.local.prune import azurite_client, holds_only_the_bundle

    # Shielded and bounded: this runs while the run's stack closes, perhaps after Ctrl-C, and must
    # never keep Azurite from being stopped.
    with anyio.move_on_after(10, shield=True):
        try:
            async with azurite_client(service.endpoint) as client:
                return await holds_only_the_bundle(client, settings.storage.container_prefix)
        except Exception:  # Azurite gone or wedged: keep its data, its garbage collection frees it later
            return False
    return False


def _child_record(settings: Settings, name: str) -> Path:
    """Where a run's own child service is recorded, so that a survivor can be found after topn died."""
    return local_dir(settings) / "children" / f"{name}.json"


def _record_child(settings: Settings, service: processes.ServiceProcess) -> None:
    path = _child_record(settings, service.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"pid": service.pid, "parent_pid": os.getpid(), "endpoint": service.endpoint}
    path.write_text(json.dumps(document) + "\n", encoding="utf-8")


async def stop_survivors(settings: Settings) -> list[RecordedService]:
    """Stop the child services a dead topn left running (call with the start lock held).

    On Linux they end with their parent (PR_SET_PDEATHSIG); elsewhere, or if one ignored that
    signal, the records under `<state_dir>/local/children/` find them.
    """
    stopped: list[RecordedService] = []
    for name in (AZURITE, EMULATOR):
        path = _child_record(settings, name)
        try:
            recorded = RecordedService(name, int(json.loads(path.read_text(encoding="utf-8"))["pid"]), "")
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if _alive(recorded.pid) and _is_our_process(recorded):
            await _stop_pid(recorded)
            stopped.append(recorded)
            log.warning("local.survivor_stopped", service=name, pid=recorded.pid)
        path.unlink(missing_ok=True)
    return stopped


async def _stop_pid(service: RecordedService) -> None:
    """SIGTERM another process's service, then SIGKILL after the grace period."""
    processes.signal_pid(service.pid, signal.SIGTERM)
    # Another process's pid gives no event to wait on: poll it, for at most the grace period.
    for _ in range(int(STOP_GRACE_S / POLL_S)):
        if not (_alive(service.pid) and _is_our_process(service)):
            return
        await anyio.sleep(POLL_S)
    if _alive(service.pid) and _is_our_process(service):
        processes.signal_pid(service.pid, signal.SIGKILL)


async def serving_recorded(settings: Settings) -> dict[str, str]:
    """Endpoints of the services `topn local up` started that are still ours and serving."""
    serving: dict[str, str] = {}
    for name, service in (await anyio.to_thread.run_sync(read_recorded, settings)).items():
        if _is_our_process(service) and await is_serving(service.endpoint):
            serving[name] = service.endpoint
    return serving


async def local_up(settings: Settings) -> dict[str, RecordedService]:
    """Start detached services that keep running across runs; reuse the ones already up."""
    lock = await anyio.to_thread.run_sync(acquire_start_lock, settings)
    try:
        return await _start_detached_services(settings)
    finally:
        release_pid_lock(lock)


async def _start_detached_services(settings: Settings) -> dict[str, RecordedService]:
    check_emulator_key(settings)  # before anything is started
    recorded = read_recorded(settings)
    result: dict[str, RecordedService] = {}
    for name in (AZURITE, EMULATOR):
        existing = recorded.get(name)
        if existing is not None and await is_serving(existing.endpoint) and _is_our_process(existing):
            result[name] = existing
            continue
        configured = _configured(settings, name)
        if endpoint_port(configured) != 0 and await is_serving(configured):
            raise ServiceUnavailableError(
                f"{configured} (from {settings.source}) is already serving, but `topn local up` did not "
                "start it. Stop it, or just use it: `topn run` will."
            )
        service = await _start(settings, name, endpoint_port(configured), detached=True)
        result[name] = RecordedService(name, service.pid, with_port(configured, service.endpoint))
        write_recorded(settings, {**recorded, **result})
        log.info(
            "local.service_started",
            service=name,
            endpoint=result[name].endpoint,
            pid=service.pid,
            detached=True,
        )
    write_recorded(settings, result)
    return result


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _is_our_process(service: RecordedService) -> bool:
    # A pid from an old state file may have been reused by an unrelated process: never signal that one.
    marker = "azurite" if service.name == AZURITE else "emulator"
    return marker in _command_line(service.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def local_down(settings: Settings) -> list[RecordedService]:
    """Stop the services `topn local up` started (SIGTERM, then SIGKILL after a grace period)."""
    stopped: list[RecordedService] = []
    try:
        lock = await anyio.to_thread.run_sync(acquire_start_lock, settings)
    except UsageError:
        pass  # held by a live run: its own services are not survivors
    else:
        try:
            stopped += await stop_survivors(settings)
        finally:
            release_pid_lock(lock)
    for service in read_recorded(settings).values():
        if not _alive(service.pid) or not _is_our_process(service):
            continue
        await _stop_pid(service)
        stopped.append(service)
        log.info("local.service_stopped", service=service.name, pid=service.pid, exit_status=None)
    services_file(settings).unlink(missing_ok=True)
    return stopped
