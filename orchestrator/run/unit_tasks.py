"""A work unit's task: its manifest uploaded to the run's input container, and the task that brings it."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import timedelta

import anyio
from azure.batch.models import (
    AutoUserSpecification,
    BatchTaskConstraints,
    BatchTaskCreateOptions,
    EnvironmentSetting,
    ResourceFile,
    UserIdentity,
)
from azure.storage.blob import ContentSettings

from orchestrator import naming
from orchestrator.azure.retry import retry_call
from orchestrator.azure.staging import SasMinter, StagedInput
from orchestrator.run import units
from orchestrator.run.context import RunContext
from orchestrator.run.splitting import pin_etags, unit_entries

MANIFEST_CONTENT_TYPE = "application/json"


async def stage_manifests(
    run: RunContext, minter: SasMinter, units_to_stage: Sequence[tuple[int, Sequence[StagedInput]]]
) -> None:
    """Upload the manifest of each unit, given its staged inputs (overwritten: a re-issued task's
    carries fresh SAS).

    One request per unit, at most `[run] upload_concurrency` at a time. The manifest holds the read
    SAS of the run's input container, so it lives in that container, readable by its task alone.
    """
    source_url = minter.container_read_url(run.input_container)
    await pin_etags(run, units_to_stage)
    blob_sources = read_urls_of_blob_inputs(minter, units_to_stage)
    pending = iter(units_to_stage)

    async def worker() -> None:
        for unit_index, items in pending:
            task_id = run.task_ids[unit_index]
            data = units.build_manifest(
                task_id,
                tokenizer=run.settings.run.tokenizer,
                top=run.settings.run.top,
                source_url=source_url,
                entries=await unit_entries(run, unit_index, items),
                blob_sources=blob_sources,
            )
            blob = run.blobs.get_blob_client(run.input_container, naming.unit_manifest_blob(task_id))
            upload = functools.partial(
                blob.upload_blob,
                data,
                overwrite=True,
                content_settings=ContentSettings(content_type=MANIFEST_CONTENT_TYPE),
            )
            await retry_call(run.retry, "upload_blob", upload)

    # A fixed number of workers: coroutines in flight are bounded by the concurrency, not by the units.
    async with anyio.create_task_group() as group:
        for _ in range(min(run.settings.run.upload_concurrency, len(units_to_stage))):
            group.start_soon(worker)


def read_urls_of_blob_inputs(
    minter: SasMinter, units_to_stage: Sequence[tuple[int, Sequence[StagedInput]]]
) -> dict[str, str]:
    """A read-only container SAS URL (read: no list, write or delete) for each container whose blobs
    these units read where they live; minted once per call, not once per input."""
    containers = {
        item.container for _, items in units_to_stage for item in items if item.container is not None
    }
    return {container: minter.container_read_url(container) for container in sorted(containers)}


def task_of_unit(
    run: RunContext, minter: SasMinter, task_script_url: str | None, unit_index: int
) -> BatchTaskCreateOptions:
    """The task of one work unit: its manifest as a resource file, and the node's `unit` command."""
    settings = run.settings.run
    task_id = run.task_ids[unit_index]
    resource_files = [
        ResourceFile(
            http_url=minter.blob_read_url(run.input_container, naming.unit_manifest_blob(task_id)),
            file_path=naming.unit_manifest_file(task_id),
        )
    ]
    script = naming.NODE_SCRIPT_PATH
    if task_script_url is not None:
        resource_files.append(ResourceFile(http_url=task_script_url, file_path=naming.TASK_NODE_SCRIPT_PATH))
        script = naming.TASK_NODE_SCRIPT_PATH
    return BatchTaskCreateOptions(
        id=run.batch_task_id(task_id),
        command_line=naming.task_command_line(task_id, python=run.settings.pool.node_python, script=script),
        resource_files=resource_files,
        environment_settings=[
            EnvironmentSetting(
                name=naming.OUTPUT_SAS_VARIABLE, value=minter.container_write_url(run.output_container)
            )
        ],
        constraints=BatchTaskConstraints(
            max_wall_clock_time=timedelta(seconds=settings.task_max_wall_clock_s),
            retention_time=timedelta(seconds=settings.task_retention_s),
            max_task_retry_count=settings.task_max_retries,
        ),
        user_identity=UserIdentity(auto_user=AutoUserSpecification(scope="pool", elevation_level="nonadmin")),
    )
