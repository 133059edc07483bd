"""Every property of the current pool, job and task add bodies is either emulated or refused by name.

The property list comes from the azure-batch 15.1 models (what a current client can send); the
expected classification below is the documented contract (docs/emulator.md), written by hand.
"""

from __future__ import annotations

import copy
import datetime
import enum
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

import azure.batch.models as sdk
import azure.batch.models._enums as sdk_enums
import azure.batch.models._models as sdk_models
import pytest
from azure.batch._utils.model_base import Model

from emulator import validation
from emulator.wire import ServiceError

_NAMES: dict[str, Any] = {**vars(sdk_enums), **vars(sdk), **vars(sdk_models)}
_NAMES["_models"] = types.SimpleNamespace(**_NAMES)
_NAMES["_enums"] = sdk_enums

# Properties (and whole subtrees, by prefix) that the emulator emulates or records and shows back.
EMULATED = {
    "pool": (
        "id",
        "displayName",
        "vmSize",
        "virtualMachineConfiguration.imageReference.",
        "virtualMachineConfiguration.nodeAgentSKUId",
        "resizeTimeout",
        "targetDedicatedNodes",
        "targetLowPriorityNodes",
        "enableInterNodeCommunication",
        "startTask.commandLine",
        "startTask.resourceFiles.httpUrl",
        "startTask.resourceFiles.storageContainerUrl",
        "startTask.resourceFiles.blobPrefix",
        "startTask.resourceFiles.filePath",
        "startTask.resourceFiles.fileMode",
        "startTask.environmentSettings.",
        "startTask.userIdentity.autoUser.",
        "startTask.maxTaskRetryCount",
        "startTask.waitForSuccess",
        "taskSlotsPerNode",
        "taskSchedulingPolicy.",
        "metadata.",
        "upgradePolicy.mode",
    ),
    "job": (
        "id",
        "displayName",
        "usesTaskDependencies",
        "priority",
        "allowTaskPreemption",
        "maxParallelTasks",
        "constraints.",
        "commonEnvironmentSettings.",
        "poolInfo.poolId",
        "onAllTasksComplete",
        "onTaskFailure",
        "metadata.",
    ),
    "task": (
        "id",
        "displayName",
        "exitConditions.exitCodes.code",
        "exitConditions.exitCodes.exitOptions.jobAction",
        "exitConditions.exitCodeRanges.start",
        "exitConditions.exitCodeRanges.end",
        "exitConditions.exitCodeRanges.exitOptions.jobAction",
        "exitConditions.preProcessingError.jobAction",
        "exitConditions.fileUploadError.jobAction",
        "exitConditions.default.jobAction",
        "commandLine",
        "resourceFiles.httpUrl",
        "resourceFiles.storageContainerUrl",
        "resourceFiles.blobPrefix",
        "resourceFiles.filePath",
        "resourceFiles.fileMode",
        "outputFiles.filePattern",
        "outputFiles.destination.container.path",
        "outputFiles.destination.container.containerUrl",
        "outputFiles.destination.container.uploadHeaders.",
        "outputFiles.uploadOptions.uploadCondition",
        "environmentSettings.",
        "constraints.",
        "requiredSlots",
        "userIdentity.autoUser.",
    ),
}
# Autoscale is another change's work: either outcome is fine here, as long as it is not silent.
EITHER = ("enableAutoScale", "autoScaleFormula", "autoScaleEvaluationInterval")

MINIMAL: dict[str, dict[str, Any]] = {
    "pool": {
        "id": "p",
        "vmSize": "standard_d2s_v3",
        "virtualMachineConfiguration": {
            "imageReference": {"publisher": "canonical", "offer": "ubuntu-24_04-lts", "sku": "server"},
            "nodeAgentSKUId": "batch.node.ubuntu 24.04",
        },
    },
    "job": {"id": "j", "poolInfo": {"poolId": "p"}},
    "task": {"id": "t", "commandLine": "/bin/true"},
}
URL = "http://127.0.0.1:1/container?sv=x"
# What an enclosing object must hold to be valid, by its last path segment.
PARENTS: dict[str, dict[str, Any]] = {
    "startTask": {"commandLine": "/bin/true"},
    "resourceFiles": {"httpUrl": URL, "filePath": "f.txt"},
    "commonResourceFiles": {"httpUrl": URL, "filePath": "f.txt"},
    "outputFiles": {"filePattern": "*.txt", "destination": {"container": {"containerUrl": URL}}},
    "environmentSettings": {"name": "NAME", "value": "v"},
    "commonEnvironmentSettings": {"name": "NAME", "value": "v"},
    "metadata": {"name": "n", "value": "v"},
    "exitCodes": {"code": 1, "exitOptions": {"jobAction": "none"}},
    "exitCodeRanges": {"start": 1, "end": 2, "exitOptions": {"jobAction": "none"}},
    "uploadHeaders": {"name": "content-type", "value": "text/plain"},
}
SOURCES = ("httpUrl", "storageContainerUrl", "autoStorageContainerName")
SAMPLES: dict[str, Any] = {
    "filePath": "f.txt",
    "fileMode": "0644",
    "filePattern": "*.txt",
    "commandLine": "/bin/true",
    "nodeAgentSKUId": "batch.node.ubuntu 24.04",
    "httpUrl": URL,
    "storageContainerUrl": URL,
    "containerUrl": URL,
    "id": "x",
    "poolId": "p",
    "mode": "manual",
    "jobAction": "terminate",
    "retentionTime": "P8D",
    # Emulated as false (the default); true is refused, see the next test.
    "usesTaskDependencies": False,
    "allowTaskPreemption": False,
    "outputFiles.destination.container.uploadHeaders.name": "cache-control",
}


def _models_in(annotation: Any) -> list[type[Model]]:
    if isinstance(annotation, type) and issubclass(annotation, Model):
        return [annotation]
    return [model for argument in typing.get_args(annotation) for model in _models_in(argument)]


def _is_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return any(_is_list(argument) for argument in typing.get_args(annotation))


def leaf_paths(model: type[Model], prefix: str = "") -> Iterator[tuple[str, Any, tuple[bool, ...]]]:
    """(dotted wire path, leaf annotation, which path segments are lists) for every leaf property."""
    yield from _walk(model, prefix, (), ())


def _walk(
    model: type[Model], prefix: str, lists: tuple[bool, ...], seen: tuple[type[Model], ...]
) -> Iterator[tuple[str, Any, tuple[bool, ...]]]:
    model()  # the SDK fills its field table on first use
    hints = typing.get_type_hints(model, globalns=_NAMES)
    for attribute, field in model._attr_to_rest_field.items():
        annotation = hints[attribute]
        path = prefix + field._rest_name
        nested = [inner for inner in _models_in(annotation) if inner not in seen]
        here = (*lists, _is_list(annotation))
        if nested:
            yield from _walk(nested[0], path + ".", here, (*seen, model))
        else:
            yield path, annotation, here


def _scalar(annotation: Any) -> Any:
    """The first concrete type inside Optional[...] / Union[str, Enum]."""
    arguments = [argument for argument in typing.get_args(annotation) if argument is not type(None)]
    if typing.get_origin(annotation) in (list, dict) or not arguments:
        return annotation
    enums = [
        argument for argument in arguments if isinstance(argument, type) and issubclass(argument, enum.Enum)
    ]
    return enums[0] if enums else _scalar(arguments[0])


def sample(path: str, annotation: Any) -> Any:
    name = path.rsplit(".", 1)[-1]
    for key in (path, name):
        if key in SAMPLES:
            return SAMPLES[key]
    kind = _scalar(annotation)
    if typing.get_origin(kind) is list:
        return ["x"]
    if typing.get_origin(kind) is dict:
        return {"k": "v"}
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return next(iter(kind)).value
    table: dict[Any, Any] = {bool: True, int: 1, str: "x", datetime.timedelta: "PT1M"}
    return table.get(kind, "x")


def body_with(kind: str, path: str, lists: tuple[bool, ...], value: Any) -> dict[str, Any]:
    body = copy.deepcopy(MINIMAL[kind])
    segments = path.split(".")
    node: dict[str, Any] = body
    for index, segment in enumerate(segments[:-1]):
        parent = copy.deepcopy(PARENTS.get(segment, {}))
        if segment in ("resourceFiles", "commonResourceFiles") and segments[index + 1] in (
            *SOURCES,
            "blobPrefix",
        ):
            parent = {"filePath": "f.txt"}
            if segments[index + 1] == "blobPrefix":
                parent["storageContainerUrl"] = URL
        if lists[index]:
            node = node.setdefault(segment, [parent])[0]
        else:
            existing = node.get(segment)
            node[segment] = existing if isinstance(existing, dict) else parent
            node = node[segment]
    node[segments[-1]] = value
    return body


VALIDATE: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "pool": validation.validate_pool,
    "job": validation.validate_job,
    "task": lambda body: validation.validate_task(body, {"onTaskFailure": "performexitoptionsjobaction"}),
}
ROOTS = {
    "pool": sdk.BatchPoolCreateOptions,
    "job": sdk.BatchJobCreateOptions,
    "task": sdk.BatchTaskCreateOptions,
}


def _read(spec: Any, path: str) -> Any:
    for segment in path.split("."):
        if isinstance(spec, list):
            spec = spec[0]
        spec = spec[segment]
    return spec


def _names(error: ServiceError, path: str) -> bool:
    named = error.values.get("PropertyName", "")
    return path == named or path.startswith(named + ".")


@pytest.mark.parametrize("kind", ["pool", "job", "task"])
def test_every_property_is_emulated_or_refused_by_name(kind: str) -> None:
    paths = list(leaf_paths(ROOTS[kind]))
    assert len(paths) > 20, "the SDK's property list could not be read"
    problems: list[str] = []
    for path, annotation, lists in paths:
        value = sample(path, annotation)
        emulated = any(
            path == entry or path.startswith(entry) for entry in EMULATED[kind] if entry.endswith(".")
        )
        emulated = emulated or path in EMULATED[kind]
        try:
            spec = VALIDATE[kind](body_with(kind, path, lists, value))
        except ServiceError as error:
            if path in EITHER:
                continue  # e.g. enableAutoScale alone may be refused for its missing formula
            if not _names(error, path):
                problems.append(f"{path}: refused, but the error names {error.values}")
            elif emulated and path not in EITHER:
                problems.append(f"{path}: documented as emulated but refused ({error.values.get('Reason')})")
            continue
        if not emulated and path not in EITHER:
            problems.append(f"{path}: accepted although it is not emulated")
        elif _read(spec, path) != value:
            problems.append(f"{path}: accepted but not kept ({value!r} -> {_read(spec, path)!r})")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("kind", "body", "named"),
    [
        ("job", {"usesTaskDependencies": True}, "usesTaskDependencies"),
        ("job", {"allowTaskPreemption": "true"}, "allowTaskPreemption"),
        ("pool", {"upgradePolicy": {"mode": "automatic"}}, "upgradePolicy.mode"),
        ("pool", {"autoScaleFormula": "$TargetDedicatedNodes = 1;"}, "autoScaleFormula"),
        ("task", {"bogus": 1}, "bogus"),
        (
            "pool",
            {"startTask": {"commandLine": "x", "containerSettings": {"imageName": "i"}}},
            "startTask.containerSettings",
        ),
        (
            "task",
            {"resourceFiles": [{"httpUrl": URL, "filePath": "f", "blobPrefix": "p"}]},
            "resourceFiles.blobPrefix",
        ),
        (
            "task",
            {
                "outputFiles": [
                    {
                        "filePattern": "*",
                        "destination": {
                            "container": {
                                "containerUrl": URL,
                                "uploadHeaders": [{"name": "x-ms-blob-type", "value": "AppendBlob"}],
                            }
                        },
                    }
                ]
            },
            "outputFiles.destination.container.uploadHeaders",
        ),
    ],
)
def test_values_that_are_not_emulated_are_refused_by_name(
    kind: str, body: dict[str, Any], named: str
) -> None:
    with pytest.raises(ServiceError) as refused:
        VALIDATE[kind]({**MINIMAL[kind], **body})
    assert (refused.value.status, refused.value.code) == (400, "InvalidPropertyValue")
    assert refused.value.values["PropertyName"] == named
