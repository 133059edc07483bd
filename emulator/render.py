"""JSON shapes of pools, nodes, jobs and tasks as the service returns them (pure)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from emulator.model import Job, Node, Pool, Task
from emulator.odata import FieldGetter, dict_getter
from emulator.wire import format_time


def _time(moment: datetime | None) -> str | None:
    return format_time(moment) if moment is not None else None


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if value is not None}


def pool_json(pool: Pool, base: str) -> dict[str, Any]:
    dedicated = sum(1 for node in pool.nodes.values() if node.is_dedicated)
    return _drop_none(
        {
            **pool.spec,
            "url": f"{base}/pools/{pool.id}",
            "eTag": pool.etag,
            "lastModified": _time(pool.last_modified),
            "creationTime": _time(pool.created),
            "state": pool.state.value,
            "stateTransitionTime": _time(pool.state_time),
            "allocationState": pool.allocation_state.value,
            "allocationStateTransitionTime": _time(pool.allocation_state_time),
            "currentDedicatedNodes": dedicated,
            "currentLowPriorityNodes": len(pool.nodes) - dedicated,
            "resizeErrors": pool.resize_errors or None,
        }
    )


def node_json(node: Node, pool: Pool, base: str) -> dict[str, Any]:
    url = f"{base}/pools/{pool.id}/nodes/{node.id}"
    body: dict[str, Any] = {
        "id": node.id,
        "url": url,
        "state": node.state.value,
        "schedulingState": "enabled" if node.scheduling_enabled else "disabled",
        "stateTransitionTime": _time(node.state_time),
        "lastBootTime": _time(node.last_boot_time or node.created),
        "allocationTime": _time(node.created),
        "ipAddress": f"10.0.{node.index // 250}.{node.index % 250 + 4}",
        "affinityId": f"TVM:{node.id}",
        "vmSize": pool.spec.get("vmSize"),
        "totalTasksRun": node.total_tasks_run,
        "totalTasksSucceeded": node.total_tasks_succeeded,
        "runningTasksCount": len(node.running_tasks),
        "runningTaskSlotsCount": node.used_slots,
        "isDedicated": node.is_dedicated,
        "nodeAgentInfo": {"version": "1.12.0.0-emulator", "lastUpdateTime": _time(node.created)},
        "virtualMachineInfo": {
            "imageReference": (pool.spec.get("virtualMachineConfiguration") or {}).get("imageReference")
        },
    }
    if pool.spec.get("startTask"):
        body["startTask"] = pool.spec["startTask"]
    info = node.start_task_info
    if info is not None:
        body["startTaskInfo"] = _drop_none(
            {
                "state": info.state,
                "startTime": _time(info.start_time),
                "endTime": _time(info.end_time),
                "exitCode": info.exit_code,
                "retryCount": info.retry_count,
                "lastRetryTime": _time(info.last_retry_time),
                "result": info.result.value if info.result else None,
                "failureInfo": info.failure.to_wire() if info.failure else None,
            }
        )
    if node.running_tasks:
        body["recentTasks"] = [
            {
                "taskUrl": f"{base}/jobs/{task.job_id}/tasks/{task.id}",
                "jobId": task.job_id,
                "taskId": task.id,
                "taskState": task.state.value,
            }
            for task in sorted(node.running_tasks, key=lambda task: task.sequence)
        ]
    return _drop_none(body)


def job_json(job: Job, base: str) -> dict[str, Any]:
    execution = _drop_none(
        {
            "startTime": _time(job.created),
            "endTime": _time(job.end_time),
            "poolId": job.pool_id,
            "terminateReason": job.terminate_reason,
        }
    )
    return _drop_none(
        {
            **job.spec,
            "url": f"{base}/jobs/{job.id}",
            "eTag": job.etag,
            "lastModified": _time(job.last_modified),
            "creationTime": _time(job.created),
            "state": job.state.value,
            "stateTransitionTime": _time(job.state_time),
            "previousState": job.previous_state.value if job.previous_state else None,
            "previousStateTransitionTime": _time(job.previous_state_time),
            "executionInfo": execution,
        }
    )


def task_execution_json(task: Task) -> dict[str, Any]:
    """Always has `retryCount` and `requeueCount`, even for a task that never ran (as the service does)."""
    return _drop_none(
        {
            "startTime": _time(task.start_time),
            "endTime": _time(task.end_time),
            "exitCode": task.exit_code,
            "result": task.result.value if task.result else None,
            "failureInfo": task.failure.to_wire() if task.failure else None,
            "retryCount": task.retry_count,
            "requeueCount": task.requeue_count,
            "lastRetryTime": _time(task.last_retry_time),
            "lastRequeueTime": _time(task.last_requeue_time),
        }
    )


def task_json(task: Task, base: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        **task.spec,
        "url": f"{base}/jobs/{task.job_id}/tasks/{task.id}",
        "eTag": task.etag,
        "creationTime": _time(task.created),
        "lastModified": _time(task.last_modified),
        "state": task.state.value,
        "stateTransitionTime": _time(task.state_time),
        "previousState": task.previous_state.value if task.previous_state else None,
        "previousStateTransitionTime": _time(task.previous_state_time),
        "executionInfo": task_execution_json(task),
    }
    if task.node_id is not None and task.pool_id is not None:
        node_url = f"{base}/pools/{task.pool_id}/nodes/{task.node_id}"
        body["nodeInfo"] = {
            "affinityId": f"TVM:{task.node_id}",
            "nodeUrl": node_url,
            "poolId": task.pool_id,
            "nodeId": task.node_id,
            "taskRootDirectory": task.directory,
            "taskRootDirectoryUrl": f"{node_url}/files/{task.directory}",
        }
    return _drop_none(body)


# Task properties a `$filter` reads directly, so polling a large job never renders every task.
_TASK_FIELDS: dict[str, Callable[[Task], object]] = {
    "id": lambda task: task.id,
    "state": lambda task: task.state.value,
    "statetransitiontime": lambda task: task.state_time,
    "creationtime": lambda task: task.created,
    "lastmodified": lambda task: task.last_modified,
    "lastmodifiedtime": lambda task: task.last_modified,
    "commandline": lambda task: task.command_line,
    "displayname": lambda task: task.spec.get("displayName"),
    "executioninfo/result": lambda task: task.result.value if task.result else None,
    "executioninfo/exitcode": lambda task: task.exit_code,
    "executioninfo/starttime": lambda task: task.start_time,
    "executioninfo/endtime": lambda task: task.end_time,
    "executioninfo/retrycount": lambda task: task.retry_count,
    "executioninfo/requeuecount": lambda task: task.requeue_count,
    "executioninfo/failureinfo/code": lambda task: task.failure.code if task.failure else None,
    "executioninfo/failureinfo/category": lambda task: task.failure.category if task.failure else None,
    "nodeinfo/nodeid": lambda task: task.node_id,
    "nodeinfo/poolid": lambda task: task.pool_id,
}
TASK_FILTER_FIELDS = (
    "id",
    "state",
    "stateTransitionTime",
    "creationTime",
    "lastModified",
    "lastModifiedTime",
    "commandLine",
    "displayName",
    "executionInfo/result",
    "executionInfo/exitCode",
    "executionInfo/startTime",
    "executionInfo/endTime",
    "executionInfo/retryCount",
    "executionInfo/requeueCount",
    "executionInfo/failureInfo/code",
    "executionInfo/failureInfo/category",
    "nodeInfo/nodeId",
    "nodeInfo/poolId",
)


def task_getter(task: Task) -> FieldGetter:
    def get(path: str) -> object:
        reader = _TASK_FIELDS.get(path.lower())
        if reader is not None:
            return reader(task)
        return dict_getter(task_json(task, ""))(path)

    return get
