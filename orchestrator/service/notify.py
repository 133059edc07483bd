"""systemd's notify protocol (READY=1, WATCHDOG=1, STOPPING=1) over `NOTIFY_SOCKET`; a no-op elsewhere."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping


def notify_address(environ: Mapping[str, str]) -> str | None:
    """The socket address systemd gave (`@name` is Linux's abstract namespace), or None."""
    address = environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return None
    return "\0" + address[1:] if address.startswith("@") else address


class SystemdNotifier:
    """Sends state lines to systemd; nothing happens when the process was not started by it."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._address = notify_address(os.environ if environ is None else environ)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *lines: str) -> bool:
        """One datagram (non-blocking); False when there is no socket or it refused."""
        if self._address is None:
            return False
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto("\n".join(lines).encode(), self._address)
            return True
        return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")
