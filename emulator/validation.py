"""Request-body validation with the service's error codes (pure; raises wire.ServiceError)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from emulator import schema
from emulator.autoscale_settings import validate_pool_autoscale
from emulator.model import DEALLOCATION_OPTIONS, REBOOT_OPTIONS
from emulator.wire import (
    UNLIMITED_DURATION,
    ServiceError,
    invalid_property,
    is_valid_id,
    missing_property,
    parse_duration,
)

ID_RULE = "ids are 1-64 characters: letters, digits, hyphens and underscores"
UPLOAD_CONDITIONS = ("tasksuccess", "taskfailure", "taskcompletion")
JOB_ACTIONS = ("none", "disable", "terminate")
MAX_NODES = 1000
# What the service reports for a job created without constraints.
DEFAULT_JOB_CONSTRAINTS = {"maxWallClockTime": UNLIMITED_DURATION, "maxTaskRetryCount": 0}
DEFAULT_RETENTION = "P7D"
# Output upload headers the emulator applies to the blob (anything else would be dropped unseen).
UPLOAD_HEADERS = frozenset(
    {
        "content-type",
        "x-ms-blob-content-type",
        "content-encoding",
        "x-ms-blob-content-encoding",
        "content-language",
        "x-ms-blob-content-language",
        "content-disposition",
        "x-ms-blob-content-disposition",
        "cache-control",
        "x-ms-blob-cache-control",
    }
)


def without_nulls(value: Any) -> Any:
    """JSON nulls mean "not set" to the service; dropping them keeps every later lookup simple."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


def _check_user_identity(body: Mapping[str, Any], prefix: str = "") -> None:
    identity = body.get("userIdentity")
    if identity is None:
        return
    auto_user = identity.get("autoUser", {}) if isinstance(identity, dict) else None
    if not isinstance(auto_user, dict) or not all(isinstance(value, str) for value in auto_user.values()):
        raise invalid_property(
            prefix + "userIdentity", "must be {autoUser: {scope, elevationLevel}} or {username}"
        )


def _require(body: Mapping[str, Any], name: str, prefix: str = "") -> Any:
    value = body.get(name)
    if value is None or value == "":
        raise missing_property(prefix + name)
    return value


def _check_id(body: Mapping[str, Any]) -> str:
    value = _require(body, "id")
    if not is_valid_id(value):
        raise invalid_property("id", ID_RULE)
    return str(value)


def _check_int(body: Mapping[str, Any], name: str, low: int, high: int, prefix: str = "") -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise invalid_property(prefix + name, f"must be an integer from {low} to {high}")


def _check_duration(body: Mapping[str, Any], name: str, prefix: str = "") -> None:
    value = body.get(name)
    if value is None:
        return
    try:
        if not isinstance(value, str) or parse_duration(value) < 0:
            raise ValueError
    except ValueError:
        raise invalid_property(prefix + name, "must be an ISO 8601 duration such as PT30M") from None


def _check_object(body: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid_property(name, "must be a JSON object")
    return value


def _check_list(body: Mapping[str, Any], name: str) -> list[Any]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid_property(name, "must be a JSON array")
    return value


def check_relative_path(path: object, name: str) -> None:
    """A path that must stay inside the task's working directory."""
    if not isinstance(path, str):
        raise invalid_property(name, "must be a string")
    candidate = PurePosixPath(path)
    if candidate.is_absolute() or ".." in candidate.parts or "\\" in path:
        raise invalid_property(name, f"{path!r} must be a relative path inside the task's working directory")


def check_metadata(body: Mapping[str, Any]) -> None:
    for item in _check_list(body, "metadata"):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid_property("metadata", "each item must be an object with a name and a value")


def check_environment(settings: list[Any], name: str) -> None:
    for setting in settings:
        if not isinstance(setting, dict):
            raise invalid_property(name, "each setting must be an object with name and value")
        if not setting.get("name") or not isinstance(setting["name"], str):
            raise missing_property(f"{name}.name")


def check_resource_files(files: list[Any], name: str = "resourceFiles") -> None:
    for resource in files:
        if not isinstance(resource, dict):
            raise invalid_property(name, "each resource file must be an object")
        sources = [
            key for key in ("httpUrl", "storageContainerUrl", "autoStorageContainerName") if resource.get(key)
        ]
        if len(sources) != 1:
            raise invalid_property(
                name, "set exactly one of httpUrl, storageContainerUrl, autoStorageContainerName"
            )
        if not isinstance(resource[sources[0]], str):
            raise invalid_property(f"{name}.{sources[0]}", "must be a URL string")
        if not isinstance(resource.get("blobPrefix", ""), str):
            raise invalid_property(f"{name}.blobPrefix", "must be a string")
        if "blobPrefix" in resource and sources[0] == "httpUrl":
            raise invalid_property(f"{name}.blobPrefix", "is valid only with storageContainerUrl")
        if sources[0] == "autoStorageContainerName":
            raise invalid_property(
                f"{name}.autoStorageContainerName", "auto-storage is not emulated; use a SAS URL"
            )
        if sources[0] == "httpUrl":
            check_relative_path(_require(resource, "filePath", f"{name}."), f"{name}.filePath")
        elif resource.get("filePath") is not None:
            check_relative_path(resource["filePath"], f"{name}.filePath")
        mode = resource.get("fileMode")
        if mode is not None:
            try:
                int(str(mode), 8)
            except ValueError:
                raise invalid_property(f"{name}.fileMode", "must be an octal string such as 0755") from None


def check_output_files(files: list[Any]) -> None:
    for output in files:
        if not isinstance(output, dict):
            raise invalid_property("outputFiles", "each output file must be an object")
        if not isinstance(_require(output, "filePattern", "outputFiles."), str):
            raise invalid_property("outputFiles.filePattern", "must be a string")
        destination = output.get("destination")
        container = destination.get("container") if isinstance(destination, dict) else None
        if not isinstance(container, dict) or not container.get("containerUrl"):
            raise missing_property("outputFiles.destination.container.containerUrl")
        if not isinstance(container["containerUrl"], str) or not isinstance(container.get("path", ""), str):
            raise invalid_property(
                "outputFiles.destination.container", "containerUrl and path must be strings"
            )
        headers = container.get("uploadHeaders") or []
        if not isinstance(headers, list) or not all(
            isinstance(header, dict) and isinstance(header.get("name"), str) for header in headers
        ):
            raise invalid_property(
                "outputFiles.destination.container.uploadHeaders", "must be [{name, value}]"
            )
        for header in headers:
            if header["name"].lower() not in UPLOAD_HEADERS and not header["name"].lower().startswith(
                "x-ms-meta-"
            ):
                raise invalid_property(
                    "outputFiles.destination.container.uploadHeaders",
                    f"the header {header['name']} is not emulated; use content-type, content-encoding, "
                    "content-language, content-disposition, cache-control or x-ms-meta-*",
                )
        options = output.get("uploadOptions") or {}
        if not isinstance(options, dict):
            raise invalid_property("outputFiles.uploadOptions", "must be a JSON object")
        condition = options.get("uploadCondition", "taskcompletion")
        if str(condition).lower() not in UPLOAD_CONDITIONS:
            raise invalid_property(
                "outputFiles.uploadOptions.uploadCondition", f"must be one of {UPLOAD_CONDITIONS}"
            )


def validate_pool(body: Mapping[str, Any]) -> dict[str, Any]:
    """A create-pool body, with the defaults the service fills in."""
    body = schema.conform(body, schema.POOL, what="pool")
    _check_id(body)
    _require(body, "vmSize")
    autoscale = validate_pool_autoscale(body)
    configuration = _check_object(body, "virtualMachineConfiguration")
    if not configuration:
        raise missing_property("virtualMachineConfiguration")
    _require(configuration, "nodeAgentSKUId", "virtualMachineConfiguration.")
    if not isinstance(_require(configuration, "imageReference", "virtualMachineConfiguration."), dict):
        raise invalid_property("virtualMachineConfiguration.imageReference", "must be a JSON object")
    if not isinstance(configuration["nodeAgentSKUId"], str):
        raise invalid_property("virtualMachineConfiguration.nodeAgentSKUId", "must be a string")
    _check_int(body, "targetDedicatedNodes", 0, MAX_NODES)
    _check_int(body, "targetLowPriorityNodes", 0, MAX_NODES)
    _check_int(body, "taskSlotsPerNode", 1, 256)
    _check_duration(body, "resizeTimeout")
    _check_pool_settings(body)
    spec = dict(body)
    spec.setdefault("taskSlotsPerNode", 1)
    spec.setdefault("targetDedicatedNodes", 0)
    spec.setdefault("targetLowPriorityNodes", 0)
    spec.setdefault("resizeTimeout", "PT15M")
    spec.update(autoscale)
    spec.setdefault("enableInterNodeCommunication", False)
    policy = _check_object(body, "taskSchedulingPolicy")
    fill = policy.get("nodeFillType", "spread")
    if fill not in ("spread", "pack"):
        raise invalid_property("taskSchedulingPolicy.nodeFillType", "must be spread or pack (lowercase)")
    spec["taskSchedulingPolicy"] = {**policy, "nodeFillType": fill}
    check_metadata(body)
    start_task = _check_object(body, "startTask")
    if start_task:
        spec["startTask"] = validate_start_task(start_task)
    return spec


def _check_pool_settings(body: Mapping[str, Any]) -> None:
    """Pool properties that are emulated for some values only."""
    if not body.get("enableAutoScale"):
        for name in ("autoScaleFormula", "autoScaleEvaluationInterval"):
            if name in body:
                raise invalid_property(name, "may be set only with enableAutoScale true")
    order = _check_object(body, "taskSchedulingPolicy").get("jobDefaultOrder", "none")
    if order not in ("none", "creationtime"):
        raise invalid_property("taskSchedulingPolicy.jobDefaultOrder", "must be none or creationtime")
    mode = _check_object(body, "upgradePolicy").get("mode", "manual")
    if mode != "manual":
        raise invalid_property("upgradePolicy.mode", "OS upgrades are not emulated; only manual is")


def validate_start_task(start_task: Mapping[str, Any]) -> dict[str, Any]:
    """A pool's start task (on create or update), with the defaults the service fills in."""
    if not isinstance(_require(start_task, "commandLine", "startTask."), str):
        raise invalid_property("startTask.commandLine", "must be a string")
    check_resource_files(_check_list(start_task, "resourceFiles"), "startTask.resourceFiles")
    check_environment(_check_list(start_task, "environmentSettings"), "startTask.environmentSettings")
    _check_user_identity(start_task, "startTask.")
    _check_int(start_task, "maxTaskRetryCount", -1, 100, "startTask.")
    if "waitForSuccess" in start_task and not isinstance(start_task["waitForSuccess"], bool):
        raise invalid_property("startTask.waitForSuccess", "must be true or false")
    # The service's defaults since 2019-08-01.10.0 (older api-versions send an explicit false).
    return {
        "maxTaskRetryCount": 0,
        "waitForSuccess": True,
        "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}},
        **start_task,
    }


# update_pool (PATCH) properties that take effect on a pool with nodes (new and rebooted nodes use
# them), and those the service accepts only while the pool has no nodes.
POOL_UPDATABLE_ANYTIME = frozenset({"startTask", "metadata"})
POOL_UPDATABLE_WHEN_EMPTY = frozenset(
    {
        "displayName",
        "vmSize",
        "enableInterNodeCommunication",
        "virtualMachineConfiguration",
        "taskSlotsPerNode",
        "taskSchedulingPolicy",
        "networkConfiguration",
        "userAccounts",
        "mountConfiguration",
        "upgradePolicy",
    }
)


def validate_pool_update(body: Mapping[str, Any]) -> dict[str, Any]:
    """An update_pool (PATCH) body: the properties to replace, each validated as on create."""
    body = schema.conform(body, schema.POOL, what="pool")
    unknown = sorted(set(body) - POOL_UPDATABLE_ANYTIME - POOL_UPDATABLE_WHEN_EMPTY)
    if unknown:
        raise invalid_property(
            unknown[0], "this property cannot be changed with update_pool (resize or recreate the pool)"
        )
    changes = dict(body)
    if "startTask" in body:
        start_task = _check_object(body, "startTask")
        if not start_task:
            raise missing_property("startTask.commandLine")
        changes["startTask"] = validate_start_task(start_task)
    check_metadata(body)
    _check_int(body, "taskSlotsPerNode", 1, 256)
    _check_pool_settings(body)
    if "vmSize" in body and not isinstance(body["vmSize"], str):
        raise invalid_property("vmSize", "must be a string")
    if "taskSchedulingPolicy" in body:
        fill = _check_object(body, "taskSchedulingPolicy").get("nodeFillType", "spread")
        if fill not in ("spread", "pack"):
            raise invalid_property("taskSchedulingPolicy.nodeFillType", "must be spread or pack (lowercase)")
    return changes


def validate_reboot(body: Mapping[str, Any]) -> str:
    """A reboot body (it may be empty): the `nodeRebootOption`, `requeue` by default."""
    body = without_nulls(body)
    option = body.get("nodeRebootOption", "requeue")
    if option not in REBOOT_OPTIONS:
        if option in ("taskcompletion", "retaineddata"):
            raise invalid_property("nodeRebootOption", f"{option} is not emulated; use requeue or terminate")
        raise invalid_property(
            "nodeRebootOption", "must be requeue, terminate, taskcompletion or retaineddata (lowercase)"
        )
    return str(option)


def validate_resize(body: Mapping[str, Any]) -> tuple[int, int, str]:
    """A resize body: the new dedicated and low-priority targets (both default to 0) and deallocation."""
    body = schema.conform(body, schema.RESIZE, what="pool resize")
    _check_int(body, "targetDedicatedNodes", 0, MAX_NODES)
    _check_int(body, "targetLowPriorityNodes", 0, MAX_NODES)
    _check_duration(body, "resizeTimeout")
    option = body.get("nodeDeallocationOption", "requeue")
    if option not in DEALLOCATION_OPTIONS:
        raise invalid_property("nodeDeallocationOption", f"must be one of {', '.join(DEALLOCATION_OPTIONS)}")
    targets = int(body.get("targetDedicatedNodes", 0)), int(body.get("targetLowPriorityNodes", 0))
    return *targets, str(option)


def _check_job_common(body: Mapping[str, Any]) -> None:
    _check_int(body, "priority", -1000, 1000)
    _check_int(body, "maxParallelTasks", -1, 1_000_000)
    constraints = _check_object(body, "constraints")
    _check_duration(constraints, "maxWallClockTime", "constraints.")
    _check_int(constraints, "maxTaskRetryCount", -1, 100, "constraints.")
    for name, allowed in (
        ("onAllTasksComplete", ("noaction", "terminatejob")),
        ("onTaskFailure", ("noaction", "performexitoptionsjobaction")),
    ):
        value = body.get(name)
        if value is not None and str(value) not in allowed:
            raise invalid_property(name, f"must be one of {', '.join(allowed)} (lowercase)")
    pool_info = body.get("poolInfo")
    if pool_info is not None:
        if not isinstance(pool_info, dict) or pool_info.get("autoPoolSpecification"):
            raise invalid_property("poolInfo", "give poolInfo.poolId; auto pools are not emulated")
        if not pool_info.get("poolId"):
            raise missing_property("poolInfo.poolId")
    check_environment(_check_list(body, "commonEnvironmentSettings"), "commonEnvironmentSettings")
    check_metadata(body)
    if body.get("allowTaskPreemption"):
        raise invalid_property("allowTaskPreemption", "preemption by higher-priority jobs is not emulated")


def validate_job(body: Mapping[str, Any]) -> dict[str, Any]:
    body = schema.conform(body, schema.JOB, what="job")
    _check_id(body)
    _require(body, "poolInfo")
    if body.get("usesTaskDependencies"):
        raise invalid_property("usesTaskDependencies", "task dependencies are not emulated")
    _check_job_common(body)
    spec = dict(body)
    spec.setdefault("priority", 0)
    spec.setdefault("maxParallelTasks", -1)
    spec.setdefault("allowTaskPreemption", False)
    spec.setdefault("usesTaskDependencies", False)
    spec.setdefault("onAllTasksComplete", "noaction")
    spec.setdefault("onTaskFailure", "noaction")
    spec["constraints"] = {**DEFAULT_JOB_CONSTRAINTS, **(spec.get("constraints") or {})}
    return spec


def validate_job_update(body: Mapping[str, Any]) -> dict[str, Any]:
    body = schema.conform(body, schema.JOB, what="job")
    allowed = {
        "priority",
        "allowTaskPreemption",
        "maxParallelTasks",
        "constraints",
        "poolInfo",
        "onAllTasksComplete",
        "onTaskFailure",
        "metadata",
        "networkConfiguration",
        "commonEnvironmentSettings",
    }
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid_property(unknown[0], "this property cannot be changed on an existing job")
    _check_job_common(body)
    return dict(body)


def validate_task(body: Mapping[str, Any], job_spec: Mapping[str, Any]) -> dict[str, Any]:
    """A task body; raises ServiceError with the code a per-task result or a 400 carries."""
    body = schema.conform(body, schema.TASK, what="task")
    _check_user_identity(body)
    _check_id(body)
    _require(body, "commandLine")
    check_resource_files(_check_list(body, "resourceFiles"))
    check_output_files(_check_list(body, "outputFiles"))
    check_environment(_check_list(body, "environmentSettings"), "environmentSettings")
    constraints = _check_object(body, "constraints")
    _check_duration(constraints, "maxWallClockTime", "constraints.")
    # Kept and read back as given; the folders are not cleaned up when it passes (they stay until the
    # job goes), which only keeps files longer than Azure would.
    _check_duration(constraints, "retentionTime", "constraints.")
    _check_int(constraints, "maxTaskRetryCount", -1, 100, "constraints.")
    _check_int(body, "requiredSlots", 1, 256)
    exit_conditions = _check_object(body, "exitConditions")
    if (
        exit_conditions
        and str(job_spec.get("onTaskFailure", "noaction")) == "noaction"
        and _names_job_action(exit_conditions)
    ):
        raise invalid_property(
            "exitConditions", "a jobAction needs the job's onTaskFailure=performexitoptionsjobaction"
        )
    spec = dict(body)
    spec["constraints"] = {
        "maxWallClockTime": constraints.get("maxWallClockTime", "P10675199DT2H48M5.4775807S"),
        "retentionTime": constraints.get("retentionTime", DEFAULT_RETENTION),
        "maxTaskRetryCount": constraints.get(
            "maxTaskRetryCount", (job_spec.get("constraints") or {}).get("maxTaskRetryCount", 0)
        ),
    }
    spec.setdefault("requiredSlots", 1)
    spec.setdefault("userIdentity", {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}})
    return spec


def _names_job_action(exit_conditions: Mapping[str, Any]) -> bool:
    options: list[Any] = [
        exit_conditions.get(key) for key in ("preProcessingError", "fileUploadError", "default")
    ]
    for key in ("exitCodes", "exitCodeRanges"):
        options.extend(
            entry.get("exitOptions") for entry in exit_conditions.get(key) or [] if isinstance(entry, dict)
        )
    for option in options:
        if isinstance(option, dict) and option.get("jobAction") not in (None, "none"):
            if str(option["jobAction"]) not in JOB_ACTIONS:
                raise invalid_property("exitConditions.jobAction", f"must be one of {JOB_ACTIONS}")
            return True
    return False


def require_object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ServiceError(400, "InvalidRequestBody", "The request body must be a JSON object.")
    return body
