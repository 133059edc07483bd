"""`node.pyz unit` as Batch tasks on the emulator: the manifest is the task's one resource file, the
inputs are read from Azurite with a read-only SAS, and each task's result blob carries its own
AZ_BATCH_* identity; a file split over two tasks merges to the one-process count."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.batch import models
from azure.storage.blob import (
    BlobSasPermissions,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)
from azure.storage.blob.aio import BlobServiceClient

from node.counting import count_file
from node.manifest import UnitInput, UnitManifest, encode_manifest, split_ranges
from node.pack import build_zipapp
from node.result import decode_result_blob, merge_ranges, render_output
from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.integration.emulator.conftest import batch_client, pool_options, wait_job_done
from tests.unit.node.edge_files import EDGE_FILES
from tests.unit.node.test_ranges_and_merge import EDGE_TEXT

pytestmark = pytest.mark.asyncio(loop_scope="session")
EXPIRY = timedelta(hours=1)


def _container_sas(azurite: StorageEndpoint, container: str, permission: ContainerSasPermissions) -> str:
    sas = generate_container_sas(
        azurite.account_name,
        container,
        account_key=azurite.account_key,
        permission=permission,
        expiry=datetime.now(UTC) + EXPIRY,
    )
    return f"{azurite.endpoint}/{container}?{sas}"


def _blob_sas(azurite: StorageEndpoint, container: str, name: str) -> str:
    sas = generate_blob_sas(
        azurite.account_name,
        container,
        name,
        account_key=azurite.account_key,
        permission=BlobSasPermissions(read=True),
        expiry=datetime.now(UTC) + EXPIRY,
    )
    return f"{azurite.endpoint}/{container}/{name}?{sas}"


async def test_units_run_as_batch_tasks_with_their_own_identity(
    azurite: StorageEndpoint, batch_emulator: BatchEndpoint, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    inputs, outputs, app = f"in-{suffix}", f"out-{suffix}", f"app-{suffix}"
    big = EDGE_TEXT * 41
    pyz = build_zipapp(tmp_path / "node.pyz")
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        for name in (inputs, outputs, app):
            await service.create_container(name)
        for name, data in {**EDGE_FILES, "big.log": big}.items():
            await service.get_blob_client(inputs, name).upload_blob(data)
        big_etag = (await service.get_blob_client(inputs, "big.log").get_blob_properties()).etag
        await service.get_blob_client(app, "node.pyz").upload_blob(pyz.read_bytes())
        source = _container_sas(azurite, inputs, ContainerSasPermissions(read=True))
        small = sorted(EDGE_FILES)
        manifests = {
            "t-small": [UnitInput(name, 0, name, f"{name}_OUTPUT") for name in small],
            **{
                f"t-range{number}": [UnitInput("big.log", 0, "big.log", None, span, big_etag, len(big))]
                for number, span in enumerate(split_ranges(len(big), 2))
            },
        }
        for task_id, unit_inputs in manifests.items():
            manifest = UnitManifest(
                task_id, "tutorial", 5, f"results/{task_id}.json.gz", (source,), tuple(unit_inputs)
            )
            await service.get_blob_client(app, f"units/{task_id}.json").upload_blob(encode_manifest(manifest))

        pool_id, job_id = f"pool-{suffix}", f"job-{suffix}"
        output_url = _container_sas(azurite, outputs, ContainerSasPermissions(create=True, write=True))
        tasks = [
            models.BatchTaskCreateOptions(
                id=task_id,
                command_line="python3 node.pyz unit --manifest unit.json",
                resource_files=[
                    models.ResourceFile(http_url=_blob_sas(azurite, app, "node.pyz"), file_path="node.pyz"),
                    models.ResourceFile(
                        http_url=_blob_sas(azurite, app, f"units/{task_id}.json"), file_path="unit.json"
                    ),
                ],
                environment_settings=[
                    models.EnvironmentSetting(name="TOPN_OUTPUT_SAS_URL", value=output_url)
                ],
            )
            for task_id in manifests
        ]
        async with batch_client(batch_emulator) as client:
            await client.create_pool(pool_options(pool_id, nodes=2, slots=2))
            await client.create_job(
                models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id))
            )
            await client.create_task_collection(job_id, models.BatchTaskGroup(task_values=tasks))
            await wait_job_done(client, job_id, len(tasks), timeout_s=120)
            finished = {task_id: await client.get_task(job_id, task_id) for task_id in manifests}
            await (await client.begin_delete_pool(pool_id, polling_interval=0.1)).result()
        for task_id, task in finished.items():
            assert task.execution_info.exit_code == 0, task_id

        results = {}
        for task_id in manifests:
            blob = service.get_blob_client(outputs, f"results/{task_id}.json.gz")
            results[task_id] = decode_result_blob(await (await blob.download_blob()).readall())
            assert results[task_id].identity == {
                "AZ_BATCH_NODE_ID": finished[task_id].node_info.node_id,
                "AZ_BATCH_TASK_ID": task_id,
                "AZ_BATCH_JOB_ID": job_id,
                "AZ_BATCH_POOL_ID": pool_id,
            }
        unit = results["t-small"]
        for entry in unit.files:
            blob = service.get_blob_client(outputs, f"{entry.relpath}_OUTPUT")
            uploaded = await (await blob.download_blob()).readall()
            assert render_output(entry.counts, unit.top, unit.identity).encode("utf-8") == uploaded, (
                entry.relpath
            )

    local = tmp_path / "big.log"
    local.write_bytes(big)
    merged = merge_ranges([results["t-range0"].files[0], results["t-range1"].files[0]])
    assert merged.counts == list(count_file(local, "tutorial").counts.items())
