"""Output files carry every upload header the emulator accepts onto the blob."""

from __future__ import annotations

import uuid

import pytest
from azure.batch import models

from tests.conftest import BatchEndpoint
from tests.integration.emulator.conftest import batch_client, pool_options, wait_job_done
from tests.integration.emulator.test_task_runtime import Storage, storage  # noqa: F401 (fixture)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_upload_headers_become_blob_properties_and_metadata(
    batch_emulator: BatchEndpoint,
    storage: Storage,  # noqa: F811
) -> None:
    pool_id, job_id = f"pool-{uuid.uuid4().hex[:8]}", f"job-{uuid.uuid4().hex[:8]}"
    headers = {
        "Content-Type": "text/csv",
        "x-ms-blob-content-language": "en-GB",
        "Content-Disposition": "attachment",
        "Cache-Control": "no-cache",
        "x-ms-meta-origin": "emulator",
    }
    output = models.OutputFile(
        file_pattern="table.csv",
        destination=models.OutputFileDestination(
            container=models.OutputFileBlobContainerDestination(
                container_url=storage.container_url(write=True),
                path="out/table.csv",
                upload_headers=[
                    models.OutputFileUploadHeader(name=name, value=value) for name, value in headers.items()
                ],
            )
        ),
        upload_options=models.OutputFileUploadConfiguration(
            upload_condition=models.OutputFileUploadCondition.TASK_SUCCESS
        ),
    )
    async with batch_client(batch_emulator) as client:
        await client.create_pool(pool_options(pool_id))
        await client.create_job(
            models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id))
        )
        await client.create_task(
            job_id,
            models.BatchTaskCreateOptions(
                id="writes", command_line="/bin/sh -c 'echo a,b > table.csv'", output_files=[output]
            ),
        )
        counts = await wait_job_done(client, job_id, 1)
        assert counts.succeeded == 1
        await client.begin_delete_pool(pool_id)
    properties = await storage.container.get_blob_client("out/table.csv").get_blob_properties()
    settings = properties.content_settings
    assert (settings.content_type, settings.content_language) == ("text/csv", "en-GB")
    assert (settings.content_disposition, settings.cache_control) == ("attachment", "no-cache")
    assert properties.metadata == {"origin": "emulator"}
