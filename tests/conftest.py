"""Fixtures that start the real local services (Azurite, the Batch emulator) on free loopback ports.

A service that cannot start fails the tests that need it, with its log in the message; nothing is
ever skipped because a service is missing.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, settings

from orchestrator.local import processes as local

# Properties are about what the code does, not how fast: the suite shares 2 cores among 3 xdist
# workers and the emulators, where one example can take 300 ms. Speed goals live in bench/.
settings.register_profile("topn", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("topn")


@pytest.fixture
def reachable_tmp() -> Iterator[Path]:
    """A fresh folder directly in the system temp folder, which an unprivileged user (`nobody`) can reach.

    Not under pytest's tmp_path: pytest keeps /tmp/pytest-of-USER at mode 0o700 and puts it back
    whenever a pytest process starts, so opening that path up for `nobody` raced with every other
    suite running on the machine.
    """
    folder = Path(tempfile.mkdtemp(prefix="topn-reachable-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        _open_folders(folder)
        shutil.rmtree(folder)


def _open_folders(folder: Path) -> None:
    """Every folder under `folder` listable and writable again, so that a non-root user can remove
    what a test left at mode 0 (each is opened before it is listed)."""
    folder.chmod(0o755)
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            _open_folders(child)


@dataclass(frozen=True)
class StorageEndpoint:
    endpoint: str  # http://127.0.0.1:PORT/devstoreaccount1
    account_name: str
    account_key: str

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};"
            f"AccountKey={self.account_key};BlobEndpoint={self.endpoint};"
        )


@dataclass(frozen=True)
class BatchEndpoint:
    endpoint: str  # http://127.0.0.1:PORT
    account_name: str
    account_key: str
    root: Path
    log_dir: Path
    pid: int


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def azurite(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[StorageEndpoint]:
    """One Azurite blob service for the whole session, with data in a temporary folder."""
    base = tmp_path_factory.mktemp("azurite")
    service = await local.start_azurite(base / "data", base / "logs")
    try:
        yield StorageEndpoint(service.endpoint, local.AZURITE_ACCOUNT_NAME, local.AZURITE_ACCOUNT_KEY)
    finally:
        await local.stop_service(service)


StartEmulator = Callable[..., Awaitable[BatchEndpoint]]


@pytest_asyncio.fixture(loop_scope="session")
async def start_emulator(tmp_path: Path) -> AsyncIterator[StartEmulator]:
    """Start emulators with chosen flags (faults, limits); all are stopped after the test."""
    started: list[local.ServiceProcess] = []

    async def start(
        extra_args: Sequence[str] = (), account_key: str = local.EMULATOR_ACCOUNT_KEY
    ) -> BatchEndpoint:
        root = tmp_path / f"emulator{len(started)}"
        service = await local.start_emulator(
            root / "nodes", root / "logs", account_key=account_key, extra_args=extra_args
        )
        started.append(service)
        return BatchEndpoint(
            service.endpoint,
            local.EMULATOR_ACCOUNT_NAME,
            account_key,
            root / "nodes",
            root / "logs",
            service.pid,
        )

    try:
        yield start
    finally:
        for service in started:
            await local.stop_service(service)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def batch_emulator(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BatchEndpoint]:
    """One fault-free emulator shared by the tests that do not need special flags."""
    base = tmp_path_factory.mktemp("emulator")
    service = await local.start_emulator(base / "nodes", base / "logs")
    try:
        yield BatchEndpoint(
            service.endpoint,
            local.EMULATOR_ACCOUNT_NAME,
            local.EMULATOR_ACCOUNT_KEY,
            base / "nodes",
            base / "logs",
            service.pid,
        )
    finally:
        await local.stop_service(service)
