"""@azure/batch 10.2.0 (JavaScript, npm devDependency) against the emulator, run with node."""

from __future__ import annotations

import pytest

from tests.conftest import BatchEndpoint
from tests.integration.emulator.clients.conftest import (
    HERE,
    check_lifecycle_report,
    client_env,
    run_client,
    unique,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_javascript_client_lifecycle(batch_emulator: BatchEndpoint) -> None:
    """Pools, nodes, node files, jobs, tasks, paging, task files, counts; deletes sign no Content-Length."""
    pool_id = unique("js-pool")
    env = client_env(batch_emulator, POOL_ID=pool_id, JOB_ID=unique("js-job"))
    report = await run_client(["node", str(HERE / "js" / "exercise.cjs")], env)
    check_lifecycle_report(report, pool_id)
