"""The aiohttp application: routing, SharedKey auth, faults, errors, stats, and the handlers."""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlencode

import structlog
from aiohttp import web
from anyio.abc import TaskGroup

from emulator import files, validation
from emulator.auth import verify_shared_key
from emulator.faults import FaultInjector
from emulator.model import NodeState, Task
from emulator.odata import FieldGetter, FilterError, Node, check_fields, dict_getter, evaluate, parse_filter
from emulator.render import TASK_FILTER_FIELDS, job_json, node_json, pool_json, task_getter, task_json
from emulator.runner import Runner
from emulator.state import Account
from emulator.wire import (
    API_VERSION,
    ServiceError,
    error_body,
    format_http_date,
    format_time,
    invalid_property,
    is_known_api_version_form,
    missing_property,
    utc_now,
)

log = structlog.get_logger("emulator")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_PAGE = 1000
JSON_CONTENT_TYPE = "application/json;odata=minimalmetadata"
STATS_PATH = "/_emulator/stats"
T = TypeVar("T")


@dataclass
class Stats:
    """Per-operation counters served at /_emulator/stats."""

    requests: Counter[str] = field(default_factory=Counter)
    responses_by_status: Counter[str] = field(default_factory=Counter)
    faults_injected: Counter[str] = field(default_factory=Counter)


@dataclass
class Limits:
    max_tasks_per_request: int = 100
    max_body_bytes: int = 1_048_576
    pool_allocation_delay_s: float = 0.0


@dataclass
class Services:
    """Everything a handler may need; stored on the app."""

    account: Account
    runner: Runner
    faults: FaultInjector
    key: bytes
    limits: Limits
    background: TaskGroup
    stats: Stats = field(default_factory=Stats)


SERVICES = web.AppKey("services", Services)
_operations: dict[Handler, str] = {}
_routes: list[tuple[str, str, Handler]] = []


def route(method: str, path: str, operation: str) -> Callable[[Handler], Handler]:
    """Register a handler under the SDK method name used for stats and events."""

    def register(handler: Handler) -> Handler:
        _operations[handler] = operation
        _routes.append((method, path, handler))
        return handler

    return register


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


# -- responses ----------------------------------------------------------------------------------
def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    payload = json.dumps(body, separators=(",", ":")).encode()
    return web.Response(
        status=status, body=payload, headers={"Content-Type": JSON_CONTENT_TYPE, **(headers or {})}
    )


def entity_headers(etag: str, last_modified: Any) -> dict[str, str]:
    return {"ETag": etag, "Last-Modified": format_http_date(last_modified)}


def created(request: web.Request, location: str, etag: str, last_modified: Any) -> web.Response:
    url = base_url(request) + location
    return web.Response(
        status=201, headers={**entity_headers(etag, last_modified), "Location": url, "DataServiceId": url}
    )


def error_response(request: web.Request, error: ServiceError, request_id: str) -> web.Response:
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(round(error.retry_after_s), 0))
    if request.method == "HEAD":
        return web.Response(status=error.status, headers=headers)
    body = error_body(base_url(request), error.code, error.message, request_id, error.values)
    return json_response(body, error.status, headers)


# -- middleware ---------------------------------------------------------------------------------
def _is_loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


@web.middleware
async def service_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth, faults, error mapping, request counting and one event per request."""
    started = time.perf_counter()
    request_id = str(uuid.uuid4())
    svc = services(request)
    route_info = request.match_info.route
    operation = (
        _operations.get(route_info.handler, "unknown")
        if request.match_info.http_exception is None
        else "unknown"
    )
    if request.path == STATS_PATH:
        if not _is_loopback(request):
            return web.Response(status=403, text="stats are served on loopback only")
        return json_response(stats_body(svc))
    try:
        response = await _dispatch(request, handler, svc, request_id)
    except ServiceError as error:
        response = error_response(request, error, request_id)
    except Exception:
        log.exception("request.crashed", operation=operation, method=request.method, path=request.path)
        response = error_response(
            request, ServiceError(500, "InternalError", "The emulator hit an internal error."), request_id
        )
    response.headers["request-id"] = request_id
    response.headers["DataServiceVersion"] = "3.0"
    client_request_id = request.headers.get("client-request-id")
    if client_request_id and request.headers.get("return-client-request-id", "").lower() == "true":
        response.headers["client-request-id"] = client_request_id
    svc.stats.requests[operation] += 1
    svc.stats.responses_by_status[str(response.status)] += 1
    log.info(
        "request.completed",
        operation=operation,
        method=request.method,
        path=request.path,
        status=response.status,
        duration_s=round(time.perf_counter() - started, 6),
        request_id=request_id,
    )
    return response


async def _dispatch(
    request: web.Request, handler: Handler, svc: Services, request_id: str
) -> web.StreamResponse:
    result = verify_shared_key(
        request.headers.get("Authorization"),
        request.method,
        request.raw_path.split("?", 1)[0],
        request.rel_url.raw_query_string,
        request.headers.items(),
        svc.account.name,
        svc.key,
    )
    if not result.ok:
        raise ServiceError(
            403,
            "AuthenticationFailed",
            "Server failed to authenticate the request. Make sure the value of the Authorization header "
            "is formed "
            "correctly including the signature.",
            {"AuthenticationErrorDetail": result.reason},
        )
    version = request.query.get("api-version")
    if not version:
        raise ServiceError(
            400,
            "MissingRequiredQueryParameter",
            "A query parameter that's mandatory for this request is not specified.",
            {"QueryParameterName": "api-version"},
        )
    if not is_known_api_version_form(version):
        raise ServiceError(
            400,
            "UnsupportedRequestVersion",
            f"The api-version {version!r} is not supported; use {API_VERSION}.",
        )
    exception = request.match_info.http_exception
    if exception is not None:
        if exception.status == 405:
            raise ServiceError(
                405, "UnsupportedHttpVerb", f"The {request.method} verb is not supported on this resource."
            )
        raise ServiceError(
            404, "ResourceNotFound", "The specified resource does not exist (or is not emulated)."
        )
    fault = svc.faults.request_fault(request.headers.get("client-request-id"))
    if fault is not None:
        svc.stats.faults_injected[str(fault.status)] += 1
        raise ServiceError(fault.status, fault.code, fault.message, retry_after_s=fault.retry_after_s)
    return await handler(request)


def stats_body(svc: Services) -> dict[str, Any]:
    faults = {key: svc.stats.faults_injected.get(key, 0) for key in ("503", "500", "429")}
    faults["preempt"] = svc.runner.preemptions
    return {
        "requests": dict(sorted(svc.stats.requests.items())),
        "requests_total": sum(svc.stats.requests.values()),
        "responses_by_status": dict(sorted(svc.stats.responses_by_status.items())),
        "faults_injected": faults,
        "tasks": {
            "added": svc.account.tasks_added,
            "completed": svc.account.tasks_completed,
            "running": svc.account.tasks_running,
        },
    }


# -- request helpers ----------------------------------------------------------------------------
async def read_json(request: web.Request, limit: int) -> Any:
    length = request.content_length
    if length is not None and length > limit:
        raise ServiceError(
            413, "RequestBodyTooLarge", f"The request body is larger than the limit of {limit} bytes."
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raw = b""
        length = limit + 1
    if len(raw) > limit or (length is not None and length > limit):
        raise ServiceError(
            413, "RequestBodyTooLarge", f"The request body is larger than the limit of {limit} bytes."
        )
    if not raw:
        raise ServiceError(400, "InvalidRequestBody", "The request body is empty; a JSON object is required.")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ServiceError(
            400, "InvalidRequestBody", f"The request body is not valid JSON: {exc.__class__.__name__}."
        ) from None


async def read_body(request: web.Request) -> dict[str, Any]:
    return validation.require_object(await read_json(request, services(request).limits.max_body_bytes))


def query_value(request: web.Request, name: str) -> str | None:
    """Query parameters are matched case-insensitively (`timeOut`, `maxresults`)."""
    lowered = name.lower()
    for key, value in request.query.items():
        if key.lower() == lowered:
            return value
    return None


def select_properties(request: web.Request) -> list[str] | None:
    value = query_value(request, "$select")
    if not value:
        return None
    return [name.strip() for name in value.split(",") if name.strip()]


def apply_select(body: dict[str, Any], selected: list[str] | None) -> dict[str, Any]:
    if selected is None:
        return body
    wanted = {name.lower() for name in selected}
    return {key: value for key, value in body.items() if key.lower() in wanted}


_filter_cache: dict[str, Node] = {}


def parsed_filter(request: web.Request, allowed: Sequence[str] | None) -> Node | None:
    text = query_value(request, "$filter")
    if not text:
        return None
    node = _filter_cache.get(text)
    try:
        if node is None:
            node = parse_filter(text)
            if len(_filter_cache) > 1000:
                _filter_cache.clear()
            _filter_cache[text] = node
        if allowed is not None:
            check_fields(node, allowed)
    except FilterError as exc:
        raise ServiceError(
            400,
            "InvalidQueryParameterValue",
            f"The value for $filter is not valid: {exc}",
            {"QueryParameterName": "$filter"},
        ) from None
    return node


def page_size(request: web.Request) -> int:
    value = query_value(request, "maxresults")
    if value is None:
        return MAX_PAGE
    try:
        size = int(value)
        if not 1 <= size <= MAX_PAGE:
            raise ValueError
    except ValueError:
        raise ServiceError(
            400,
            "InvalidQueryParameterValue",
            f"maxresults must be an integer from 1 to {MAX_PAGE}.",
            {"QueryParameterName": "maxresults"},
        ) from None
    return size


def paged(
    request: web.Request,
    items: Iterable[tuple[int, T]] | Callable[[int], Iterable[tuple[int, T]]],
    getter: Callable[[T], FieldGetter],
    render: Callable[[T], dict[str, Any]],
    allowed_filter_fields: Sequence[str] | None,
) -> web.Response:
    """One page of a list: filter, select and maxresults survive into `odata.nextLink` via `$skiptoken`.

    `items` yields (position, item) in increasing position; a callable gets the token and may skip
    straight past it (large task lists page in O(page), not O(all tasks)).
    """
    node = parsed_filter(request, allowed_filter_fields)
    size = page_size(request)
    selected = select_properties(request)
    token = query_value(request, "$skiptoken")
    try:
        after = int(token) if token else 0
    except ValueError:
        raise ServiceError(
            400, "InvalidQueryParameterValue", "The $skiptoken is not one this emulator issued."
        ) from None
    page: list[dict[str, Any]] = []
    next_token: int | None = None
    last_position = after
    for position, item in items(after) if callable(items) else items:
        if position <= after:
            continue
        if node is not None and not evaluate(node, getter(item)):
            continue
        if len(page) == size:
            next_token = last_position
            break
        page.append(apply_select(render(item), selected))
        last_position = position
    body: dict[str, Any] = {"odata.metadata": f"{base_url(request)}/$metadata#list", "value": page}
    if next_token is not None:
        params = {"api-version": query_value(request, "api-version") or API_VERSION, "maxresults": str(size)}
        for name in ("$filter", "$select", "$expand", "recursive"):
            value = query_value(request, name)
            if value:
                params[name] = value
        params["$skiptoken"] = str(next_token)
        body["odata.nextLink"] = f"{base_url(request)}{request.path}?{urlencode(params)}"
    return json_response(body)


# -- pools and nodes ----------------------------------------------------------------------------
@route("POST", "/pools", "create_pool")
async def create_pool(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    spec = validation.validate_pool(await read_body(request))
    pool = svc.account.add_pool(spec)
    svc.background.start_soon(svc.runner.provision_pool, pool, svc.limits.pool_allocation_delay_s)
    return created(request, f"/pools/{pool.id}", pool.etag, pool.last_modified)


@route("GET", "/pools", "list_pools")
async def list_pools(request: web.Request) -> web.StreamResponse:
    pools = list(services(request).account.pools.values())
    base = base_url(request)
    return paged(
        request,
        enumerate(pools, 1),
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
    svc.background.start_soon(svc.runner.remove_pool, pool)
    return web.Response(status=202)


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


@route("GET", "/supportedimages", "list_supported_images")
async def list_supported_images(request: web.Request) -> web.StreamResponse:
    images = json.loads(resources.files("emulator").joinpath("supported_images.json").read_text())
    return paged(request, enumerate(images, 1), dict_getter, lambda image: image, None)


# -- jobs ---------------------------------------------------------------------------------------
@route("POST", "/jobs", "create_job")
async def create_job(request: web.Request) -> web.StreamResponse:
    job = services(request).account.add_job(validation.validate_job(await read_body(request)))
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
    job = services(request).account.get_job(request.match_info["job_id"])
    return json_response({"taskCounts": job.counts.to_wire(), "taskSlotCounts": job.slot_counts.to_wire()})


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
    body = error_body(base_url(request), error.code, error.message, "addtaskcollection", error.values)
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


def _file_response(request: web.Request, root_and_url: tuple[Any, str], head: bool) -> web.StreamResponse:
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
    data = path.read_bytes()
    byte_range = files.parse_range(request.headers.get("ocp-range"), len(data))
    if byte_range is not None:
        data = data[byte_range[0] : byte_range[1] + 1]
    # 200 even for a range: the SDK's download methods accept no other status.
    return web.Response(status=200, body=data, headers=headers)


@route("GET", "/jobs/{job_id}/tasks/{task_id}/files", "list_task_files")
async def list_task_files(request: web.Request) -> web.StreamResponse:
    return _list_files(request, _task_root(request))


@route("GET", "/jobs/{job_id}/tasks/{task_id}/files/{file_path:.+}", "get_task_file")
async def get_task_file(request: web.Request) -> web.StreamResponse:
    return _file_response(request, _task_root(request), head=False)


@route("HEAD", "/jobs/{job_id}/tasks/{task_id}/files/{file_path:.+}", "get_task_file_properties")
async def get_task_file_properties(request: web.Request) -> web.StreamResponse:
    return _file_response(request, _task_root(request), head=True)


@route("GET", "/pools/{pool_id}/nodes/{node_id}/files", "list_node_files")
async def list_node_files(request: web.Request) -> web.StreamResponse:
    return _list_files(request, _node_root(request))


@route("GET", "/pools/{pool_id}/nodes/{node_id}/files/{file_path:.+}", "get_node_file")
async def get_node_file(request: web.Request) -> web.StreamResponse:
    return _file_response(request, _node_root(request), head=False)


@route("HEAD", "/pools/{pool_id}/nodes/{node_id}/files/{file_path:.+}", "get_node_file_properties")
async def get_node_file_properties(request: web.Request) -> web.StreamResponse:
    return _file_response(request, _node_root(request), head=True)


async def stats_handler(request: web.Request) -> web.StreamResponse:
    return json_response(stats_body(services(request)))


def build_app(svc: Services) -> web.Application:
    """The application; aiohttp's own body limit sits well above ours so we can answer with JSON 413s."""
    app = web.Application(
        middlewares=[service_middleware], client_max_size=svc.limits.max_body_bytes * 4 + (1 << 20)
    )
    app[SERVICES] = svc
    app.router.add_route("GET", STATS_PATH, stats_handler)
    for method, path, handler in _routes:
        app.router.add_route(method, path, handler)
    return app
