"""A minimal client in the style of the seed tutorial: azure-batch 1.1.0 + azure-storage 0.33.0.

Upload the task script and inputs to Blob Storage, create a pool with `target_dedicated` and an
elevated start task whose resource files use `blob_source`, add one task per input with
`add_collection`, wait by listing tasks, download the outputs, then exercise the other calls the
1.1.0 SDK offers (pool get/list/resize, nodes and node files, job patch, task add, a filtered and
paged task list, task files) and delete job and pool. Prints one JSON report for the test.
env: BATCH_ENDPOINT, BATCH_ACCOUNT, BATCH_KEY, STORAGE_CONNECTION_STRING, POOL_ID, JOB_ID,
     CONTAINER_PREFIX, INPUT_DIR, OUTPUT_DIR
"""

import datetime
import json
import os
import time
from pathlib import Path

import azure.batch.batch_auth as batchauth
import azure.batch.batch_service_client as batch
import azure.batch.models as batchmodels
import azure.storage.blob as azureblob

TASK_SCRIPT = Path(__file__).resolve().parent / "count_words_task.py"


def wrap_in_shell(commands):
    """One Linux command line that runs `commands` in order and stops at the first failure."""
    return f"/bin/bash -c 'set -e; set -o pipefail; {'; '.join(commands)}; wait'"


def upload_with_sas(blob_client, container, file_path):
    """Upload a file; return a resource file whose blob_source is a 2-hour read SAS URL."""
    blob_name = file_path.name
    blob_client.create_blob_from_path(container, blob_name, str(file_path))
    token = blob_client.generate_blob_shared_access_signature(
        container,
        blob_name,
        permission=azureblob.BlobPermissions.READ,
        expiry=datetime.datetime.utcnow() + datetime.timedelta(hours=2),
    )
    url = blob_client.make_blob_url(container, blob_name, sas_token=token)
    return batchmodels.ResourceFile(file_path=blob_name, blob_source=url)


def pick_ubuntu_image(batch_client):
    """The newest verified Canonical UbuntuServer image and the node agent SKU that runs it."""
    candidates = []
    for sku in batch_client.account.list_node_agent_skus():
        for image in sku.verified_image_references:
            if image.publisher.lower() == "canonical" and image.offer == "UbuntuServer":
                candidates.append((image.sku, sku.id, image))
    _, agent_sku_id, image = max(candidates, key=lambda candidate: candidate[0])
    return agent_sku_id, image


def until(what, check, timeout_s=120.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for " + what)
        time.sleep(0.2)


def error_code(call):
    try:
        call()
    except batchmodels.BatchErrorException as error:
        return error.error.code
    return None


def main():
    env = os.environ
    prefix, pool_id, job_id = env["CONTAINER_PREFIX"], env["POOL_ID"], env["JOB_ID"]
    app_container, input_container, output_container = (
        prefix + "-application",
        prefix + "-input",
        prefix + "-output",
    )
    report = {}

    blob_client = azureblob.BlockBlobService(connection_string=env["STORAGE_CONNECTION_STRING"])
    for container in (app_container, input_container, output_container):
        blob_client.create_container(container, fail_on_exist=False)
    script_file = upload_with_sas(blob_client, app_container, TASK_SCRIPT)
    input_paths = sorted(Path(env["INPUT_DIR"]).iterdir())
    input_files = [upload_with_sas(blob_client, input_container, path) for path in input_paths]
    output_sas = blob_client.generate_container_shared_access_signature(
        output_container,
        permission=azureblob.BlobPermissions.WRITE,
        expiry=datetime.datetime.utcnow() + datetime.timedelta(hours=2),
    )
    output_url = f"{blob_client.protocol}://{blob_client.primary_endpoint}/{output_container}?{output_sas}"

    credentials = batchauth.SharedKeyCredentials(env["BATCH_ACCOUNT"], env["BATCH_KEY"])
    batch_client = batch.BatchServiceClient(credentials, base_url=env["BATCH_ENDPOINT"])

    agent_sku_id, image = pick_ubuntu_image(batch_client)
    report["image"] = {"nodeAgentSkuId": agent_sku_id, "offer": image.offer, "sku": image.sku}
    batch_client.pool.add(
        batchmodels.PoolAddParameter(
            id=pool_id,
            vm_size="STANDARD_A1",
            virtual_machine_configuration=batchmodels.VirtualMachineConfiguration(
                image_reference=image, node_agent_sku_id=agent_sku_id
            ),
            target_dedicated=1,
            start_task=batchmodels.StartTask(
                command_line=wrap_in_shell(
                    [
                        "cp -p count_words_task.py $AZ_BATCH_NODE_SHARED_DIR",
                        "echo start task ran as $AZ_BATCH_TASK_USER_IDENTITY",
                    ]
                ),
                resource_files=[script_file],
                run_elevated=True,
                wait_for_success=True,
            ),
        )
    )
    batch_client.job.add(
        batchmodels.JobAddParameter(id=job_id, pool_info=batchmodels.PoolInformation(pool_id=pool_id))
    )
    tasks = [
        batchmodels.TaskAddParameter(
            id=f"topNtask{index}",
            command_line=wrap_in_shell(
                [
                    "python $AZ_BATCH_NODE_SHARED_DIR/count_words_task.py"
                    f' --filepath {resource.file_path} --numwords 3 --outputurl "{output_url}"'
                ]
            ),
            resource_files=[resource],
        )
        for index, resource in enumerate(input_files)
    ]
    added = batch_client.task.add_collection(job_id, tasks)
    report["addCollectionStatuses"] = [str(result.status.value) for result in added.value]

    def all_tasks_completed():
        listed = list(batch_client.task.list(job_id))
        return listed if all(task.state == batchmodels.TaskState.completed for task in listed) else None

    finished = until("tasks to complete", all_tasks_completed)
    report["exitCodes"] = {task.id: task.execution_info.exit_code for task in finished}

    output_dir = Path(env["OUTPUT_DIR"])
    output_dir.mkdir(parents=True, exist_ok=True)
    for blob in blob_client.list_blobs(output_container):
        blob_client.get_blob_to_path(output_container, blob.name, str(output_dir / blob.name))

    # The rest of what 1.1.0 offers, read back in the old wire shape.
    pool = batch_client.pool.get(pool_id)
    report["pool"] = {
        "targetDedicated": pool.target_dedicated,
        "currentDedicated": pool.current_dedicated,
        "runElevated": pool.start_task.run_elevated,
        "blobSources": [resource.blob_source.split("?")[0] for resource in pool.start_task.resource_files],
    }
    report["poolListIds"] = [
        p.id for p in batch_client.pool.list(batchmodels.PoolListOptions(filter=f"id eq '{pool_id}'"))
    ]
    nodes = list(batch_client.compute_node.list(pool_id))
    report["nodeCount"] = len(nodes)
    report["nodeFileNames"] = [
        f.name for f in batch_client.file.list_from_compute_node(pool_id, nodes[0].id, True)
    ]
    stream = batch_client.file.get_from_compute_node(pool_id, nodes[0].id, "startup/stdout.txt")
    report["startTaskStdout"] = b"".join(stream).decode("utf-8")

    batch_client.job.patch(job_id, batchmodels.JobPatchParameter(priority=100))
    report["jobPriority"] = batch_client.job.get(job_id).priority
    batch_client.task.add(
        job_id, batchmodels.TaskAddParameter(id="echo", command_line="/bin/echo tutorial done")
    )
    until(
        "the echo task",
        lambda: batch_client.task.get(job_id, "echo").state == batchmodels.TaskState.completed,
    )
    paged = batch_client.task.list(
        job_id,
        batchmodels.TaskListOptions(filter="state eq 'completed'", select="id,state", max_results=2),
    )
    pages = [[task.id for task in paged.advance_page()]]
    while paged.next_link:
        pages.append([task.id for task in paged.advance_page()])
    report["completedTaskPages"] = pages
    report["taskFileNames"] = [f.name for f in batch_client.file.list_from_task(job_id, "echo")]
    report["echoStdout"] = b"".join(batch_client.file.get_from_task(job_id, "echo", "stdout.txt")).decode(
        "utf-8"
    )

    batch_client.pool.resize(pool_id, batchmodels.PoolResizeParameter(target_dedicated=2))

    def resized():
        current = batch_client.pool.get(pool_id)
        steady = current.allocation_state == batchmodels.AllocationState.steady
        return current if steady and current.current_dedicated == 2 else None

    pool = until("the resize", resized)
    report["resized"] = {"targetDedicated": pool.target_dedicated, "currentDedicated": pool.current_dedicated}

    for container in (app_container, input_container, output_container):
        blob_client.delete_container(container)
    batch_client.job.delete(job_id)
    batch_client.pool.delete(pool_id)
    report["deletedJob"] = until("job gone", lambda: error_code(lambda: batch_client.job.get(job_id)))
    report["deletedPool"] = until("pool gone", lambda: error_code(lambda: batch_client.pool.get(pool_id)))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
