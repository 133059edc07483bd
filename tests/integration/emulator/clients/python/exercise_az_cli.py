"""Drive the emulator with `az batch` (azure-cli, run from its own venv) through one lifecycle.

Each step is one az command line as a user would type it (numbers given as flags, which the CLI
sends as JSON strings), run through `get_default_cli().invoke`, the same entry point the `az`
script calls, in one process so the CLI's start-up cost is paid once. Prints what the CLI read back
as one JSON object for the test to judge.
env: BATCH_ENDPOINT, BATCH_ACCOUNT, BATCH_KEY, POOL_ID, JOB_ID, AZURE_CONFIG_DIR (a scratch folder)
"""

import base64
import io
import json
import os
import re
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.update(
    AZURE_BATCH_ENDPOINT=os.environ["BATCH_ENDPOINT"],
    AZURE_BATCH_ACCOUNT=os.environ["BATCH_ACCOUNT"],
    AZURE_BATCH_ACCESS_KEY=os.environ["BATCH_KEY"],
    AZURE_CORE_COLLECT_TELEMETRY="false",
    AZURE_CORE_NO_COLOR="true",
    AZURE_CORE_SURVEY_MESSAGE="false",
)

# Imported after the configuration above is in the environment, as when az starts.
from azure.cli.core import get_default_cli


class AzError(Exception):
    def __init__(self, args, error):
        match = re.search(r"\((\w+)\)", str(error))
        self.code = match.group(1) if match else None
        super().__init__(f"az {' '.join(args)} failed: {error}")


def az(*args):
    """Run one az command line; its JSON output, parsed (None for commands that print nothing)."""
    cli = get_default_cli()
    out = io.StringIO()
    exit_code = cli.invoke([*args, "-o", "json", "--only-show-errors"], out_file=out)
    if exit_code != 0:
        raise AzError(args, cli.result.error)
    text = out.getvalue()
    return json.loads(text) if text.strip() else None


def status_of(*args):
    try:
        az(*args)
    except AzError as error:
        return {"status": "error", "code": error.code}
    return {"status": "ok"}


def until(what, check, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def main():
    pool_id, job_id = os.environ["POOL_ID"], os.environ["JOB_ID"]
    scratch = Path(tempfile.mkdtemp(prefix="az-client-"))
    report = {}

    az(
        "batch", "pool", "create", "--id", pool_id, "--vm-size", "standard_d2s_v3",
        "--target-dedicated-nodes", "1", "--task-slots-per-node", "2",
        "--image", "canonical:ubuntu-24_04-lts:server", "--node-agent-sku-id", "batch.node.ubuntu 24.04",
        "--start-task-command-line", "/bin/sh -c 'echo start task ran'", "--start-task-wait-for-success",
    )  # fmt: skip

    def steady_pool(nodes):
        pool = az("batch", "pool", "show", "--pool-id", pool_id)
        ready = pool["allocationState"] == "steady" and pool["currentDedicatedNodes"] == nodes
        return pool if ready else None

    pool = until("pool steady", lambda: steady_pool(1))
    report["pool"] = {
        "targetDedicatedNodes": pool["targetDedicatedNodes"],
        "currentDedicatedNodes": pool["currentDedicatedNodes"],
        "startTaskWaitForSuccess": pool["startTask"]["waitForSuccess"],
    }
    listed = az("batch", "pool", "list", "--filter", f"id eq '{pool_id}'")
    report["poolListIds"] = [p["id"] for p in listed]

    def idle_nodes():
        nodes = az("batch", "node", "list", "--pool-id", pool_id)
        return nodes if len(nodes) == 1 and nodes[0]["state"] == "idle" else None

    nodes = until("an idle node", idle_nodes)
    node_id = nodes[0]["id"]
    report["nodeStates"] = [n["state"] for n in nodes]
    node_files = az(
        "batch", "node", "file", "list", "--pool-id", pool_id, "--node-id", node_id, "--recursive"
    )
    report["nodeFileNames"] = [f["name"] for f in node_files]
    start_stdout = scratch / "start-stdout.txt"
    az(
        "batch", "node", "file", "download", "--pool-id", pool_id, "--node-id", node_id,
        "--file-path", "startup/stdout.txt", "--destination", str(start_stdout),
    )  # fmt: skip
    report["startTaskStdout"] = start_stdout.read_text(encoding="utf-8")

    az("batch", "pool", "resize", "--pool-id", pool_id, "--target-dedicated-nodes", "2")
    pool = until("pool resized", lambda: steady_pool(2))
    report["resized"] = {
        "targetDedicatedNodes": pool["targetDedicatedNodes"],
        "currentDedicatedNodes": pool["currentDedicatedNodes"],
    }

    az("batch", "job", "create", "--id", job_id, "--pool-id", pool_id)
    az("batch", "job", "set", "--job-id", job_id, "--priority", "100")
    report["jobPriority"] = az("batch", "job", "show", "--job-id", job_id)["priority"]

    command = "/bin/sh -c 'echo hello from $AZ_BATCH_TASK_ID'"
    az("batch", "task", "create", "--job-id", job_id, "--task-id", "t0", "--command-line", command)
    tasks_file = scratch / "tasks.json"
    tasks_file.write_text(json.dumps([{"id": f"t{i}", "commandLine": command} for i in range(1, 6)]))
    added = az("batch", "task", "create", "--job-id", job_id, "--json-file", str(tasks_file))
    report["addCollectionStatuses"] = [result["status"] for result in added]

    def all_completed():
        counts = az("batch", "job", "task-counts", "show", "--job-id", job_id)["taskCounts"]
        return counts if counts["completed"] == 6 else None

    counts = until("all tasks completed", all_completed)
    report["taskCounts"] = {
        name: counts[name] for name in ("active", "running", "completed", "succeeded", "failed")
    }

    def list_task_requests():
        """The emulator's own count of task listings (its stats page, on loopback)."""
        stats_url = os.environ["BATCH_ENDPOINT"] + "/_emulator/stats"  # the emulator on loopback
        with urllib.request.urlopen(stats_url) as answer:  # noqa: S310 (an http URL of our own)
            return json.load(answer)["requests"].get("list_tasks", 0)

    listings_before = list_task_requests()
    completed = az(
        "batch",
        "task",
        "list",
        "--job-id",
        job_id,
        "--filter",
        "state eq 'completed'",
        "--select",
        "id,state",
    )
    report["completedTaskIds"] = sorted(task["id"] for task in completed)
    # The CLI has no page-size option: the test's emulator pages at 2, so the CLI must follow links.
    report["completedListRequests"] = list_task_requests() - listings_before

    task_files = az("batch", "task", "file", "list", "--job-id", job_id, "--task-id", "t0")
    report["taskFileNames"] = [f["name"] for f in task_files]
    task_stdout = scratch / "t0-stdout.txt"
    az(
        "batch", "task", "file", "download", "--job-id", job_id, "--task-id", "t0",
        "--file-path", "stdout.txt", "--destination", str(task_stdout),
    )  # fmt: skip
    report["taskStdout"] = task_stdout.read_text(encoding="utf-8")

    az("batch", "task", "delete", "--job-id", job_id, "--task-id", "t5", "--yes")
    report["deletedTaskGet"] = status_of("batch", "task", "show", "--job-id", job_id, "--task-id", "t5")
    wrong_key = base64.b64encode(bytes([7] * 64)).decode()
    report["wrongKeyDelete"] = status_of(
        "batch", "job", "delete", "--job-id", job_id, "--yes", "--account-key", wrong_key
    )
    az("batch", "job", "delete", "--job-id", job_id, "--yes")
    report["deletedJobGet"] = until(
        "job gone",
        lambda: (lambda r: r if r.get("code") == "JobNotFound" else None)(
            status_of("batch", "job", "show", "--job-id", job_id)
        ),
    )
    az("batch", "pool", "delete", "--pool-id", pool_id, "--yes")
    report["deletedPoolGet"] = until(
        "pool gone",
        lambda: (lambda r: r if r.get("code") == "PoolNotFound" else None)(
            status_of("batch", "pool", "show", "--pool-id", pool_id)
        ),
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
