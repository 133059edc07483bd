"""The pool's image pair against `list_supported_images`, served by the emulator (its
emulator/supported_images.json), through the real SDK client."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from azure.batch import models
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from structlog.testing import capture_logs

from orchestrator.azure import images
from orchestrator.azure.retry import RetryPolicy
from orchestrator.errors import ConfigError
from orchestrator.service import status
from orchestrator.settings import PoolSettings
from tests.conftest import BatchEndpoint

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAST = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.01, deadline_s=5)
JAMMY = PoolSettings(
    image_offer="0001-com-ubuntu-server-jammy",
    image_sku="22_04-lts",
    node_agent_sku_id="batch.node.ubuntu 22.04",
)


def client(batch: BatchEndpoint) -> BatchClient:
    return BatchClient(batch.endpoint, AzureNamedKeyCredential(batch.account_name, batch.account_key))


async def test_the_default_pair_is_supported_and_far_from_its_end_of_life(
    batch_emulator: BatchEndpoint,
) -> None:
    async with client(batch_emulator) as batch:
        with capture_logs() as logs:
            verdict = await images.check_pool_image(
                batch, PoolSettings(), FAST, datetime(2026, 12, 6, tzinfo=UTC), source="t.toml"
            )
    assert verdict.image is not None and verdict.warning is None
    assert verdict.image.end_of_life == datetime(2029, 5, 31, tzinfo=UTC)
    checked = [entry for entry in logs if entry["event"] == "pool.image_checked"]
    assert (
        checked[0]["image"] == "canonical/ubuntu-24_04-lts/server with node agent 'batch.node.ubuntu 24.04'"
    )
    assert checked[0]["end_of_life"] == "2029-05-31"
    assert not [entry for entry in logs if entry["event"] == "pool.image_end_of_life"]


async def test_a_pair_near_its_end_of_life_is_a_warning_kept_for_topn_status(
    batch_emulator: BatchEndpoint, tmp_path: Path
) -> None:
    async with client(batch_emulator) as batch:
        with capture_logs() as logs:
            verdict = await images.check_pool_image(
                batch, JAMMY, FAST, datetime(2027, 3, 1, tzinfo=UTC), source="t.toml"
            )
    assert verdict.warning is not None
    assert "reaches its Batch end of life in 60 days" in verdict.warning
    assert "canonical/ubuntu-24_04-lts/server with node agent 'batch.node.ubuntu 24.04'" in verdict.warning
    warned = [entry for entry in logs if entry["event"] == "pool.image_end_of_life"]
    assert [(entry["log_level"], entry["message"]) for entry in warned] == [("warning", verdict.warning)]
    await status.remember_pool_warning(tmp_path, "p", verdict.warning)
    assert await anyio.to_thread.run_sync(status.pool_warnings, tmp_path) == {"p": verdict.warning}
    await status.remember_pool_warning(tmp_path, "p", None)  # a later check without a warning clears it
    assert await anyio.to_thread.run_sync(status.pool_warnings, tmp_path) == {}


async def test_an_unsupported_pair_is_exit_2_naming_the_supported_alternatives(
    batch_emulator: BatchEndpoint,
) -> None:
    focal = dataclasses.replace(JAMMY, node_agent_sku_id="batch.node.ubuntu 20.04")
    async with client(batch_emulator) as batch:
        with pytest.raises(ConfigError) as refused:
            await images.check_pool_image(
                batch, focal, FAST, datetime(2026, 12, 6, tzinfo=UTC), source="t.toml"
            )
    message = str(refused.value)
    assert refused.value.exit_code == 2
    assert "[pool] image_publisher, image_offer, image_sku and node_agent_sku_id (in t.toml)" in message
    assert "'batch.node.ubuntu 20.04' is not an image and node agent pair" in message
    assert "canonical/ubuntu-24_04-lts/server with node agent 'batch.node.ubuntu 24.04'" in message


async def test_a_kept_pool_is_judged_by_its_own_image_not_the_config(batch_emulator: BatchEndpoint) -> None:
    # A pool kept from an older config (Ubuntu 22.04) while the config now names 24.04: the pool's
    # own pair is what its nodes run, so that is the one checked and warned about.
    pool_id = f"kept-jammy-{uuid.uuid4().hex[:6]}"
    async with client(batch_emulator) as batch:
        await batch.create_pool(
            models.BatchPoolCreateOptions(
                id=pool_id,
                vm_size="standard_d2s_v3",
                target_dedicated_nodes=0,
                virtual_machine_configuration=models.VirtualMachineConfiguration(
                    image_reference=models.BatchVmImageReference(
                        publisher=JAMMY.image_publisher, offer=JAMMY.image_offer, sku=JAMMY.image_sku
                    ),
                    node_agent_sku_id=JAMMY.node_agent_sku_id,
                ),
            )
        )
        try:
            verdict = await images.check_pool_image(
                batch, PoolSettings(id=pool_id), FAST, datetime(2027, 3, 1, tzinfo=UTC), source="t.toml"
            )
            retired = await images.check_pool_image(
                batch, PoolSettings(id=pool_id), FAST, datetime(2027, 6, 1, tzinfo=UTC), source="t.toml"
            )
        finally:
            await batch.begin_delete_pool(pool_id)
    assert verdict.image is not None and verdict.image.offer == JAMMY.image_offer
    assert verdict.warning is not None and "in 60 days" in verdict.warning
    # Past its end of life the pair is still listed (the service's list decides what exists), so it
    # keeps warning with the days since; the alternatives never include it.
    assert retired.warning is not None and "days ago" in retired.warning
    assert all(item.offer != JAMMY.image_offer for item in retired.alternatives)


async def test_a_pair_past_its_end_of_life_cannot_make_a_new_pool(batch_emulator: BatchEndpoint) -> None:
    absent = dataclasses.replace(JAMMY, id=f"never-{uuid.uuid4().hex[:6]}")
    async with client(batch_emulator) as batch:
        with pytest.raises(ConfigError) as refused:
            await images.check_pool_image(
                batch, absent, FAST, datetime(2027, 6, 1, tzinfo=UTC), source="t.toml"
            )
    assert "reached its Batch end of life on 2027-04-30" in str(refused.value)
    assert "canonical/ubuntu-24_04-lts/server" in str(refused.value)
