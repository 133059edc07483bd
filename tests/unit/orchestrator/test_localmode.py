"""Local mode's pure parts: endpoint arithmetic, the state file, and the start lock."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from orchestrator.azure.clients import endpoint_port
from orchestrator.errors import ConfigError, UsageError
from orchestrator.files import release_pid_lock
from orchestrator.local import services as localmode
from orchestrator.local.processes import EMULATOR_ACCOUNT_KEY, dies_with_this_process, project_root
from orchestrator.settings import Settings, load_settings


def settings_in(folder: Path) -> Settings:
    base = load_settings(project_root() / "config" / "local.toml", {})
    return replace(base, local=replace(base.local, state_dir=folder / ".topn"))


def test_ports_and_endpoints() -> None:
    assert endpoint_port("http://127.0.0.1:0/devstoreaccount1") == 0
    assert endpoint_port("https://acct.blob.core.windows.net") == 443
    assert endpoint_port("http://127.0.0.1:8123") == 8123
    assert (
        localmode.with_port("http://127.0.0.1:0/devstoreaccount1", "http://127.0.0.1:40123/devstoreaccount1")
        == "http://127.0.0.1:40123/devstoreaccount1"
    )
    assert localmode.with_port("http://127.0.0.1:0", "http://127.0.0.1:40123") == "http://127.0.0.1:40123"


def test_the_state_file_round_trips_and_tolerates_garbage(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    assert localmode.read_recorded(settings) == {}
    services = {
        "azurite": localmode.RecordedService("azurite", 11, "http://127.0.0.1:1/devstoreaccount1"),
        "emulator": localmode.RecordedService("emulator", 12, "http://127.0.0.1:2"),
    }
    localmode.write_recorded(settings, services)
    assert localmode.read_recorded(settings) == services
    localmode.services_file(settings).write_text("{not json", encoding="utf-8")
    assert localmode.read_recorded(settings) == {}


async def test_a_listening_port_serves_and_port_zero_or_a_closed_port_does_not() -> None:
    assert not await localmode.is_serving("http://127.0.0.1:0")
    # A real listener on a port the system picked: serving while open, not once closed. (A fixed
    # "nobody listens here" port is not safe: local mode itself starts services on a given port.)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # the kernel completes the handshake; no accept() needed
        port = int(listener.getsockname()[1])
        assert await localmode.is_serving(f"http://127.0.0.1:{port}/devstoreaccount1")
    assert not await localmode.is_serving(f"http://127.0.0.1:{port}")


def test_a_second_starter_on_the_same_state_folder_is_refused(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    first = localmode.acquire_start_lock(settings)
    try:
        with pytest.raises(UsageError, match="topn local up"):
            localmode.acquire_start_lock(settings)
    finally:
        release_pid_lock(first)
    release_pid_lock(localmode.acquire_start_lock(settings))  # free again once the holder is done


def test_only_the_emulators_public_key_may_start_the_emulator(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    assert settings.batch.account_key == EMULATOR_ACCOUNT_KEY  # what config/local.toml holds
    localmode.check_emulator_key(settings)
    localmode.check_emulator_key(replace(settings, batch=replace(settings.batch, account_key=None)))
    exported = base64.b64encode(b"a real account's key, exported for Azure").decode()
    with pytest.raises(ConfigError) as raised:
        localmode.check_emulator_key(replace(settings, batch=replace(settings.batch, account_key=exported)))
    message = str(raised.value)
    assert "Unset TOPN_BATCH_ACCOUNT_KEY" in message and exported not in message


def test_local_down_stops_a_child_service_a_dead_run_left_behind(tmp_path: Path) -> None:
    """Where no parent-death signal stopped it (another OS, an ignored signal), its record finds it."""
    settings = settings_in(tmp_path)
    # A stand-in survivor whose command line looks like the emulator's (what `_is_our_process` checks).
    survivor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "-m", "emulator"])
    try:
        command_line = Path(f"/proc/{survivor.pid}/cmdline")
        for _ in range(100):  # just after exec the kernel may not show the new command line yet
            if b"emulator" in command_line.read_bytes():
                break
            time.sleep(0.05)
        record = localmode.local_dir(settings) / "children" / "emulator.json"
        record.parent.mkdir(parents=True)
        record.write_text(json.dumps({"pid": survivor.pid, "parent_pid": 999999, "endpoint": "http://x"}))
        stopped = anyio.run(localmode.local_down, settings)
        assert [service.pid for service in stopped] == [survivor.pid]
        assert survivor.wait(timeout=10) is not None and not record.exists()
    finally:
        survivor.kill()
        survivor.wait(timeout=10)


def test_a_run_local_service_is_started_behind_the_parent_death_launcher() -> None:
    wrapped = dies_with_this_process(["azurite-blob", "--silent"])
    if sys.platform.startswith("linux"):
        assert wrapped[-3:] == [str(os.getpid()), "azurite-blob", "--silent"]
        assert "PR_SET_PDEATHSIG" in " ".join(wrapped)
    else:
        assert wrapped == ["azurite-blob", "--silent"]
