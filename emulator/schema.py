"""Every property a request body may carry, and how the emulator treats it (pure).

A property is either emulated (it has its effect, or it is recorded and shown back where that is
all the service does with it locally, such as `displayName` or an image reference) or refused with
400 `InvalidPropertyValue` naming it and saying why. Anything not listed is refused too, so nothing
a client sends is ever silently ignored. Numbers and booleans are read as the service's JSON
deserializer reads them: `"1"` is 1 and `"true"` is true; `"one"` is an error naming the property.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from emulator.wire import API_VERSION, invalid_property

INT = "int"
BOOL = "bool"
STR = "str"
# Dates, durations, URLs and enums are strings here; validation checks their form.


@dataclass(frozen=True)
class Refused:
    """A property the emulator knows but does not emulate: setting it is a 400 naming it."""

    reason: str


Schema = dict[str, Any]  # name -> INT | BOOL | STR | Refused | Schema | [Schema or leaf]

_CONTAINERS = Refused("containers are not emulated (tasks run as processes on the emulator's host)")
_IDENTITY_REFERENCE = Refused("managed identities are not emulated; use a SAS URL")
_APPLICATION_PACKAGES = Refused("application packages are not emulated")
_NETWORK = Refused("virtual networks and endpoints are not emulated (nodes live on loopback)")

ENVIRONMENT_SETTING: Schema = {"name": STR, "value": STR}
METADATA_ITEM: Schema = {"name": STR, "value": STR}
RESOURCE_FILE: Schema = {
    "httpUrl": STR,
    "storageContainerUrl": STR,
    "autoStorageContainerName": STR,  # refused by validation, which says to use a SAS URL instead
    "blobPrefix": STR,
    "filePath": STR,
    "fileMode": STR,
    "identityReference": _IDENTITY_REFERENCE,
}
USER_IDENTITY: Schema = {
    "autoUser": {"scope": STR, "elevationLevel": STR},
    "username": Refused("named user accounts are not emulated; use autoUser"),
}
START_TASK: Schema = {
    "commandLine": STR,
    "containerSettings": _CONTAINERS,
    "resourceFiles": [RESOURCE_FILE],
    "environmentSettings": [ENVIRONMENT_SETTING],
    "userIdentity": USER_IDENTITY,
    "maxTaskRetryCount": INT,
    "waitForSuccess": BOOL,
}
_VM_ONLY = "is a property of the Azure VM, which the emulator does not create (nodes are local folders)"
VIRTUAL_MACHINE_CONFIGURATION: Schema = {
    # Recorded and shown on the pool and its nodes; every node runs the emulator's own Python.
    "imageReference": {
        "publisher": STR,
        "offer": STR,
        "sku": STR,
        "version": STR,
        "virtualMachineImageId": STR,
        "exactVersion": STR,
        "sharedGalleryImageId": STR,
        "communityGalleryImageId": STR,
    },
    "nodeAgentSKUId": STR,
    **{
        name: Refused(f"{name} {_VM_ONLY}")
        for name in (
            "windowsConfiguration",
            "dataDisks",
            "licenseType",
            "diskEncryptionConfiguration",
            "nodePlacementConfiguration",
            "extensions",
            "osDisk",
            "securityProfile",
            "serviceArtifactReference",
        )
    },
    "containerConfiguration": _CONTAINERS,
}
POOL: Schema = {
    "id": STR,
    "displayName": STR,
    "vmSize": STR,
    "virtualMachineConfiguration": VIRTUAL_MACHINE_CONFIGURATION,
    "resizeTimeout": STR,
    "targetDedicatedNodes": INT,
    "targetLowPriorityNodes": INT,
    "enableAutoScale": BOOL,
    "autoScaleFormula": STR,
    "autoScaleEvaluationInterval": STR,
    "enableInterNodeCommunication": BOOL,
    "networkConfiguration": _NETWORK,
    "startTask": START_TASK,
    "applicationPackageReferences": _APPLICATION_PACKAGES,
    "taskSlotsPerNode": INT,
    "taskSchedulingPolicy": {"nodeFillType": STR, "jobDefaultOrder": STR},
    "userAccounts": Refused("node user accounts are not emulated; tasks run as the auto-user"),
    "metadata": [METADATA_ITEM],
    "mountConfiguration": Refused("file system mounts are not emulated"),
    "upgradePolicy": {
        "mode": STR,
        "automaticOSUpgradePolicy": Refused("OS upgrades are not emulated (use mode manual)"),
        "rollingUpgradePolicy": Refused("OS upgrades are not emulated (use mode manual)"),
    },
}
RESIZE: Schema = {
    "targetDedicatedNodes": INT,
    "targetLowPriorityNodes": INT,
    "resizeTimeout": STR,
    "nodeDeallocationOption": STR,
}
_SPECIAL_TASKS = Refused("job manager, preparation and release tasks are not emulated")
JOB: Schema = {
    "id": STR,
    "displayName": STR,
    "usesTaskDependencies": BOOL,
    "priority": INT,
    "allowTaskPreemption": BOOL,
    "maxParallelTasks": INT,
    "constraints": {"maxWallClockTime": STR, "maxTaskRetryCount": INT},
    "jobManagerTask": _SPECIAL_TASKS,
    "jobPreparationTask": _SPECIAL_TASKS,
    "jobReleaseTask": _SPECIAL_TASKS,
    "commonEnvironmentSettings": [ENVIRONMENT_SETTING],
    "poolInfo": {"poolId": STR, "autoPoolSpecification": Refused("auto pools are not emulated; give poolId")},
    "onAllTasksComplete": STR,
    "onTaskFailure": STR,
    "networkConfiguration": _NETWORK,
    "metadata": [METADATA_ITEM],
}
EXIT_OPTIONS: Schema = {"jobAction": STR, "dependencyAction": Refused("task dependencies are not emulated")}
OUTPUT_FILE: Schema = {
    "filePattern": STR,
    "destination": {
        "container": {
            "path": STR,
            "containerUrl": STR,
            "identityReference": _IDENTITY_REFERENCE,
            "uploadHeaders": [{"name": STR, "value": STR}],
        }
    },
    "uploadOptions": {"uploadCondition": STR},
}
TASK: Schema = {
    "id": STR,
    "displayName": STR,
    "exitConditions": {
        "exitCodes": [{"code": INT, "exitOptions": EXIT_OPTIONS}],
        "exitCodeRanges": [{"start": INT, "end": INT, "exitOptions": EXIT_OPTIONS}],
        "preProcessingError": EXIT_OPTIONS,
        "fileUploadError": EXIT_OPTIONS,
        "default": EXIT_OPTIONS,
    },
    "commandLine": STR,
    "containerSettings": _CONTAINERS,
    "resourceFiles": [RESOURCE_FILE],
    "outputFiles": [OUTPUT_FILE],
    "environmentSettings": [ENVIRONMENT_SETTING],
    "affinityInfo": Refused("node affinity is not emulated"),
    "constraints": {"maxWallClockTime": STR, "retentionTime": STR, "maxTaskRetryCount": INT},
    "requiredSlots": INT,
    "userIdentity": USER_IDENTITY,
    "multiInstanceSettings": Refused("multi-instance tasks are not emulated"),
    "dependsOn": Refused("task dependencies are not emulated"),
    "applicationPackageReferences": _APPLICATION_PACKAGES,
}

# What the service's deserializer (Json.NET) turns into an integer or a boolean.
_INTEGER_TEXT = re.compile(r"^\s*[+-]?\d+\s*$")
_INT32 = range(-(2**31), 2**31)


def _read_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise invalid_property(name, "must be an integer")
    integral_float = isinstance(value, float) and value.is_integer()
    integer_text = isinstance(value, str) and _INTEGER_TEXT.match(value) is not None
    if not (isinstance(value, int) or integral_float or integer_text):
        raise invalid_property(name, "must be an integer")
    result = int(value)
    if result not in _INT32:
        raise invalid_property(name, "must be a 32-bit integer")
    return result


def _read_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise invalid_property(name, "must be true or false")


def _is_empty(value: Any) -> bool:
    return value is None or value in ({}, [], False, "")


def conform(body: Any, schema: Schema, prefix: str = "", what: str = "request body") -> Any:
    """The body with nulls dropped and numbers read; 400 naming the first unknown or refused property."""
    if not isinstance(body, dict):
        raise invalid_property(prefix.rstrip(".") or what, "must be a JSON object")
    result: dict[str, Any] = {}
    for key, value in body.items():
        if value is None:
            continue  # a JSON null means "not set" to the service
        name = prefix + key
        rule = schema.get(key)
        if (rule is None or isinstance(rule, Refused)) and _is_empty(value):
            continue  # an empty list, empty object or false asks for nothing (older clients send some)
        if rule is None:
            raise invalid_property(
                name, f"is not a property of a {what} in api-version {API_VERSION} (or it is not emulated)"
            )
        if isinstance(rule, Refused):
            raise invalid_property(name, rule.reason)
        result[key] = _conform_value(value, rule, name, what)
    return result


def _conform_value(value: Any, rule: Any, name: str, what: str) -> Any:
    if rule == INT:
        return _read_int(value, name)
    if rule == BOOL:
        return _read_bool(value, name)
    if rule == STR:
        if not isinstance(value, str):
            raise invalid_property(name, "must be a string")
        return value
    if isinstance(rule, list):
        if not isinstance(value, list):
            raise invalid_property(name, "must be a JSON array")
        return [_conform_value(item, rule[0], name, what) for item in value if item is not None]
    return conform(value, rule, name + ".", what)
