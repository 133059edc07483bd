"""Tasks on emulated nodes: resource and output files through Azurite, environment, retries, limits."""

from __future__ import annotations

import json
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from azure.batch import models
from azure.storage.blob import (
    BlobSasPermissions,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from orchestrator.local import processes as local
from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.integration.emulator.conftest import batch_client, pool_options, wait_job_done
from tests.secret_scan import find_secrets, texts_under

pytestmark = pytest.mark.asyncio(loop_scope="session")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Storage:
    """A container in Azurite with SAS URLs minted the way a Batch user does."""

    def __init__(self, azurite: StorageEndpoint, container: ContainerClient) -> None:
        self.azurite = azurite
        self.container = container
        self.expiry = datetime.now(UTC) + timedelta(hours=1)

    @property
    def url(self) -> str:
        return f"{self.azurite.endpoint}/{self.container.container_name}"

    def blob_url(self, name: str) -> str:
        sas = generate_blob_sas(
            self.azurite.account_name,
            self.container.container_name,
            name,
            account_key=self.azurite.account_key,
            permission=BlobSasPermissions(read=True),
            expiry=self.expiry,
        )
        return f"{self.url}/{name}?{sas}"

    def container_url(self, read: bool = False, write: bool = False) -> str:
        sas = generate_container_sas(
            self.azurite.account_name,
            self.container.container_name,
            account_key=self.azurite.account_key,
            permission=ContainerSasPermissions(read=read, list=read, write=write, create=write),
            expiry=self.expiry,
        )
        return f"{self.url}?{sas}"


@pytest_asyncio.fixture(loop_scope="session")
async def storage(azurite: StorageEndpoint) -> AsyncIterator[Storage]:
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        container = service.get_container_client(unique("emu"))
        await container.create_container()
        yield Storage(azurite, container)
        await container.delete_container()


async def test_resource_files_environment_and_python(batch_emulator: BatchEndpoint, storage: Storage) -> None:
    pool_id, job_id = unique("pool"), unique("job")
    await storage.container.upload_blob("single.txt", b"one file\n")
    for name, data in {"data/a.txt": b"A", "data/sub/b.txt": b"B", "other/c.txt": b"C"}.items():
        await storage.container.upload_blob(name, data)
    script = (
        "import json, os, sys, pathlib, azure.storage.blob;"
        "keys = [k for k in os.environ if k.startswith('AZ_BATCH_')] + ['JOBVAR', 'TASKVAR', 'PATH', 'HOME'];"
        "env = {k: os.environ.get(k) for k in keys};"
        "files = sorted(str(p) for p in pathlib.Path('.').rglob('*') if p.is_file());"
        "print(json.dumps({'env': env, 'files': files, 'python': sys.executable, 'cwd': os.getcwd()}))"
    )
    task = models.BatchTaskCreateOptions(
        id="inspect",
        command_line=f'python3 -c "{script}"',
        resource_files=[
            models.ResourceFile(http_url=storage.blob_url("single.txt"), file_path="inputs/single.txt"),
            models.ResourceFile(
                storage_container_url=storage.container_url(read=True),
                blob_prefix="data/",
                file_path="fromprefix",
            ),
        ],
        environment_settings=[
            models.EnvironmentSetting(name="TASKVAR", value="task value"),
            models.EnvironmentSetting(name="JOBVAR", value="overridden by task"),
        ],
    )
    async with batch_client(batch_emulator) as client:
        await client.create_pool(pool_options(pool_id))
        await client.create_job(
            models.BatchJobCreateOptions(
                id=job_id,
                pool_info=models.BatchPoolInfo(pool_id=pool_id),
                common_environment_settings=[
                    models.EnvironmentSetting(name="JOBVAR", value="job value"),
                ],
            )
        )
        await client.create_task(job_id, task)
        await wait_job_done(client, job_id, 1)
        finished = await client.get_task(job_id, "inspect")
        output = b"".join(
            [chunk async for chunk in await client.download_task_file(job_id, "inspect", "stdout.txt")]
        )
        await (await client.begin_delete_pool(pool_id, polling_interval=0.1)).result()
    assert finished.execution_info.exit_code == 0, output
    report = json.loads(output)
    node_root = batch_emulator.root.resolve() / pool_id / finished.node_info.node_id
    working_dir = node_root / "workitems" / job_id / "job-1" / "inspect" / "wd"
    env = report["env"]
    assert report["cwd"] == str(working_dir)
    assert report["files"] == ["fromprefix/data/a.txt", "fromprefix/data/sub/b.txt", "inputs/single.txt"]
    assert report["python"] == sys.executable
    assert env["AZ_BATCH_JOB_ID"] == job_id
    assert env["AZ_BATCH_TASK_ID"] == "inspect"
    assert env["AZ_BATCH_POOL_ID"] == pool_id
    assert env["AZ_BATCH_NODE_ID"] == finished.node_info.node_id
    assert env["AZ_BATCH_NODE_ROOT_DIR"] == str(node_root)
    assert env["AZ_BATCH_NODE_SHARED_DIR"] == str(node_root / "shared")
    assert env["AZ_BATCH_TASK_WORKING_DIR"] == str(working_dir)
    assert env["AZ_BATCH_TASK_DIR"] == str(working_dir.parent)
    assert env["AZ_BATCH_ACCOUNT_NAME"] == batch_emulator.account_name
    assert env["AZ_BATCH_ACCOUNT_URL"] == batch_emulator.endpoint + "/"
    assert env["TASKVAR"] == "task value"
    assert env["JOBVAR"] == "overridden by task"
    assert env["HOME"] == str(working_dir)
    path_entries = env["PATH"].split(":")
    assert path_entries[-2:] == [str(node_root / "shared"), str(working_dir)]
    assert "/usr/bin" in path_entries


async def test_output_files_follow_upload_conditions(batch_emulator: BatchEndpoint, storage: Storage) -> None:
    pool_id, job_id = unique("pool"), unique("job")
    write_url = storage.container_url(write=True)

    def outputs(task_id: str) -> list[models.OutputFile]:
        def rule(pattern: str, path: str, condition: models.OutputFileUploadCondition) -> models.OutputFile:
            return models.OutputFile(
                file_pattern=pattern,
                destination=models.OutputFileDestination(
                    container=models.OutputFileBlobContainerDestination(container_url=write_url, path=path)
                ),
                upload_options=models.OutputFileUploadConfiguration(upload_condition=condition),
            )

        return [
            rule("result.txt", f"{task_id}/result.txt", models.OutputFileUploadCondition.TASK_SUCCESS),
            rule("../std*.txt", f"{task_id}/logs", models.OutputFileUploadCondition.TASK_FAILURE),
            rule("out/**/*.dat", f"{task_id}/dat", models.OutputFileUploadCondition.TASK_COMPLETION),
        ]

    make = "mkdir -p out/x && echo d > out/x/1.dat && echo r > result.txt"
    tasks = [
        models.BatchTaskCreateOptions(
            id="ok", command_line=f"/bin/sh -c '{make}'", output_files=outputs("ok")
        ),
        models.BatchTaskCreateOptions(
            id="bad", command_line=f"/bin/sh -c '{make}; echo oops >&2; exit 5'", output_files=outputs("bad")
        ),
    ]
    async with batch_client(batch_emulator) as client:
        await client.create_pool(pool_options(pool_id))
        await client.create_job(
            models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id))
        )
        await client.create_tasks(job_id, tasks)
        counts = await wait_job_done(client, job_id, 2)
        assert (counts.succeeded, counts.failed) == (1, 1)
        await (await client.begin_delete_pool(pool_id, polling_interval=0.1)).result()
    names = {blob.name async for blob in storage.container.list_blobs()}
    assert names == {
        "ok/result.txt",
        "ok/dat/x/1.dat",
        "bad/logs/stdout.txt",
        "bad/logs/stderr.txt",
        "bad/dat/x/1.dat",
    }
    stderr = await (await storage.container.download_blob("bad/logs/stderr.txt")).readall()
    assert stderr == b"oops\n"


async def test_download_failure_completes_without_retry(
    batch_emulator: BatchEndpoint, storage: Storage
) -> None:
    pool_id, job_id = unique("pool"), unique("job")
    task = models.BatchTaskCreateOptions(
        id="missing-input",
        command_line="/bin/true",
        resource_files=[models.ResourceFile(http_url=storage.blob_url("absent.txt"), file_path="absent.txt")],
        constraints=models.BatchTaskConstraints(max_task_retry_count=3),
    )
    async with batch_client(batch_emulator) as client:
        await client.create_pool(pool_options(pool_id))
        await client.create_job(
            models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id))
        )
        await client.create_task(job_id, task)
        await wait_job_done(client, job_id, 1)
        finished = await client.get_task(job_id, "missing-input")
        await (await client.begin_delete_pool(pool_id, polling_interval=0.1)).result()
    info = finished.execution_info
    assert info.result == models.BatchTaskExecutionResult.FAILURE
    assert info.failure_info.code == "BlobNotFound"
    assert info.failure_info.category == "usererror"
    assert info.exit_code is None
    assert info.retry_count == 0
    assert "sig=" not in json.dumps(finished.as_dict()["executionInfo"])


async def test_retries_and_wall_clock(batch_emulator: BatchEndpoint) -> None:
    pool_id, job_id = unique("pool"), unique("job")
    tasks = [
        models.BatchTaskCreateOptions(
            id="flaky",
            # Fails twice, then succeeds: the attempt count lives in a file in the working directory.
            command_line="/bin/sh -c 'echo x >> attempts; test $(wc -l < attempts) -ge 3'",
            constraints=models.BatchTaskConstraints(max_task_retry_count=5),
        ),
        models.BatchTaskCreateOptions(
            id="always-fails",
            command_line="/bin/sh -c 'exit 7'",
            constraints=models.BatchTaskConstraints(max_task_retry_count=2),
        ),
        models.BatchTaskCreateOptions(
            id="too-slow",
            command_line="/bin/sh -c 'echo $$ > pid; exec sleep 60'",
            constraints=models.BatchTaskConstraints(
                max_wall_clock_time=timedelta(seconds=1), max_task_retry_count=3
            ),
        ),
        models.BatchTaskCreateOptions(id="no-program", command_line="definitely-not-a-program --flag"),
    ]
    async with batch_client(batch_emulator) as client:
        await client.create_pool(pool_options(pool_id, slots=4))
        await client.create_job(
            models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id))
        )
        await client.create_tasks(job_id, tasks)
        await wait_job_done(client, job_id, 4)
        results = {task.id: task async for task in client.list_tasks(job_id)}
        await (await client.begin_delete_pool(pool_id, polling_interval=0.1)).result()
    flaky = results["flaky"].execution_info
    assert (flaky.result, flaky.retry_count, flaky.exit_code) == (
        models.BatchTaskExecutionResult.SUCCESS,
        2,
        0,
    )
    assert flaky.last_retry_time is not None
    fails = results["always-fails"].execution_info
    assert (fails.result, fails.retry_count, fails.exit_code) == (
        models.BatchTaskExecutionResult.FAILURE,
        2,
        7,
    )
    assert fails.failure_info.code == "FailureExitCode"
    slow = results["too-slow"].execution_info
    assert slow.result == models.BatchTaskExecutionResult.FAILURE
    assert slow.failure_info.code == "TaskEnded"
    assert slow.retry_count == 0
    missing = results["no-program"].execution_info
    assert missing.failure_info.code == "CommandProgramNotFound"


async def test_task_processes_get_no_emulator_secrets(tmp_path: Path) -> None:
    """A secret in the emulator's own environment never reaches a task, and logs hold no SAS."""
    secret = "TOPN-SECRET-" + uuid.uuid4().hex
    service = await local.start_emulator(
        tmp_path / "nodes",
        tmp_path / "logs",
        env={"PATH": "/usr/bin:/bin", "TOPN_STORAGE_ACCOUNT_KEY": secret},
    )
    emulator = BatchEndpoint(
        service.endpoint,
        local.EMULATOR_ACCOUNT_NAME,
        local.EMULATOR_ACCOUNT_KEY,
        tmp_path / "nodes",
        tmp_path / "logs",
        service.pid,
    )
    try:
        async with batch_client(emulator) as client:
            await client.create_pool(pool_options("p"))
            await client.create_job(
                models.BatchJobCreateOptions(id="j", pool_info=models.BatchPoolInfo(pool_id="p"))
            )
            await client.create_task(
                "j",
                models.BatchTaskCreateOptions(
                    id="env",
                    command_line="/usr/bin/env",
                    resource_files=[
                        models.ResourceFile(
                            http_url="http://127.0.0.1:9/c/b?sv=2025&sig=ZmFrZXNpZ25hdHVy", file_path="b"
                        )
                    ],
                ),
            )
            await client.create_task(
                "j", models.BatchTaskCreateOptions(id="env2", command_line="/usr/bin/env")
            )
            await wait_job_done(client, "j", 2)
            failed = await client.get_task("j", "env")
            printed = b"".join(
                [chunk async for chunk in await client.download_task_file("j", "env2", "stdout.txt")]
            )
    finally:
        await local.stop_service(service)
    assert failed.execution_info.failure_info.code == "BlobDownloadMiscError"
    assert secret.encode() not in printed
    assert b"AZ_BATCH_TASK_ID=env2" in printed
    leaks = find_secrets(texts_under(tmp_path / "logs"), [local.EMULATOR_ACCOUNT_KEY, secret])
    assert leaks == []
    # The task echoes its resource URLs back as the service does; the failure report must not.
    assert "sig=" not in json.dumps(failed.as_dict()["executionInfo"])


async def test_start_task_stages_a_script_that_tasks_run(
    batch_emulator: BatchEndpoint, storage: Storage
) -> None:
    """The orchestrator's pattern: the start task copies a downloaded script to the shared dir."""
    pool_id, job_id = unique("pool"), unique("job")
    await storage.container.upload_blob(
        "tool.py", b"import os, sys\nprint('tool', os.environ['GREETING'], *sys.argv[1:])\n"
    )
    start_task = models.BatchStartTask(
        command_line='/bin/sh -c \'cp tool.py "$AZ_BATCH_NODE_SHARED_DIR/tool.py" && echo "$STAGE"\'',
        resource_files=[models.ResourceFile(http_url=storage.blob_url("tool.py"), file_path="tool.py")],
        environment_settings=[models.EnvironmentSetting(name="STAGE", value="staged")],
        wait_for_success=True,
        max_task_retry_count=1,
    )
    async with batch_client(batch_emulator) as client:
        await client.create_pool(pool_options(pool_id, start_task=start_task))
        await client.create_job(
            models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id))
        )
        await client.create_task(
            job_id,
            models.BatchTaskCreateOptions(
                id="use-tool",
                command_line='/bin/sh -c \'exec python3 "$AZ_BATCH_NODE_SHARED_DIR/tool.py" "two words"\'',
                environment_settings=[models.EnvironmentSetting(name="GREETING", value="hello")],
            ),
        )
        await wait_job_done(client, job_id, 1)
        task = await client.get_task(job_id, "use-tool")
        printed = b"".join(
            [chunk async for chunk in await client.download_task_file(job_id, "use-tool", "stdout.txt")]
        )
        node_id = task.node_info.node_id
        staged = b"".join(
            [chunk async for chunk in await client.download_node_file(pool_id, node_id, "startup/stdout.txt")]
        )
        startup_files = {
            entry.name async for entry in client.list_node_files(pool_id, node_id, recursive=True)
        }
        await (await client.begin_delete_pool(pool_id, polling_interval=0.1)).result()
    assert task.execution_info.exit_code == 0
    assert printed == b"tool hello two words\n"
    assert staged == b"staged\n"
    assert {"startup/wd/tool.py", "shared/tool.py"} <= startup_files


async def test_wall_clock_covers_a_stalled_resource_download(batch_emulator: BatchEndpoint) -> None:
    pool_id, job_id = unique("pool"), unique("job")
    with socket.socket() as silent:
        # Accepts connections (the kernel's backlog) but never answers: a stalled storage server.
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/c/blob.txt?sv=1&sig=ZmFrZXNpZ25hdHVy"
        task = models.BatchTaskCreateOptions(
            id="stalled",
            command_line="/bin/true",
            resource_files=[models.ResourceFile(http_url=url, file_path="blob.txt")],
            constraints=models.BatchTaskConstraints(max_wall_clock_time=timedelta(seconds=1)),
        )
        async with batch_client(batch_emulator) as client:
            await client.create_pool(pool_options(pool_id))
            await client.create_job(
                models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id))
            )
            await client.create_task(job_id, task)
            await wait_job_done(client, job_id, 1, timeout_s=30)
            finished = await client.get_task(job_id, "stalled")
            await (await client.begin_delete_pool(pool_id, polling_interval=0.1)).result()
    info = finished.execution_info
    assert (info.result, info.failure_info.code, info.retry_count) == (
        models.BatchTaskExecutionResult.FAILURE,
        "TaskEnded",
        0,
    )
