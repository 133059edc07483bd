"""`topn local up | down | status | prune`: the bodies of the local subcommands (cli.py parses)."""

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
    elif action == "prune":
        _prune(settings, force)
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


def _prune(settings: Settings, force: bool) -> None:
    from orchestrator.service.localprune import prune

    report = anyio.run(lambda: prune(settings, force=force))
    for item in report.removed:
        print(f"{'removed' if item.on_disk else 'deleted'} {item.what}: {format_bytes(item.size_bytes)}")
    for note in report.notes:
        print(f"note: {note}")
    if not report.removed:
        print("nothing to remove")
        return
    print(
        f"freed on disk: {format_bytes(report.freed_on_disk)}; blobs deleted in Azurite: "
        f"{format_bytes(report.blob_bytes_deleted)}"
    )


def format_bytes(count: int) -> str:
    """`1,000 bytes`, or with a binary unit from 1 KiB on: `1.2 MiB (1,258,291 bytes)`."""
    if count < 1024:
        return f"{count:,} bytes"
    units = ("KiB", "MiB", "GiB", "TiB")
    value, index = count / 1024, 0
    while value >= 1024 and index < len(units) - 1:
        value, index = value / 1024, index + 1
    return f"{value:.1f} {units[index]} ({count:,} bytes)"
