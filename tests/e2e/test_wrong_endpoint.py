"""`topn run` with an endpoint that answers but is not the configured service or account: exit 2.

Before, a Batch endpoint pointing at Azurite ended in "internal error" with a traceback (exit 1), and a
blob endpoint with a wrong account path passed the check and failed mid-run with a 404 (exit 1).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.run_cli import run_topn, topn_environment
from tests.secret_scan import find_secrets

# README, Exit status: a configuration error is 2, and nothing is created.
EXIT_CONFIG_ERROR = 2


def server_root(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


def wrong_endpoint_cases(
    azurite: StorageEndpoint, batch_emulator: BatchEndpoint
) -> dict[str, tuple[str, dict[str, str]]]:
    """Case name -> (the variable that is wrong, the environment overrides that make it wrong)."""
    return {
        "batch-is-azurite": (
            "TOPN_BATCH_ENDPOINT",
            {"TOPN_BATCH_ENDPOINT": server_root(azurite.endpoint)},
        ),
        "blob-is-the-batch-emulator": (
            "TOPN_STORAGE_BLOB_ENDPOINT",
            {"TOPN_STORAGE_BLOB_ENDPOINT": batch_emulator.endpoint},
        ),
        "blob-has-a-wrong-account": (
            "TOPN_STORAGE_BLOB_ENDPOINT",
            {"TOPN_STORAGE_BLOB_ENDPOINT": f"{server_root(azurite.endpoint)}/otheraccount"},
        ),
    }


CASES = ["batch-is-azurite", "blob-is-the-batch-emulator", "blob-has-a-wrong-account"]


@pytest.mark.parametrize("case", CASES)
def test_an_endpoint_that_is_not_the_service_exits_2_naming_its_variable(
    case: str, azurite: StorageEndpoint, batch_emulator: BatchEndpoint, tmp_path: Path
) -> None:
    variable, overrides = wrong_endpoint_cases(azurite, batch_emulator)[case]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("one two two\n", encoding="utf-8")
    env = topn_environment(
        batch_emulator, azurite, tmp_path / ".topn", TOPN_POOL_ID=f"e2e-wrong-{case}", **overrides
    )
    result = run_topn(["run", "in", "--out", "out"], tmp_path, env)

    assert result.exit_code == EXIT_CONFIG_ERROR, result.stderr[-3000:]
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    failed = [event for event in result.events() if event["event"] == "command.failed"]
    assert len(failed) == 1, result.stderr[-3000:]
    assert failed[0]["error_type"] == "ConfigError"
    message = str(failed[0]["error"])
    assert variable in message and overrides[variable] in message, message
    assert not (tmp_path / "out").exists()  # refused before anything was created
    keys = [azurite.account_key, batch_emulator.account_key]
    assert find_secrets([("stdout", result.stdout), ("stderr", result.stderr)], keys) == []
