"""REST plumbing the handlers share: services, the route registry, responses, request parsing, paging."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode

from aiohttp import web
from anyio.abc import TaskGroup

from emulator import validation
from emulator.countlag import CountHistory
from emulator.entra import EntraSettings
from emulator.faults import FaultInjector
from emulator.odata import FieldGetter, FilterError, Node, check_fields, evaluate, parse_filter
from emulator.runner import Runner
from emulator.state import Account
from emulator.versions import WireAdapter
from emulator.wire import (
    API_VERSION,
    ServiceError,
    error_body,
    format_http_date,
)

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
    reboot_start_task_failed: bool = True  # False: --refuse-start-task-failed-reboot
    # The service may answer fewer items than `maxresults` asks, with a next link: --max-page-size.
    max_page_size: int = MAX_PAGE
    pool_delete_delay_s: float = 0.0  # how long a deleted pool stays `deleting` before it is gone


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
    count_history: CountHistory = field(default_factory=CountHistory)  # --task-counts-lag-s
    entra: EntraSettings | None = None  # --entra-token-key-file: bearer tokens accepted too


@dataclass(frozen=True)
class WireContext:
    """The request's api-version adapter and operation, set by the middleware before the handler runs."""

    adapter: WireAdapter
    operation: str


SERVICES = web.AppKey("services", Services)
REQUEST_ID = web.RequestKey("request_id", str)
WIRE = web.RequestKey("wire", WireContext)
OPERATIONS: dict[Handler, str] = {}
ROUTES: list[tuple[str, str, Handler]] = []


def route(method: str, path: str, operation: str) -> Callable[[Handler], Handler]:
    """Register a handler under the SDK method name used for stats and events."""

    def register(handler: Handler) -> Handler:
        OPERATIONS[handler] = operation
        ROUTES.append((method, path, handler))
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
        # Retry-After carries whole seconds only (rounded up, so a client never retries early);
        # retry-after-ms, which azure-core reads first, keeps sub-second delays exact.
        headers["Retry-After"] = str(max(math.ceil(error.retry_after_s), 0))
        headers["retry-after-ms"] = str(max(round(error.retry_after_s * 1000), 0))
    if request.method == "HEAD":
        return web.Response(status=error.status, headers=headers)
    body = error_body(base_url(request), error.code, error.message, request_id, error.values)
    return json_response(body, error.status, headers)


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
    """The JSON object body, translated to the current api-version's shape."""
    body = validation.require_object(await read_json(request, services(request).limits.max_body_bytes))
    wire = request.get(WIRE)
    if wire is not None and not wire.adapter.is_current:
        body = wire.adapter.request(wire.operation, body)
    return body


def downgraded(response: web.StreamResponse, wire: WireContext) -> web.StreamResponse:
    """A JSON answer in the shape the request's (older) api-version reads."""
    if (
        wire.adapter.is_current
        or not isinstance(response, web.Response)
        or response.status != 200
        or response.content_type != "application/json"
        or not isinstance(response.body, bytes)
    ):
        return response
    body = json.loads(response.body)
    if isinstance(body, dict):
        response.body = json.dumps(wire.adapter.answer(wire.operation, body), separators=(",", ":")).encode()
    return response


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
    names = [name.strip() for name in value.split(",") if name.strip()]
    wire = request.get(WIRE)
    if wire is not None and not wire.adapter.is_current:
        names = [wire.adapter.current_name(name) for name in names]
    return names


def apply_select(body: dict[str, Any], selected: list[str] | None) -> dict[str, Any]:
    """Keep the selected top-level properties; `executionInfo/exitCode` keeps all of `executionInfo`."""
    if selected is None:
        return body
    wanted = {name.split("/", 1)[0].lower() for name in selected}
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
    """Items in one page: what `maxresults` asks (1 to 1,000), at most the emulator's page size."""
    value = query_value(request, "maxresults")
    if value is None:
        return services(request).limits.max_page_size
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
    return min(size, services(request).limits.max_page_size)


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
