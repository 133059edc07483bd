"""`topn local up | down | status`: the bodies of the local subcommands (cli.py parses)."""

from __future__ import annotations

import anyio

from orchestrator.errors import ConfigError, UsageError
from orchestrator.local import services as localmode
from orchestrator.settings import Settings

EXIT_OK = 0


def local_command(action: str, settings: Settings, *, force: bool = False) -> int:
    """Run one `topn local` action, printing what it did; the exit status (errors are raised)."""
    if not settings.local.enabled:
        raise ConfigError(
            f"[local] enabled is false in {settings.source}: `topn local` manages the local emulators only. "
            "Use config/local.toml (the default)."
        )
    if action == "up":
        _up(settings)
    elif action == "down":
        _down(settings, force)
    else:
        _status(settings)
    return EXIT_OK


def _up(settings: Settings) -> None:
    from orchestrator.journal import check_state_folder

    check_state_folder(settings.local.state_dir)
    services = anyio.run(localmode.local_up, settings)
    for service in services.values():
        print(f"{service.name:<9} {service.endpoint}  (pid {service.pid})")
    print(f"State: {localmode.services_file(settings)}  -  stop them with `topn local down`.")


def _down(settings: Settings, force: bool) -> None:
    from orchestrator.service.runlock import runs_being_driven

    driven = runs_being_driven(settings.local.state_dir)
    if driven and not force:
        names = ", ".join(f"{run_id} (pid {pid})" for run_id, pid in driven)
        raise UsageError(
            f"runs are using the local services: {names}. Wait for them to finish, or stop the "
            "services anyway with `topn local down --force` (those runs can be resumed later)"
        )
    stopped = anyio.run(localmode.local_down, settings)
    for service in stopped:
        print(f"stopped {service.name} (pid {service.pid})")
    if not stopped:
        print("nothing to stop")


def _status(settings: Settings) -> None:
    recorded = localmode.read_recorded(settings)
    for service in recorded.values():
        serving = anyio.run(localmode.is_serving, service.endpoint)
        print(f"{service.name:<9} {service.endpoint}  (pid {service.pid}, {'up' if serving else 'down'})")
    if not recorded:
        print("no local services recorded (start them with `topn local up`)")
