"""The seed tutorial's workflow, kept as a baseline: what topn is measured against.

It does what the original "top N words" tutorial does, step by step, with the same SDKs topn uses:
uploads one file at a time, creates the pool and job, adds tasks with one `create_task_collection`
per 100 tasks in sequence, lists every task every second until all are complete, then downloads the
outputs one by one. Only what the tutorial leaves unsafe is changed (unique container and job names
so runs do not collide, SAS that cover the run), never what makes it slow.

    python -m bench.seed_baseline --batch-endpoint URL --blob-endpoint URL FILES_OR_FOLDERS...

Library use: `await run_seed_baseline(...)` returns wall time and task counts.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
from azure.batch.aio import BatchClient
from azure.batch.models import (
    AutoUserSpecification,
    BatchJobCreateOptions,
    BatchPoolCreateOptions,
    BatchPoolInfo,
    BatchStartTask,
    BatchTaskCreateOptions,
    BatchTaskGroup,
    BatchVmImageReference,
    ResourceFile,
    UserIdentity,
    VirtualMachineConfiguration,
)
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import (
    BlobSasPermissions,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)
from azure.storage.blob.aio import BlobServiceClient

from orchestrator.inputs import discover_inputs
from orchestrator.local import processes as local

SEED_POLL_INTERVAL_S = 1.0
SEED_TOP = 3  # the tutorial's --numwords


@dataclass(frozen=True)
class SeedEndpoints:
    batch_endpoint: str
    batch_account: str
    batch_key: str
    blob_endpoint: str  # http://127.0.0.1:PORT/devstoreaccount1
    storage_account: str
    storage_key: str


@dataclass(frozen=True)
class SeedResult:
    wall_s: float
    tasks: int
    succeeded: int
    outputs_downloaded: int


async def run_seed_baseline(
    endpoints: SeedEndpoints,
    files: Sequence[Path],
    node_script: bytes,
    out_dir: Path,
    *,
    pool_id: str = "seed-pool",
    nodes: int = 2,
    slots_per_node: int = 2,
    timeout_s: float = 3600.0,
) -> SeedResult:
    """One run the tutorial's way; returns its wall time (containers deleted, pool kept, as the seed asks)."""
    suffix = datetime.now(UTC).strftime("%H%M%S%f")
    app, inputs, outputs = f"seed-app-{suffix}", f"seed-input-{suffix}", f"seed-output-{suffix}"
    expiry = datetime.now(UTC) + timedelta(hours=2)
    started = time.monotonic()
    credential = AzureNamedKeyCredential(endpoints.batch_account, endpoints.batch_key)
    storage_credential = {"account_name": endpoints.storage_account, "account_key": endpoints.storage_key}
    async with (
        BlobServiceClient(endpoints.blob_endpoint, credential=storage_credential) as blobs,
        BatchClient(endpoints.batch_endpoint, credential) as batch,
    ):
        for container in (app, inputs, outputs):
            await blobs.create_container(container)

        def read_url(container: str, blob: str) -> str:
            sas = generate_blob_sas(
                endpoints.storage_account,
                container,
                blob,
                account_key=endpoints.storage_key,
                permission=BlobSasPermissions(read=True),
                expiry=expiry,
            )
            return f"{blobs.get_blob_client(container, blob).url}?{sas}"

        # Uploads, one at a time.
        await blobs.get_blob_client(app, "node.pyz").upload_blob(node_script, overwrite=True)
        input_names: list[str] = []
        for number, path in enumerate(files):
            name = f"{number:06d}_{path.name}"  # the seed used the base name; that overwrote duplicates
            data = await anyio.Path(path).read_bytes()
            await blobs.get_blob_client(inputs, name).upload_blob(data, overwrite=True)
            input_names.append(name)

        start_task = BatchStartTask(
            command_line="/bin/sh -c " + shlex.quote('cp node.pyz "$AZ_BATCH_NODE_SHARED_DIR/node.pyz"'),
            resource_files=[ResourceFile(http_url=read_url(app, "node.pyz"), file_path="node.pyz")],
            wait_for_success=True,
            user_identity=UserIdentity(
                auto_user=AutoUserSpecification(scope="pool", elevation_level="admin")
            ),
        )
        pool = BatchPoolCreateOptions(
            id=pool_id,
            vm_size="standard_d2s_v3",
            virtual_machine_configuration=VirtualMachineConfiguration(
                image_reference=BatchVmImageReference(
                    publisher="canonical", offer="ubuntu-24_04-lts", sku="server", version="latest"
                ),
                node_agent_sku_id="batch.node.ubuntu 24.04",
            ),
            target_dedicated_nodes=nodes,
            task_slots_per_node=slots_per_node,
            start_task=start_task,
        )
        with contextlib.suppress(ResourceExistsError):
            await batch.create_pool(pool)
        job_id = f"seed-job-{suffix}"
        await batch.create_job(BatchJobCreateOptions(id=job_id, pool_info=BatchPoolInfo(pool_id=pool_id)))

        output_sas = generate_container_sas(
            endpoints.storage_account,
            outputs,
            account_key=endpoints.storage_key,
            permission=ContainerSasPermissions(write=True),
            expiry=expiry,
        )
        tasks = []
        for number, name in enumerate(input_names):
            command = (
                f'python3 "$AZ_BATCH_NODE_SHARED_DIR/node.pyz" --filepath {shlex.quote(name)} '
                f"--numwords {SEED_TOP} --storageaccount {endpoints.storage_account} "
                f"--storagecontainer {outputs} --sastoken {shlex.quote(output_sas)} "
                f"--blob-endpoint {shlex.quote(endpoints.blob_endpoint)}"
            )
            tasks.append(
                BatchTaskCreateOptions(
                    id=f"topNtask{number}",
                    command_line="/bin/sh -c " + shlex.quote(command),
                    resource_files=[ResourceFile(http_url=read_url(inputs, name), file_path=name)],
                )
            )
        # One add-collection request per 100 tasks, in sequence.
        for first in range(0, len(tasks), 100):
            await batch.create_task_collection(job_id, BatchTaskGroup(task_values=tasks[first : first + 100]))

        # The tutorial's monitor: every task, every second; "completed" counts as done.
        with anyio.fail_after(timeout_s):
            while True:
                listed = [task async for task in batch.list_tasks(job_id)]
                if all(str(getattr(task.state, "value", task.state)) == "completed" for task in listed):
                    break
                await anyio.sleep(SEED_POLL_INTERVAL_S)
        succeeded = sum(
            1 for task in listed if task.execution_info is not None and task.execution_info.exit_code == 0
        )

        # Downloads, one at a time.
        await anyio.Path(out_dir).mkdir(parents=True, exist_ok=True)
        downloaded = 0
        output_client = blobs.get_container_client(outputs)
        async for blob in output_client.list_blobs():
            if not blob.name.endswith(".counts.json.gz"):
                data = await (await output_client.download_blob(blob.name)).readall()
                await anyio.Path(out_dir / Path(blob.name).name).write_bytes(data)
                downloaded += 1
        wall = time.monotonic() - started

        for name in (app, inputs, outputs):
            await blobs.delete_container(name)
        await batch.begin_delete_job(job_id)
    return SeedResult(wall_s=wall, tasks=len(tasks), succeeded=succeeded, outputs_downloaded=downloaded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--batch-endpoint", required=True)
    parser.add_argument("--blob-endpoint", required=True)
    parser.add_argument("--out", type=Path, default=Path("seed-results"))
    args = parser.parse_args()
    endpoints = SeedEndpoints(
        args.batch_endpoint,
        local.EMULATOR_ACCOUNT_NAME,
        local.EMULATOR_ACCOUNT_KEY,
        args.blob_endpoint,
        local.AZURITE_ACCOUNT_NAME,
        local.AZURITE_ACCOUNT_KEY,
    )
    from orchestrator.azure.staging import build_node_script

    files = [item.path for item in discover_inputs(args.paths)]
    result = anyio.run(run_seed_baseline, endpoints, files, build_node_script(), args.out)
    print(result)


if __name__ == "__main__":
    main()
