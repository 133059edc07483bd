"""Route handlers: one function per Batch operation, named as the SDK names it."""

from __future__ import annotations

import bisect
import functools
import itertools
import json
from collections.abc import Iterable
from importlib import resources
from typing import Any

import anyio
from aiohttp import web

from emulator import autoscale, files, quota, validation
from emulator.model import NodeState, Task
from emulator.odata import dict_getter
from emulator.render import TASK_FILTER_FIELDS, job_json, node_json, pool_json, task_getter, task_json
from emulator.rest import (
    REQUEST_ID,
    apply_select,
    base_url,
    created,
    entity_headers,
    json_response,
    paged,
    query_value,
    read_body,
    route,
    select_properties,
    services,
)
from emulator.wire import (
    ServiceError,
    error_body,
    format_http_date,
    format_time,
    invalid_property,
    missing_property,
    utc_now,
)


# -- pools and nodes ----------------------------------------------------------------------------
@route("POST", "/pools", "create_pool")
async def create_pool(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    spec = validation.validate_pool(await read_body(request))
    quota.check_vm_size(svc.account.quota, spec)
    quota.check_pool_count(svc.account.quota, svc.account.pools, str(spec["id"]))
    pool = svc.account.add_pool(spec)
    svc.background.start_soon(svc.runner.provision_pool, pool, svc.limits.pool_allocation_delay_s)
    autoscale.start_if_enabled(request, pool)
    return created(request, f"/pools/{pool.id}", pool.etag, pool.last_modified)


@route("GET", "/pools", "list_pools")
async def list_pools(request: web.Request) -> web.StreamResponse:
    pools = sorted(services(request).account.pools.values(), key=lambda pool: pool.sequence)
    base = base_url(request)
    return paged(
        request,
        [(pool.sequence, pool) for pool in pools],
        lambda pool: dict_getter(pool_json(pool, base)),
        lambda pool: pool_json(pool, base),
        None,
    )


@route("GET", "/pools/{pool_id}", "get_pool")
async def get_pool(request: web.Request) -> web.StreamResponse:
    pool = services(request).account.get_pool(request.match_info["pool_id"])
    body = apply_select(pool_json(pool, base_url(request)), select_properties(request))
    return json_response(body, headers=entity_headers(pool.etag, pool.last_modified))


@route("HEAD", "/pools/{pool_id}", "pool_exists")
async def pool_exists(request: web.Request) -> web.StreamResponse:
    pool = services(request).account.get_pool(request.match_info["pool_id"])
    return web.Response(status=200, headers=entity_headers(pool.etag, pool.last_modified))


@route("DELETE", "/pools/{pool_id}", "delete_pool")
async def delete_pool(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    pool = svc.account.get_pool(request.match_info["pool_id"])
    svc.account.begin_delete_pool(pool)
    svc.background.start_soon(svc.runner.remove_pool, pool, svc.limits.pool_delete_delay_s)
    return web.Response(status=202)


@route("PATCH", "/pools/{pool_id}", "update_pool")
async def update_pool(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    pool = svc.account.get_pool(request.match_info["pool_id"])
    svc.account.update_pool(pool, validation.validate_pool_update(await read_body(request)))
    return web.Response(status=200, headers=entity_headers(pool.etag, pool.last_modified))


@route("POST", "/pools/{pool_id}/resize", "resize_pool")
async def resize_pool(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    pool = svc.account.get_pool(request.match_info["pool_id"])
    autoscale.refuse_manual_resize(pool)
    targets = validation.validate_resize(await read_body(request))
    svc.account.begin_resize_pool(pool, *targets)
    svc.background.start_soon(svc.runner.resize_pool, pool)
    return web.Response(status=202, headers=entity_headers(pool.etag, pool.last_modified))


@route("GET", "/pools/{pool_id}/nodes", "list_nodes")
async def list_nodes(request: web.Request) -> web.StreamResponse:
    pool = services(request).account.get_pool(request.match_info["pool_id"])
    base = base_url(request)
    nodes = sorted(pool.nodes.values(), key=lambda node: node.index)
    return paged(
        request,
        ((node.index + 1, node) for node in nodes),
        lambda node: dict_getter(node_json(node, pool, base)),
        lambda node: node_json(node, pool, base),
        None,
    )


def _node(request: web.Request) -> Any:
    pool = services(request).account.get_pool(request.match_info["pool_id"])
    node = pool.nodes.get(request.match_info["node_id"])
    if node is None or node.state == NodeState.LEAVING_POOL:
        raise ServiceError(404, "NodeNotFound", "The specified node does not exist.")
    return pool, node


@route("GET", "/pools/{pool_id}/nodes/{node_id}", "get_node")
async def get_node(request: web.Request) -> web.StreamResponse:
    pool, node = _node(request)
    return json_response(apply_select(node_json(node, pool, base_url(request)), select_properties(request)))


@route("POST", "/pools/{pool_id}/nodes/{node_id}/reboot", "reboot_node")
async def reboot_node(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    pool, node = _node(request)
    # The body is optional (the SDK sends one only with options): requeue is the default.
    body = await read_body(request) if request.content_length else {}
    if node.state == NodeState.START_TASK_FAILED and not svc.limits.reboot_start_task_failed:
        # --refuse-start-task-failed-reboot: what the service may answer (reboot is for idle or
        # running nodes), so a client's handling of the refusal can be tested.
        raise ServiceError(
            409,
            "OperationInvalidForCurrentState",
            "The node is starttaskfailed; a node can be rebooted when it is idle or running.",
        )
    svc.account.begin_reboot_node(node, validation.validate_reboot(body))
    svc.background.start_soon(svc.runner.reboot_node, pool, node)
    return web.Response(status=202, headers=entity_headers(pool.etag, pool.last_modified))


@route("GET", "/supportedimages", "list_supported_images")
async def list_supported_images(request: web.Request) -> web.StreamResponse:
    return paged(request, enumerate(supported_images(), 1), dict_getter, lambda image: image, None)


@functools.cache
def supported_images() -> list[dict[str, Any]]:
    images: list[dict[str, Any]] = json.loads(
        resources.files("emulator").joinpath("supported_images.json").read_text()
    )
    return images


# -- jobs ---------------------------------------------------------------------------------------
@route("POST", "/jobs", "create_job")
async def create_job(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    job = svc.account.add_job(validation.validate_job(await read_body(request)))
    return created(request, f"/jobs/{job.id}", job.etag, job.last_modified)


@route("GET", "/jobs", "list_jobs")
async def list_jobs(request: web.Request) -> web.StreamResponse:
    jobs = sorted(services(request).account.jobs.values(), key=lambda job: job.sequence)
    base = base_url(request)
    return paged(
        request,
        ((job.sequence, job) for job in jobs),
        lambda job: dict_getter(job_json(job, base)),
        lambda job: job_json(job, base),
        None,
    )


@route("GET", "/jobs/{job_id}", "get_job")
async def get_job(request: web.Request) -> web.StreamResponse:
    job = services(request).account.get_job(request.match_info["job_id"])
    body = apply_select(job_json(job, base_url(request)), select_properties(request))
    return json_response(body, headers=entity_headers(job.etag, job.last_modified))


async def _change_job(request: web.Request, replace: bool) -> web.StreamResponse:
    svc = services(request)
    job = svc.account.get_job(request.match_info["job_id"])
    changes = validation.validate_job_update(await read_body(request))
    if replace and "poolInfo" not in changes:
        raise missing_property("poolInfo")
    svc.account.update_job(job, changes, replace)
    return web.Response(status=200, headers=entity_headers(job.etag, job.last_modified))


@route("PATCH", "/jobs/{job_id}", "update_job")
async def update_job(request: web.Request) -> web.StreamResponse:
    return await _change_job(request, replace=False)


@route("PUT", "/jobs/{job_id}", "replace_job")
async def replace_job(request: web.Request) -> web.StreamResponse:
    return await _change_job(request, replace=True)


@route("POST", "/jobs/{job_id}/terminate", "terminate_job")
async def terminate_job(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    job = svc.account.get_job(request.match_info["job_id"])
    reason = "UserTerminate"
    if request.can_read_body and request.content_length:
        body = await read_body(request)
        reason = str(body.get("terminateReason") or reason)
    svc.account.terminate_job(job, reason)
    return web.Response(status=202, headers=entity_headers(job.etag, job.last_modified))


@route("DELETE", "/jobs/{job_id}", "delete_job")
async def delete_job(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    job = svc.account.get_job(request.match_info["job_id"])
    svc.account.begin_delete_job(job)
    svc.background.start_soon(svc.runner.remove_job, job.id)
    return web.Response(status=202)


@route("GET", "/jobs/{job_id}/taskcounts", "get_job_task_counts")
async def get_job_task_counts(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    job = svc.account.get_job(request.match_info["job_id"])
    current = {"taskCounts": job.counts.to_wire(), "taskSlotCounts": job.slot_counts.to_wire()}
    return json_response(svc.count_history.serve(job.id, current))  # stale with --task-counts-lag-s


# -- tasks --------------------------------------------------------------------------------------
def _task_result(request: web.Request, task: Task) -> dict[str, Any]:
    return {
        "status": "success",
        "taskId": task.id,
        "eTag": task.etag,
        "lastModified": format_time(task.last_modified or utc_now()),
        "location": f"{base_url(request)}/jobs/{task.job_id}/tasks/{task.id}",
    }


def _task_error(request: web.Request, task_id: object, error: ServiceError) -> dict[str, Any]:
    body = error_body(base_url(request), error.code, error.message, request[REQUEST_ID], error.values)
    body.pop("odata.metadata", None)
    result: dict[str, Any] = {"status": "clienterror", "error": body}
    if isinstance(task_id, str):
        result["taskId"] = task_id
    return result


@route("POST", "/jobs/{job_id}/addtaskcollection", "create_task_collection")
async def create_task_collection(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    body = await read_body(request)
    values = body.get("value")
    if values is None:
        raise missing_property("value")
    if not isinstance(values, list):
        raise invalid_property("value", "must be a JSON array of tasks")
    if len(values) > svc.limits.max_tasks_per_request:
        raise ServiceError(
            413,
            "RequestBodyTooLarge",
            f"The collection holds {len(values)} tasks; "
            f"at most {svc.limits.max_tasks_per_request} are allowed per request.",
        )
    job = svc.account.get_job(request.match_info["job_id"])
    svc.account.require_job_open(job)
    results: list[dict[str, Any]] = []
    seen: set[str] = set()
    for raw in values:
        task_id = raw.get("id") if isinstance(raw, dict) else None
        try:
            spec = validation.validate_task(validation.require_object(raw), job.spec)
            if spec["id"].lower() in seen:
                raise invalid_property(
                    "id", f"the task id {spec['id']} appears more than once in this collection"
                )
            seen.add(spec["id"].lower())
            results.append(_task_result(request, svc.account.add_task(job, spec)))
        except ServiceError as error:
            results.append(_task_error(request, task_id, error))
    svc.account.notify()
    return json_response({"value": results})


@route("POST", "/jobs/{job_id}/tasks", "create_task")
async def create_task(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    body = await read_body(request)
    job = svc.account.get_job(request.match_info["job_id"])
    svc.account.require_job_open(job)
    task = svc.account.add_task(job, validation.validate_task(body, job.spec))
    svc.account.notify()
    return created(request, f"/jobs/{job.id}/tasks/{task.id}", task.etag, task.last_modified)


@route("GET", "/jobs/{job_id}/tasks", "list_tasks")
async def list_tasks(request: web.Request) -> web.StreamResponse:
    job = services(request).account.get_job(request.match_info["job_id"])
    base = base_url(request)

    def tasks_after(after: int) -> Iterable[tuple[int, Task]]:
        start = bisect.bisect_right(job.tasks_in_order, after, key=lambda task: task.sequence)
        return ((task.sequence, task) for task in itertools.islice(job.tasks_in_order, start, None))

    return paged(
        request,
        tasks_after,
        task_getter,
        lambda task: task_json(task, base),
        TASK_FILTER_FIELDS,
    )


def _task(request: web.Request) -> tuple[Any, Task]:
    account = services(request).account
    job = account.get_job(request.match_info["job_id"])
    return job, account.get_task(job, request.match_info["task_id"])


@route("GET", "/jobs/{job_id}/tasks/{task_id}", "get_task")
async def get_task(request: web.Request) -> web.StreamResponse:
    _, task = _task(request)
    body = apply_select(task_json(task, base_url(request)), select_properties(request))
    return json_response(body, headers=entity_headers(task.etag, task.last_modified))


@route("POST", "/jobs/{job_id}/tasks/{task_id}/terminate", "terminate_task")
async def terminate_task(request: web.Request) -> web.StreamResponse:
    job, task = _task(request)
    services(request).account.terminate_task(job, task)
    return web.Response(status=204, headers=entity_headers(task.etag, task.last_modified))


@route("DELETE", "/jobs/{job_id}/tasks/{task_id}", "delete_task")
async def delete_task(request: web.Request) -> web.StreamResponse:
    job, task = _task(request)
    services(request).account.delete_task(job, task)
    return web.Response(status=200)


# -- files --------------------------------------------------------------------------------------
def _task_root(request: web.Request) -> Any:
    _, task = _task(request)
    node = services(request).account.find_node(task)
    if node is None:
        raise ServiceError(
            409, "TaskFilesUnavailable", "The task has not run on a node yet, so it has no files."
        )
    return node.root / task.directory, f"{base_url(request)}/jobs/{task.job_id}/tasks/{task.id}/files"


def _node_root(request: web.Request) -> Any:
    pool, node = _node(request)
    return node.root, f"{base_url(request)}/pools/{pool.id}/nodes/{node.id}/files"


def _list_files(request: web.Request, root_and_url: tuple[Any, str]) -> web.StreamResponse:
    root, url_prefix = root_and_url
    recursive = (query_value(request, "recursive") or "").lower() == "true"
    entries = files.list_entries(root, recursive)
    return paged(
        request,
        enumerate(entries, 1),
        lambda entry: dict_getter({"name": entry.name}),
        lambda entry: files.entry_json(entry, url_prefix),
        ("name",),
    )


async def _file_response(
    request: web.Request, root_and_url: tuple[Any, str], head: bool
) -> web.StreamResponse:
    root, url_prefix = root_and_url
    relative = request.match_info["file_path"]
    path = files.resolve_file(root, relative)
    entry = files.entry_for(root, path)
    headers = {
        "ocp-batch-file-isdirectory": "true" if entry.is_directory else "false",
        "ocp-batch-file-url": f"{url_prefix}/{entry.name}",
        "ocp-batch-file-mode": f"0o{entry.mode:o}",
        "ocp-creation-time": format_http_date(entry.created),
        "Last-Modified": format_http_date(entry.modified),
        "Content-Type": "application/octet-stream",
    }
    if head:
        headers["Content-Length"] = str(0 if entry.is_directory else entry.size)
        return web.Response(status=200, headers=headers)
    if entry.is_directory:
        raise ServiceError(404, "FileNotFound", "The path names a directory; list it instead.")
    start, end = files.parse_range(request.headers.get("ocp-range"), entry.size) or (0, entry.size - 1)
    # Reading happens off the event loop: a task's stdout can be large.
    data = await anyio.to_thread.run_sync(files.read_range, path, start, end)
    # 200 even for a range: the SDK's download methods accept no other status.
    return web.Response(status=200, body=data, headers=headers)


@route("GET", "/jobs/{job_id}/tasks/{task_id}/files", "list_task_files")
async def list_task_files(request: web.Request) -> web.StreamResponse:
    return _list_files(request, _task_root(request))


@route("GET", "/jobs/{job_id}/tasks/{task_id}/files/{file_path:.+}", "get_task_file")
async def get_task_file(request: web.Request) -> web.StreamResponse:
    return await _file_response(request, _task_root(request), head=False)


@route("HEAD", "/jobs/{job_id}/tasks/{task_id}/files/{file_path:.+}", "get_task_file_properties")
async def get_task_file_properties(request: web.Request) -> web.StreamResponse:
    return await _file_response(request, _task_root(request), head=True)


@route("GET", "/pools/{pool_id}/nodes/{node_id}/files", "list_node_files")
async def list_node_files(request: web.Request) -> web.StreamResponse:
    return _list_files(request, _node_root(request))


@route("GET", "/pools/{pool_id}/nodes/{node_id}/files/{file_path:.+}", "get_node_file")
async def get_node_file(request: web.Request) -> web.StreamResponse:
    return await _file_response(request, _node_root(request), head=False)


@route("HEAD", "/pools/{pool_id}/nodes/{node_id}/files/{file_path:.+}", "get_node_file_properties")
async def get_node_file_properties(request: web.Request) -> web.StreamResponse:
    return await _file_response(request, _node_root(request), head=True)
