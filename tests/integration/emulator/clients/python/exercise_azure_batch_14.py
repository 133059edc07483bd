"""Drive the emulator with azure-batch 14.2.0 (track 1, msrest) through one pool/job/task lifecycle.

Runs in its own venv; prints what the client read back as one JSON object for the test to judge.
env: BATCH_ENDPOINT, BATCH_ACCOUNT, BATCH_KEY, POOL_ID, JOB_ID
"""

import base64
import json
import os
import time

import azure.batch.models as batchmodels
from azure.batch import BatchServiceClient
from azure.batch.batch_auth import SharedKeyCredentials
from azure.batch.models import BatchErrorException


def until(what, check, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def status_of(call):
    try:
        call()
    except BatchErrorException as error:
        return {"status": error.response.status_code, "code": error.error.code}
    return {"status": 200}


def main():
    client = BatchServiceClient(
        SharedKeyCredentials(os.environ["BATCH_ACCOUNT"], os.environ["BATCH_KEY"]),
        batch_url=os.environ["BATCH_ENDPOINT"],
    )
    pool_id, job_id = os.environ["POOL_ID"], os.environ["JOB_ID"]
    report = {}

    admin = batchmodels.UserIdentity(
        auto_user=batchmodels.AutoUserSpecification(scope="pool", elevation_level="admin")
    )
    client.pool.add(
        batchmodels.PoolAddParameter(
            id=pool_id,
            vm_size="standard_d2s_v3",
            virtual_machine_configuration=batchmodels.VirtualMachineConfiguration(
                image_reference=batchmodels.ImageReference(
                    publisher="canonical", offer="ubuntu-24_04-lts", sku="server"
                ),
                node_agent_sku_id="batch.node.ubuntu 24.04",
            ),
            target_dedicated_nodes=1,
            task_slots_per_node=2,
            start_task=batchmodels.StartTask(
                command_line="/bin/sh -c 'echo start task ran'", wait_for_success=True, user_identity=admin
            ),
        )
    )

    def steady_pool(nodes):
        pool = client.pool.get(pool_id)
        if pool.allocation_state == "steady" and pool.current_dedicated_nodes == nodes:
            return pool
        return None

    pool = until("pool steady", lambda: steady_pool(1))
    report["pool"] = {
        "targetDedicatedNodes": pool.target_dedicated_nodes,
        "currentDedicatedNodes": pool.current_dedicated_nodes,
        "elevationLevel": pool.start_task.user_identity.auto_user.elevation_level,
    }
    listed = client.pool.list(batchmodels.PoolListOptions(filter=f"id eq '{pool_id}'"))
    report["poolListIds"] = [p.id for p in listed]

    def idle_nodes():
        nodes = list(client.compute_node.list(pool_id))
        return nodes if len(nodes) == 1 and nodes[0].state == "idle" else None

    nodes = until("an idle node", idle_nodes)
    report["nodeStates"] = [n.state for n in nodes]
    node_files = client.file.list_from_compute_node(pool_id, nodes[0].id, recursive=True)
    report["nodeFileNames"] = [f.name for f in node_files]
    stream = client.file.get_from_compute_node(pool_id, nodes[0].id, "startup/stdout.txt")
    report["startTaskStdout"] = b"".join(stream).decode("utf-8")

    client.pool.resize(pool_id, batchmodels.PoolResizeParameter(target_dedicated_nodes=2))
    pool = until("pool resized", lambda: steady_pool(2))
    report["resized"] = {
        "targetDedicatedNodes": pool.target_dedicated_nodes,
        "currentDedicatedNodes": pool.current_dedicated_nodes,
    }

    client.job.add(
        batchmodels.JobAddParameter(id=job_id, pool_info=batchmodels.PoolInformation(pool_id=pool_id))
    )
    client.job.patch(job_id, batchmodels.JobPatchParameter(priority=100))
    report["jobPriority"] = client.job.get(job_id).priority

    command = "/bin/sh -c 'echo hello from $AZ_BATCH_TASK_ID'"
    client.task.add(job_id, batchmodels.TaskAddParameter(id="t0", command_line=command))
    added = client.task.add_collection(
        job_id, [batchmodels.TaskAddParameter(id=f"t{i}", command_line=command) for i in range(1, 6)]
    )
    report["addCollectionStatuses"] = [str(result.status.value) for result in added.value]

    def all_completed():
        counts = client.job.get_task_counts(job_id).task_counts
        return counts if counts.completed == 6 else None

    counts = until("all tasks completed", all_completed)
    report["taskCounts"] = {
        name: getattr(counts, name) for name in ("active", "running", "completed", "succeeded", "failed")
    }

    paged = client.task.list(
        job_id, batchmodels.TaskListOptions(filter="state eq 'completed'", select="id,state", max_results=2)
    )
    pages = [[task.id for task in paged.advance_page()]]
    while paged.next_link:
        pages.append([task.id for task in paged.advance_page()])
    report["completedTaskPages"] = pages

    report["taskFileNames"] = [f.name for f in client.file.list_from_task(job_id, "t0")]
    report["taskStdout"] = b"".join(client.file.get_from_task(job_id, "t0", "stdout.txt")).decode("utf-8")

    client.task.delete(job_id, "t5")
    report["deletedTaskGet"] = status_of(lambda: client.task.get(job_id, "t5"))
    intruder = BatchServiceClient(
        SharedKeyCredentials(os.environ["BATCH_ACCOUNT"], base64.b64encode(bytes([7] * 64)).decode()),
        batch_url=os.environ["BATCH_ENDPOINT"],
    )
    report["wrongKeyDelete"] = status_of(lambda: intruder.job.delete(job_id))
    client.job.delete(job_id)
    report["deletedJobGet"] = until(
        "job gone",
        lambda: (lambda r: r if r["status"] == 404 else None)(status_of(lambda: client.job.get(job_id))),
    )
    client.pool.delete(pool_id)
    report["deletedPoolGet"] = until(
        "pool gone",
        lambda: (lambda r: r if r["status"] == 404 else None)(status_of(lambda: client.pool.get(pool_id))),
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
