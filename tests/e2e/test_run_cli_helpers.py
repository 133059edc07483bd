"""The e2e helpers themselves: a run against a fixture service that is gone must fail, loudly."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.run_cli import run_topn, topn_environment


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_dead_fixture_service_is_not_replaced_by_one_local_mode_starts(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    gone = replace(batch_emulator, endpoint=f"http://127.0.0.1:{closed_port()}")
    (tmp_path / "a.txt").write_text("one two\n", encoding="utf-8")
    env = topn_environment(gone, azurite, tmp_path / ".topn")
    result = run_topn(["run", "a.txt", "--out", "out"], tmp_path, env)
    assert result.exit_code == 1, result.stderr[-2000:]
    names = [event["event"] for event in result.events()]
    assert "local.service_started" not in names and names[-1] == "command.failed", names
    assert result.events()[-1]["error_type"] == "ServiceUnavailableError"
    assert not (tmp_path / "out").exists()
