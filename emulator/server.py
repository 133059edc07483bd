"""The aiohttp application: SharedKey auth, faults, error mapping, stats and one event per request."""

from __future__ import annotations

import ipaddress
import time
import uuid
from typing import Any

import anyio
import structlog
from aiohttp import web

from emulator import handlers, node_agent_skus  # noqa: F401 (importing them registers every route)
from emulator.auth import verify_shared_key
from emulator.entra import EntraSettings, check_bearer
from emulator.rest import (
    OPERATIONS,
    REQUEST_ID,
    ROUTES,
    SERVICES,
    STATS_PATH,
    WIRE,
    Handler,
    Services,
    WireContext,
    downgraded,
    error_response,
    json_response,
    services,
)
from emulator.versions import adapter_for
from emulator.wire import ServiceError

log = structlog.get_logger("emulator")


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
    request[REQUEST_ID] = request_id
    svc = services(request)
    route_info = request.match_info.route
    operation = (
        OPERATIONS.get(route_info.handler, "unknown")
        if request.match_info.http_exception is None
        else "unknown"
    )
    if request.path == STATS_PATH:
        if not _is_loopback(request):
            return web.Response(status=403, text="stats are served on loopback only")
        return json_response(stats_body(svc))
    try:
        delay = svc.faults.settings.delay_of(operation)
        if delay:
            await anyio.sleep(delay)
        response = await _dispatch(request, handler, svc, operation)
    except ServiceError as error:
        wire = request.get(WIRE)
        if wire is not None:
            error = wire.adapter.error(error)
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
    request: web.Request, handler: Handler, svc: Services, operation: str
) -> web.StreamResponse:
    authorization = request.headers.get("Authorization") or ""
    if svc.entra is not None and authorization.lower().startswith("bearer "):
        _check_bearer(svc.entra, authorization, operation)  # a Microsoft Entra ID token instead
    else:
        _check_shared_key(request, svc)
    version = request.query.get("api-version")
    if not version:
        raise ServiceError(
            400,
            "MissingRequiredQueryParameter",
            "A query parameter that's mandatory for this request is not specified.",
            {"QueryParameterName": "api-version"},
        )
    wire = WireContext(adapter_for(version), operation)
    request[WIRE] = wire
    exception = request.match_info.http_exception
    if exception is not None:
        if exception.status == 405:
            raise ServiceError(
                405, "UnsupportedHttpVerb", f"The {request.method} verb is not supported on this resource."
            )
        raise ServiceError(
            404, "ResourceNotFound", "The specified resource does not exist (or is not emulated)."
        )
    wire.adapter.require_operation(operation)
    fault = svc.faults.request_fault(request.headers.get("client-request-id"))
    if fault is not None:
        svc.stats.faults_injected[str(fault.status)] += 1
        raise ServiceError(fault.status, fault.code, fault.message, retry_after_s=fault.retry_after_s)
    return downgraded(await handler(request), wire)


def _check_shared_key(request: web.Request, svc: Services) -> None:
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


def _check_bearer(entra: EntraSettings, authorization: str, operation: str) -> None:
    """A Microsoft Entra ID token (emulator/entra.py), and whether its identity may do `operation`."""
    checked = check_bearer(authorization, entra.key)
    if not checked.ok:
        code = (
            "InvalidAuthenticationTokenAudience" if "audience" in checked.reason else "AuthenticationFailed"
        )
        raise ServiceError(401, code, f"Server failed to authenticate the request: {checked.reason}.")
    if operation in entra.denied_operations:
        raise ServiceError(
            403,
            "AuthorizationPermissionMismatch",
            "This request is not authorized to perform this operation using this permission.",
        )


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


async def stats_handler(request: web.Request) -> web.StreamResponse:
    return json_response(stats_body(services(request)))


def build_app(svc: Services) -> web.Application:
    """The application; aiohttp's own body limit sits well above ours so we can answer with JSON 413s."""
    app = web.Application(
        middlewares=[service_middleware], client_max_size=svc.limits.max_body_bytes * 4 + (1 << 20)
    )
    app[SERVICES] = svc
    app.router.add_route("GET", STATS_PATH, stats_handler)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app
