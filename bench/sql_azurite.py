"""Azurite with its blob metadata in a MariaDB database of its own, for 100,000-blob blocks.

Azurite's default metadata store (LokiJS) finds a blob by scanning every blob of the account, so
each request costs Azurite more CPU as it holds more blobs: at 100,000 a run is bounded by that
scan, not by what it measures. Azurite also supports a SQL store (`AZURITE_DB`, a MySQL URL),
where a lookup is an indexed query. `mariadb_server` starts a throwaway MariaDB for the bench
process (data folder, socket and a loopback port under the bench's temporary folder, a password
made up for this process and never printed); `start_azurite` then gives each block's Azurite an
empty database of its own. Debian: `apt-get install mariadb-server`.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio

from bench.fault_runs import free_port
from orchestrator.local import processes as local

READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class MariaDB:
    client: str
    socket_path: Path
    port: int
    password: str

    def run_sql(self, statement: str) -> None:
        # On stdin, not the command line: the password in a CREATE USER stays out of `ps` and of
        # the CalledProcessError a failure raises.
        subprocess.run(
            [self.client, f"--socket={self.socket_path}", "-uroot"],
            input=statement.encode("utf-8"),
            check=True,
            capture_output=True,
            timeout=60,
        )


_server: MariaDB | None = None


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if not found:
        raise SystemExit(
            f"--azurite-sql needs MariaDB's {name}, which is not installed: "
            "apt-get install mariadb-server (Debian), then run the bench again"
        )
    return found


@contextlib.contextmanager
def mariadb_server(folder: Path) -> Iterator[MariaDB]:
    """A MariaDB for this process, stopped on exit; while it runs, `start_azurite` uses it."""
    global _server
    server, install, client = _tool("mariadbd"), _tool("mariadb-install-db"), _tool("mariadb")
    data = folder / "mariadb"
    data.mkdir(parents=True)
    user = getpass.getuser()
    subprocess.run(
        [install, f"--user={user}", f"--datadir={data}", "--auth-root-authentication-method=normal"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    database = MariaDB(client, folder / "mariadb.sock", free_port(), secrets.token_hex(16))
    with (folder / "mariadb.log").open("wb") as log:
        process = subprocess.Popen(
            [
                server,
                f"--user={user}",
                f"--datadir={data}",
                f"--socket={database.socket_path}",
                f"--port={database.port}",
                "--bind-address=127.0.0.1",
                "--skip-log-bin",
                # A benchmark's metadata need not survive a power cut: no flush per commit.
                "--innodb-flush-log-at-trx-commit=2",
                "--innodb-buffer-pool-size=1G",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                database.run_sql("SELECT 1")
                break
            except subprocess.CalledProcessError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"MariaDB did not start: see {folder / 'mariadb.log'}") from None
                time.sleep(0.5)
        database.run_sql(
            f"CREATE USER 'azurite'@'127.0.0.1' IDENTIFIED BY '{database.password}'; "
            "GRANT ALL ON *.* TO 'azurite'@'127.0.0.1';"
        )
        _server = database
        yield database
    finally:
        _server = None
        process.terminate()
        process.wait(timeout=60)


def store_name() -> str:
    """Which metadata store the Azurite started here uses: it bounds the figures at large counts."""
    if _server is not None:
        return "SQL database (MariaDB, --azurite-sql)"
    if os.environ.get("AZURITE_DB"):  # Azurite inherits it: a SQL store set up by hand
        return "SQL database (AZURITE_DB)"
    return "LokiJS (Azurite's default)"


async def start_azurite(location: Path, log_dir: Path) -> local.ServiceProcess:
    """Azurite as `local.start_azurite` starts it; inside `mariadb_server`, on an empty database."""
    if _server is None:
        return await local.start_azurite(location, log_dir)
    name = f"azurite_{secrets.token_hex(4)}"
    await anyio.to_thread.run_sync(_server.run_sql, f"CREATE DATABASE {name};")
    # Azurite reads its SQL store from its environment; only Azurite gets it (the URL holds a password).
    url = f"mysql://azurite:{_server.password}@127.0.0.1:{_server.port}/{name}"
    return await local.start_azurite(location, log_dir, env={**os.environ, "AZURITE_DB": url})
