"""`az batch` from azure-cli 2.91.0 (its own cached venv) against the emulator.

The install (about 150 packages) can be unavailable offline: then this one test is skipped with
the reason, except in CI (CI=true, as CI runs .ci/run), where it fails instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import StartEmulator
from tests.integration.emulator.clients import venvs
from tests.integration.emulator.clients.conftest import (
    HERE,
    REQUIRE_INSTALLS,
    client_env,
    client_python,
    run_client,
    unique,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def az_cli_python() -> Path:
    try:
        return await client_python(venvs.AZURE_CLI)
    except venvs.VenvInstallError as error:
        if os.environ.get(REQUIRE_INSTALLS):
            raise
        pytest.skip(f"azure-cli could not be installed into its venv (offline?): {error}")


@pytest.mark.timeout(900)  # a cold azure-cli install takes minutes on 2 shared cores
async def test_az_batch_lifecycle(start_emulator: StartEmulator, tmp_path: Path) -> None:
    """Numbers go as flags (the CLI sends them as JSON strings).

    The CLI has no page-size option, so its paged listing is shown by an emulator that answers at
    most 2 items a page (as the service may answer fewer than asked): 6 tasks take 3 requests.
    """
    python = await az_cli_python()
    batch_emulator = await start_emulator(["--max-page-size", "2"])
    pool_id = unique("az-pool")
    env = client_env(
        batch_emulator, POOL_ID=pool_id, JOB_ID=unique("az-job"), AZURE_CONFIG_DIR=str(tmp_path / "az")
    )
    report = await run_client([str(python), str(HERE / "python" / "exercise_az_cli.py")], env, timeout_s=300)
    assert report["pool"] == {
        "targetDedicatedNodes": 1,
        "currentDedicatedNodes": 1,
        "startTaskWaitForSuccess": True,
    }
    assert report["poolListIds"] == [pool_id]
    assert report["nodeStates"] == ["idle"]
    assert {"startup/stdout.txt", "startup/stderr.txt", "shared", "workitems"} <= set(report["nodeFileNames"])
    assert report["startTaskStdout"] == "start task ran\n"
    assert report["resized"] == {"targetDedicatedNodes": 2, "currentDedicatedNodes": 2}
    assert report["jobPriority"] == 100
    assert report["addCollectionStatuses"] == ["success"] * 5
    assert report["taskCounts"] == {"active": 0, "running": 0, "completed": 6, "succeeded": 6, "failed": 0}
    assert report["completedTaskIds"] == [f"t{i}" for i in range(6)]
    assert report["completedListRequests"] == 3
    assert {"stdout.txt", "stderr.txt"} <= set(report["taskFileNames"])
    assert report["taskStdout"] == "hello from t0\n"
    assert report["deletedTaskGet"] == {"status": "error", "code": "TaskNotFound"}
    assert report["wrongKeyDelete"] == {"status": "error", "code": "AuthenticationFailed"}
    assert report["deletedJobGet"] == {"status": "error", "code": "JobNotFound"}
    assert report["deletedPoolGet"] == {"status": "error", "code": "PoolNotFound"}
