"""The api-versions the emulator serves, and one adapter per version step (pure).

Handlers speak only the current wire shape (2025-06-01). A request in an older api-version is
translated up to it on the way in, and its JSON answer back down on the way out, by walking the
steps newer than the request's version: each step knows what changed at its version (a renamed
property, a reshaped body, an operation added or removed) and nothing else.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from emulator.wire import API_VERSION, ServiceError, invalid_property

# Every stable Batch data-plane api-version from the first one the tutorial's client sends to the
# current one, oldest first (specification/batch/data-plane/Microsoft.Batch/stable in
# Azure/azure-rest-api-specs; 2025-06-01 is the TypeSpec release the 15.x SDK sends).
SUPPORTED_VERSIONS: tuple[str, ...] = (
    "2016-07-01.3.1",
    "2017-01-01.4.0",
    "2017-05-01.5.0",
    "2017-06-01.5.1",
    "2017-09-01.6.0",
    "2018-03-01.6.1",
    "2018-08-01.7.0",
    "2018-12-01.8.0",
    "2019-06-01.9.0",
    "2019-08-01.10.0",
    "2020-03-01.11.0",
    "2020-09-01.12.0",
    "2021-06-01.14.0",
    "2022-01-01.15.0",
    "2022-10-01.16.0",
    "2023-05-01.17.0",
    "2023-11-01.18.0",
    "2024-02-01.19.0",
    "2024-07-01.20.0",
    API_VERSION,
)
SUPPORTED_RANGE = f"{SUPPORTED_VERSIONS[0]} to {SUPPORTED_VERSIONS[-1]}"

Body = dict[str, Any]
Translate = Callable[[str, Body, str], None]  # (operation, body, request version), in place

# Requests whose body is a pool (with its start task).
POOL_REQUESTS = frozenset({"create_pool", "update_pool"})


class VersionError(ServiceError):
    """A refusal raised while translating an old request: it already names properties as the client does."""


def _refuse(name: str, reason: str) -> VersionError:
    error = invalid_property(name, reason)
    return VersionError(error.status, error.code, error.message, error.values)


def _entities(operation: str, body: Body, single: str, listed: str) -> Iterator[Body]:
    """The entities in a body: the body of the `single` operation, or the `value` items of `listed`."""
    if operation == single:
        yield body
    elif operation == listed:
        for item in body.get("value") or []:
            if isinstance(item, dict):
                yield item


def _request_tasks(operation: str, body: Body) -> Iterator[Body]:
    return _entities(operation, body, "create_task", "create_task_collection")


def _request_start_task(operation: str, body: Body) -> Body | None:
    start_task = body.get("startTask") if operation in POOL_REQUESTS else None
    return start_task if isinstance(start_task, dict) else None


def _answer_tasks(operation: str, body: Body) -> Iterator[Body]:
    return _entities(operation, body, "get_task", "list_tasks")


def _answer_pools(operation: str, body: Body) -> Iterator[Body]:
    return _entities(operation, body, "get_pool", "list_pools")


def _answer_nodes(operation: str, body: Body) -> Iterator[Body]:
    return _entities(operation, body, "get_node", "list_nodes")


def _answer_start_tasks(operation: str, body: Body) -> Iterator[Body]:
    """Start tasks shown in pool and node answers."""
    for entity in (*_answer_pools(operation, body), *_answer_nodes(operation, body)):
        start_task = entity.get("startTask")
        if isinstance(start_task, dict):
            yield start_task


def _rename_in(body: Body, old: str, new: str, version: str, prefix: str = "") -> None:
    """Move an old client's `old` property to `new`; `new` itself did not exist in its version."""
    if new in body:
        raise _refuse(prefix + new, f"is not a property in api-version {version}; use {old}")
    if old in body:
        body[new] = body.pop(old)


def _rename_out(body: Body, new: str, old: str) -> None:
    if new in body:
        body[old] = body.pop(new)


# -- 2017-01-01.4.0: userIdentity replaced runElevated (tasks and start tasks) --------------------
def _parse_flag(value: object, name: str) -> bool:
    """A boolean as the service's deserializer reads it (true, false, or the strings "true"/"false")."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _refuse(name, "must be true or false")


def _elevation_in(task: Body, version: str, prefix: str) -> None:
    if "userIdentity" in task:
        raise _refuse(prefix + "userIdentity", f"is not a property in api-version {version}; use runElevated")
    if task.get("runElevated") is not None:
        elevated = _parse_flag(task.pop("runElevated"), prefix + "runElevated")
        task["userIdentity"] = {"autoUser": {"elevationLevel": "admin" if elevated else "nonadmin"}}
    task.pop("runElevated", None)


def _user_identity_up(operation: str, body: Body, version: str) -> None:
    for task in _request_tasks(operation, body):
        _elevation_in(task, version, "")
    start_task = _request_start_task(operation, body)
    if start_task is not None:
        _elevation_in(start_task, version, "startTask.")


def _elevation_out(task: Body) -> None:
    identity = task.pop("userIdentity", None)
    auto_user = identity.get("autoUser") if isinstance(identity, dict) else None
    task["runElevated"] = isinstance(auto_user, dict) and auto_user.get("elevationLevel") == "admin"


def _user_identity_down(operation: str, body: Body, version: str) -> None:
    for task in (*_answer_tasks(operation, body), *_answer_start_tasks(operation, body)):
        _elevation_out(task)


# -- 2017-05-01.5.0: low-priority nodes; targetDedicated renamed; failureInfo replaced schedulingError
def _dedicated_up(operation: str, body: Body, version: str) -> None:
    if operation in ("create_pool", "resize_pool"):
        _rename_in(body, "targetDedicated", "targetDedicatedNodes", version)
        if "targetLowPriorityNodes" in body:
            raise _refuse(
                "targetLowPriorityNodes",
                f"is not a property in api-version {version} (no low-priority nodes)",
            )
    for task in _request_tasks(operation, body):
        conditions = task.get("exitConditions")
        if isinstance(conditions, dict):
            _rename_in(conditions, "schedulingError", "preProcessingError", version, "exitConditions.")


# Failures that were no scheduling error before failureInfo existed: the exit code, or the end of the
# task (terminated, or out of wall-clock time), told the story.
_NOT_SCHEDULING_ERRORS = frozenset({"FailureExitCode", "TaskEnded"})


def _failure_out(info: object) -> None:
    """An execution info as an old client knows it: scheduling errors only, and no result."""
    if not isinstance(info, dict):
        return
    info.pop("result", None)
    failure = info.pop("failureInfo", None)
    if isinstance(failure, dict) and failure.get("code") not in _NOT_SCHEDULING_ERRORS:
        info["schedulingError"] = failure


def _dedicated_down(operation: str, body: Body, version: str) -> None:
    for pool in _answer_pools(operation, body):
        _rename_out(pool, "targetDedicatedNodes", "targetDedicated")
        _rename_out(pool, "currentDedicatedNodes", "currentDedicated")
        for name in ("targetLowPriorityNodes", "currentLowPriorityNodes"):
            pool.pop(name, None)
        errors = pool.pop("resizeErrors", None)
        if errors:
            pool["resizeError"] = errors[0]
    for node in _answer_nodes(operation, body):
        node.pop("isDedicated", None)
        _failure_out(node.get("startTaskInfo"))
    for task in _answer_tasks(operation, body):
        _failure_out(task.get("executionInfo"))
        task.pop("outputFiles", None)
        conditions = task.get("exitConditions")
        if isinstance(conditions, dict):
            _rename_out(conditions, "preProcessingError", "schedulingError")
            conditions.pop("fileUploadError", None)


# -- 2018-08-01.7.0: task counts lost validationStatus ------------------------------------------
def _validation_status_down(operation: str, body: Body, version: str) -> None:
    if operation == "get_job_task_counts":
        body["validationStatus"] = "validated"


# -- 2018-12-01.8.0: resource files take httpUrl / storageContainerUrl instead of blobSource ------
def _resource_files(task: Body) -> Iterator[Body]:
    for resource in task.get("resourceFiles") or []:
        if isinstance(resource, dict):
            yield resource


def _blob_source_up(operation: str, body: Body, version: str) -> None:
    tasks = list(_request_tasks(operation, body))
    start_task = _request_start_task(operation, body)
    prefixes = [""] * len(tasks)
    if start_task is not None:
        tasks.append(start_task)
        prefixes.append("startTask.")
    for task, prefix in zip(tasks, prefixes, strict=True):
        for resource in _resource_files(task):
            for newer in ("storageContainerUrl", "autoStorageContainerName", "blobPrefix"):
                if newer in resource:
                    raise _refuse(
                        f"{prefix}resourceFiles.{newer}", f"is not a property in api-version {version}"
                    )
            _rename_in(resource, "blobSource", "httpUrl", version, f"{prefix}resourceFiles.")


def _blob_source_down(operation: str, body: Body, version: str) -> None:
    for task in (*_answer_tasks(operation, body), *_answer_start_tasks(operation, body)):
        for resource in _resource_files(task):
            _rename_out(resource, "httpUrl", "blobSource")


# -- 2019-08-01.10.0: a start task waits for success unless told otherwise (it did not before) ----
def _wait_for_success_up(operation: str, body: Body, version: str) -> None:
    start_task = _request_start_task(operation, body)
    if start_task is not None and start_task.get("waitForSuccess") is None:
        start_task["waitForSuccess"] = False


# -- 2020-09-01.12.0: task slots replaced maxTasksPerNode; task counts gained slot counts ---------
def _task_slots_up(operation: str, body: Body, version: str) -> None:
    if operation in POOL_REQUESTS:
        _rename_in(body, "maxTasksPerNode", "taskSlotsPerNode", version)
    for task in _request_tasks(operation, body):
        if "requiredSlots" in task:
            raise _refuse("requiredSlots", f"is not a property in api-version {version}")


def _task_slots_down(operation: str, body: Body, version: str) -> None:
    for pool in _answer_pools(operation, body):
        _rename_out(pool, "taskSlotsPerNode", "maxTasksPerNode")
    if operation == "get_job_task_counts":
        counts = body.pop("taskCounts", {})
        body.clear()
        body.update(counts)


@dataclass(frozen=True)
class VersionStep:
    """What changed at `version`, for clients that speak an older one."""

    version: str
    summary: str
    up: Translate | None = None  # request body, old shape -> this version's shape
    down: Translate | None = None  # answer body, this version's shape -> the previous one
    renamed: dict[str, str] = field(default_factory=dict)  # new property name -> old, for error details
    added_operations: frozenset[str] = frozenset()
    removed_operations: frozenset[str] = frozenset()


STEPS: tuple[VersionStep, ...] = (
    VersionStep(
        "2017-01-01.4.0",
        "`runElevated` (tasks, start tasks) ↔ `userIdentity.autoUser.elevationLevel` (`admin`/`nonadmin`)",
        _user_identity_up,
        _user_identity_down,
        {"userIdentity": "runElevated"},
    ),
    VersionStep(
        "2017-05-01.5.0",
        "`targetDedicated` ↔ `targetDedicatedNodes` (pool add, resize), `currentDedicated` ↔ "
        "`currentDedicatedNodes`, `resizeError` ↔ `resizeErrors`; `schedulingError` ↔ `failureInfo` "
        "(exit-code failures and `result` are not shown), `exitConditions.schedulingError` ↔ "
        "`preProcessingError`; no low-priority nodes, `isDedicated` or `outputFiles`",
        _dedicated_up,
        _dedicated_down,
        {
            "targetDedicatedNodes": "targetDedicated",
            "currentDedicatedNodes": "currentDedicated",
            "resizeErrors": "resizeError",
            "preProcessingError": "schedulingError",
        },
    ),
    VersionStep(
        "2017-06-01.5.1",
        "`GET /jobs/{id}/taskcounts` exists from here on",
        added_operations=frozenset({"get_job_task_counts"}),
    ),
    VersionStep(
        "2018-08-01.7.0",
        "task counts lost `validationStatus` (older versions get `validated`)",
        down=_validation_status_down,
    ),
    VersionStep(
        "2018-12-01.8.0",
        "`resourceFiles[].blobSource` ↔ `httpUrl` (tasks, start tasks); `storageContainerUrl`, "
        "`autoStorageContainerName` and `blobPrefix` are new",
        _blob_source_up,
        _blob_source_down,
        {"httpUrl": "blobSource"},
    ),
    VersionStep(
        "2019-06-01.9.0",
        "`GET /supportedimages` replaced `GET /nodeagentskus`",
        added_operations=frozenset({"list_supported_images"}),
        removed_operations=frozenset({"list_node_agent_skus"}),
    ),
    VersionStep(
        "2019-08-01.10.0",
        "a start task without `waitForSuccess` now waits (older versions default to `false`)",
        _wait_for_success_up,
    ),
    VersionStep(
        "2020-09-01.12.0",
        "`maxTasksPerNode` ↔ `taskSlotsPerNode`; `requiredSlots` is new; task counts were the bare "
        "counts object (now `{taskCounts, taskSlotCounts}`)",
        _task_slots_up,
        _task_slots_down,
        {"taskSlotsPerNode": "maxTasksPerNode"},
    ),
)


@dataclass(frozen=True)
class WireAdapter:
    """How one api-version's wire shapes map to the current one: the steps newer than it."""

    version: str
    steps: tuple[VersionStep, ...]

    @property
    def is_current(self) -> bool:
        return not self.steps

    @functools.cached_property
    def missing_operations(self) -> frozenset[str]:
        """Operations added after this version, or removed at or before it."""
        added_later = {operation for step in self.steps for operation in step.added_operations}
        removed = {
            operation
            for step in STEPS
            if step.version <= self.version
            for operation in step.removed_operations
        }
        return frozenset(added_later | removed)

    def require_operation(self, operation: str) -> None:
        """404 for an operation this version does not have (as for any unknown URL)."""
        if operation in self.missing_operations:
            raise ServiceError(
                404,
                "ResourceNotFound",
                f"The operation {operation} does not exist in api-version {self.version}.",
            )

    def request(self, operation: str, body: Body) -> Body:
        """An old client's request body in the current shape."""
        for step in self.steps:
            if step.up is not None:
                step.up(operation, body, self.version)
        return body

    def answer(self, operation: str, body: Body) -> Body:
        """A current-shape answer body as this version's clients read it."""
        for step in reversed(self.steps):
            if step.down is not None:
                step.down(operation, body, self.version)
        if operation == "create_task_collection":
            for result in body.get("value") or []:
                error = result.get("error") if isinstance(result, dict) else None
                if isinstance(error, dict):
                    for detail in error.get("values") or []:
                        if isinstance(detail, dict) and detail.get("key") == "PropertyName":
                            detail["value"] = self.property_name(str(detail.get("value")))
        return body

    def property_name(self, path: str) -> str:
        """A dotted property path with each renamed segment as this version calls it."""
        segments = path.split(".")
        for step in reversed(self.steps):
            segments = [step.renamed.get(segment, segment) for segment in segments]
        return ".".join(segments)

    def current_name(self, path: str) -> str:
        """A property path an old client names (in `$select`) as the current shape calls it."""
        segments = path.split("/")
        for step in self.steps:
            renamed = {old: new for new, old in step.renamed.items()}
            segments = [renamed.get(segment, segment) for segment in segments]
        return "/".join(segments)

    def error(self, error: ServiceError) -> ServiceError:
        """The error with its `PropertyName` detail in this version's names."""
        name = error.values.get("PropertyName")
        if self.is_current or name is None or isinstance(error, VersionError):
            return error
        renamed = self.property_name(name)
        if renamed != name:
            error.values = {**error.values, "PropertyName": renamed}
        return error


@functools.cache
def adapter_for(version: str) -> WireAdapter:
    """The adapter for a request's api-version; 400 `UnsupportedRequestVersion` for any other."""
    if version not in SUPPORTED_VERSIONS:
        raise ServiceError(
            400,
            "UnsupportedRequestVersion",
            f"The api-version {version!r} is not supported; this emulator serves {SUPPORTED_RANGE} "
            f"({', '.join(SUPPORTED_VERSIONS)}).",
            {"QueryParameterName": "api-version", "QueryParameterValue": version},
        )
    newer = tuple(step for step in STEPS if step.version > version)
    return WireAdapter(version, newer)
