"""Fixtures of the daemon's unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.service.claims import DaemonFolders


@pytest.fixture
def folders(tmp_path: Path) -> DaemonFolders:
    """The inbox and its three sibling folders, made."""
    made = DaemonFolders(tmp_path / "inbox", tmp_path / "done", tmp_path / "failed", tmp_path / "outbox")
    made.create()
    return made
