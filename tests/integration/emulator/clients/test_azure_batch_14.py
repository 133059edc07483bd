"""azure-batch 14.2.0 (the last track-1 Python SDK, msrest) against the emulator, from a cached venv."""

from __future__ import annotations

import pytest

from tests.conftest import BatchEndpoint
from tests.integration.emulator.clients import venvs
from tests.integration.emulator.clients.conftest import (
    HERE,
    check_lifecycle_report,
    client_env,
    client_python,
    run_client,
    unique,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_azure_batch_14_lifecycle(batch_emulator: BatchEndpoint) -> None:
    python = await client_python(venvs.AZURE_BATCH_14)
    pool_id = unique("py14-pool")
    env = client_env(batch_emulator, POOL_ID=pool_id, JOB_ID=unique("py14-job"))
    report = await run_client([str(python), str(HERE / "python" / "exercise_azure_batch_14.py")], env)
    check_lifecycle_report(report, pool_id)
