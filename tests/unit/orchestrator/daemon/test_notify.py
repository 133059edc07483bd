"""systemd notify over a real datagram socket (as systemd listens), and a no-op without one."""

from __future__ import annotations

import socket
from pathlib import Path

from orchestrator.service.notify import SystemdNotifier, notify_address


def test_ready_watchdog_and_stopping_reach_the_notify_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(2)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
        assert notifier.enabled
        assert notifier.ready("serving http://127.0.0.1:9464")
        assert listener.recv(4096) == b"READY=1\nSTATUS=serving http://127.0.0.1:9464"
        assert notifier.watchdog()
        assert listener.recv(4096) == b"WATCHDOG=1"
        assert notifier.stopping()
        assert listener.recv(4096) == b"STOPPING=1"


def test_without_systemd_nothing_is_sent() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled and not notifier.ready() and not notifier.watchdog()


def test_abstract_socket_names_and_junk() -> None:
    assert notify_address({"NOTIFY_SOCKET": "@/org/systemd/notify"}) == "\0/org/systemd/notify"
    assert notify_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"


def test_a_socket_nobody_listens_on_is_not_an_error(tmp_path: Path) -> None:
    assert not SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).ready()
