"""The daemon's HTTP side (aiohttp): probes, Prometheus metrics, the runs API and the status page.

`/livez` reads the heartbeat the main loop writes, so a wedged loop fails it even though this
handler is happy (a slow Batch or Storage does not: their calls run off the loop); `/readyz` is
true only after recovery, with Batch and Storage answering the daemon's periodic checks, the pool
free of resize errors, and not while draining. `/metrics` renders the in-memory counters (never a
journal scan). Loopback by default; any other address needs `TOPN_DAEMON_TOKEN`, which every
request but the probes must then carry as `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from aiohttp import web
from anyio.abc import TaskStatus

from orchestrator.errors import ConfigError
from orchestrator.results import read_summary
from orchestrator.service.statuspage import render_status_page

if TYPE_CHECKING:
    from orchestrator.service.daemon import Daemon

TOKEN_VARIABLE = "TOPN_DAEMON_TOKEN"  # noqa: S105 - the variable's name, not a token
LIVENESS_MIN_S = 10.0
LIVENESS_HEARTBEATS = 5
RUNS_LISTED = 100
PROBES = frozenset({"/livez", "/readyz"})


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def required_token(host: str, environ: dict[str, str] | os._Environ[str]) -> str | None:
    """The bearer token requests must carry (None on loopback); a public address without one is refused."""
    if is_loopback(host):
        return None
    token = environ.get(TOKEN_VARIABLE, "")
    if len(token) < 16:
        raise ConfigError(
            f"--listen {host} is not a loopback address: set {TOKEN_VARIABLE} to a bearer token of at "
            "least 16 characters (or listen on 127.0.0.1)"
        )
    return token


def liveness_bound_s(heartbeat_s: float) -> float:
    return max(LIVENESS_MIN_S, LIVENESS_HEARTBEATS * heartbeat_s)


def build_app(daemon: Daemon, token: str | None) -> web.Application:
    @web.middleware
    async def authorize(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if token is not None and request.path not in PROBES:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return web.json_response({"error": "a bearer token is required"}, status=401)
        return await handler(request)

    app = web.Application(middlewares=[authorize])
    handlers = _Handlers(daemon)
    app.router.add_get("/livez", handlers.livez)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/v1/runs", handlers.list_runs)
    app.router.add_post("/v1/runs", handlers.submit_run)
    app.router.add_get("/v1/runs/{run_id}", handlers.get_run)
    app.router.add_get("/", handlers.status_page)
    return app


class _Handlers:
    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    async def livez(self, _request: web.Request) -> web.Response:
        state = self._daemon.state
        bound = liveness_bound_s(self._daemon.services.settings.daemon.heartbeat_s)
        age = None if state.heartbeat_at is None else time.monotonic() - state.heartbeat_at
        # Before the loop's first iteration (start-up, recovery) the process counts as alive.
        alive = age is None or age <= bound
        body = {"alive": alive, "heartbeat_age_s": None if age is None else round(age, 3)}
        return web.json_response(body, status=200 if alive else 503)

    async def readyz(self, _request: web.Request) -> web.Response:
        state = self._daemon.state
        body = {
            "ready": state.ready,
            "recovered": state.recovered,
            "draining": state.draining,
            "pool_resize_errors": state.pool_resize_errors,
            "services_reachable": state.services_reachable,
            "batch_reachable": state.batch_reachable,
            "storage_reachable": state.storage_reachable,
        }
        return web.json_response(body, status=200 if state.ready else 503)

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self._daemon.metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def list_runs(self, _request: web.Request) -> web.Response:
        return web.json_response({"runs": await self._runs()})

    async def get_run(self, request: web.Request) -> web.Response:
        run = await self._run(request.match_info["run_id"])
        if run is None:
            return web.json_response({"error": "no such run"}, status=404)
        return web.json_response(run)

    async def submit_run(self, request: web.Request) -> web.Response:
        daemon = self._daemon
        if not daemon.state.ready:
            return web.json_response({"error": "not ready (starting or draining)"}, status=503)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": 'the body must be JSON: {"paths": [...]}'}, status=400)
        paths = body.get("paths") if isinstance(body, dict) else None
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
            return web.json_response({"error": '"paths" must be a non-empty list of file paths'}, status=400)
        files = [Path(p) for p in paths]
        missing = [str(p) for p in files if not p.is_absolute() or not await anyio.Path(p).is_file()]
        if missing:
            return web.json_response(
                {"error": "not absolute paths of files", "paths": missing[:20]}, status=400
            )
        try:
            run_id = await daemon.submit(files)
        except ValueError as error:
            return web.json_response({"error": str(error)}, status=409)
        return web.json_response({"run_id": run_id, "url": f"/v1/runs/{run_id}"}, status=202)

    async def status_page(self, _request: web.Request) -> web.Response:
        page = render_status_page(self._daemon.state, await self._runs(limit=20), time.time())
        return web.Response(text=page, content_type="text/html", charset="utf-8")

    async def _runs(self, limit: int = RUNS_LISTED) -> list[dict[str, Any]]:
        daemon = self._daemon
        batches = await daemon.store.batches(limit=limit)
        runs = []
        for batch in batches:
            runs.append(await self._describe(batch.batch_id, batch.state, batch.files, batch.outcome))
        return runs

    async def _run(self, run_id: str) -> dict[str, Any] | None:
        batch = await self._daemon.store.batch(run_id)
        if batch is None:
            return None
        described = await self._describe(batch.batch_id, batch.state, batch.files, batch.outcome)
        files = await self._daemon.store.batch_files(run_id)
        described["failures"] = [
            {"path": item.relpath, "reason": (item.error or {}).get("reason")}
            for item in files
            if item.state == "failed"
        ]
        return described

    async def _describe(self, run_id: str, state: str, files: int, outcome: str | None) -> dict[str, Any]:
        daemon = self._daemon
        progress = daemon.state.in_flight.get(run_id)
        out_dir = daemon.folders.outbox / run_id
        described: dict[str, Any] = {
            "run_id": run_id,
            "state": state,
            "outcome": outcome,
            "files": files,
            "summary": str(out_dir / "summary.json") if state == "finished" else None,
        }
        if progress is not None:
            described["progress"] = {"stage": progress.stage, "done": progress.done, "total": progress.total}
        if state == "finished":
            described["top"] = await daemon.cached_top(run_id, out_dir)
        return described


async def read_top(out_dir: Path, count: int = 5) -> list[list[Any]]:
    """The run-level top words of a finished run's summary.json (empty when it cannot be read)."""
    try:
        summary = await anyio.to_thread.run_sync(read_summary, out_dir)
    except (OSError, ValueError):
        return []
    return [list(pair) for pair in summary.get("top", [])[:count]]


async def serve_health(
    daemon: Daemon, listen: str, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; `task_status.started(url)` once bound (a bind error reaches the starter)."""
    host, port = split_listen(listen)
    token = required_token(host, os.environ)
    runner = web.AppRunner(
        build_app(daemon, token), access_log=None, handle_signals=False, shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as error:
            raise ConfigError(f"cannot listen on {listen}: {error.strerror}; pass another --listen") from None
        bound = runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in str(bound[0]) else str(bound[0])
        task_status.started(f"http://{shown}:{bound[1]}")
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
