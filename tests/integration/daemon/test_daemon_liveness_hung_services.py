"""A daemon whose Batch or Storage hangs stays live and says it is not ready; its pool metrics are true.

The daemon runs in-process on the real emulator and Azurite, each reached through a TCP relay that
the test can make hang: it keeps accepting connections and reading requests but forwards nothing and
answers nothing, as a service behind a dead load balancer does. `/livez` must stay 200 well past its
bound (the heartbeat never waits for a service) while `/readyz` turns 503 and says which service did
not answer, and both come back when the service does. Before that, the pool gauges are compared with
what Batch itself says (nodes by state, target, the start task's SAS expiry, active jobs), through
a scale to zero.

The daemon's bounds are shortened for the test in the ratio they have in the daemon: a service check
(10 s there) may take longer than `/livez` lets the loop go without a heartbeat (10 s there).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import aiohttp
import anyio
import anyio.abc
import pytest
from azure.batch.aio import BatchClient
from azure.batch.models import BatchJobCreateOptions, BatchPoolInfo, BatchPoolResizeOptions
from azure.batch.models._models import BatchJobTerminateOptions  # not exported (SDK quirk)
from azure.core.credentials import AzureNamedKeyCredential
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.azure.retry import SDK_RETRY_KWARGS
from orchestrator.service import daemon as daemon_module
from orchestrator.service import health
from tests.conftest import BatchEndpoint, StartEmulator, StorageEndpoint
from tests.integration.daemon.support import daemon_settings_for, folders_under, running_daemon

pytestmark = pytest.mark.asyncio(loop_scope="session")

LIVENESS_BOUND_S = 1.5  # /livez's bound, 10 s in the daemon
CHECK_TIMEOUT_S = 2.0  # a pool view's or Storage check's bound, 10 s in the daemon
POOL_ID = "daemon-liveness"


class HangingRelay:
    """A TCP relay to a local service; `hang()` makes it swallow requests and never answer."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.hung = False
        self._swallowing: set[anyio.CancelScope] = set()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        async with listener:
            task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))  # noqa: S610
            await listener.serve(self._relay)

    def hang(self) -> None:
        self.hung = True

    def restore(self) -> None:
        """Answer again; connections that swallowed a request are closed (their client gave up on it)."""
        self.hung = False
        for scope in self._swallowing:
            scope.cancel()
        self._swallowing.clear()

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        with anyio.CancelScope() as scope:
            try:
                async with (
                    client,
                    await anyio.connect_tcp("127.0.0.1", self.target_port) as service,
                    anyio.create_task_group() as pumps,
                ):
                    pumps.start_soon(self._pump, client, service, scope)
                    pumps.start_soon(self._pump, service, client, scope)
            except OSError:
                pass
        self._swallowing.discard(scope)

    async def _pump(
        self, source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream, scope: anyio.CancelScope
    ) -> None:
        try:
            async for chunk in source:
                if self.hung:
                    self._swallowing.add(scope)
                    continue
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        scope.cancel()  # one side closed: so is the other


def with_port(endpoint: str, port: int) -> str:
    parts = urlsplit(endpoint)
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))


@asynccontextmanager
async def relays_for(
    batch: BatchEndpoint, storage: StorageEndpoint
) -> AsyncIterator[tuple[HangingRelay, HangingRelay, BatchEndpoint, StorageEndpoint]]:
    batch_relay = HangingRelay(urlsplit(batch.endpoint).port or 0)
    storage_relay = HangingRelay(urlsplit(storage.endpoint).port or 0)
    async with anyio.create_task_group() as group:
        batch_port = await group.start(batch_relay.serve)
        storage_port = await group.start(storage_relay.serve)
        try:
            yield (
                batch_relay,
                storage_relay,
                dataclasses.replace(batch, endpoint=with_port(batch.endpoint, batch_port)),
                dataclasses.replace(storage, endpoint=with_port(storage.endpoint, storage_port)),
            )
        finally:
            group.cancel_scope.cancel()


async def probe(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def node_series(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[str, float]:
    return {
        dict(labels)["state"]: value for (name, labels), value in samples.items() if name == "topn_pool_nodes"
    }


async def nodes_by_state(batch: BatchClient) -> Counter[str]:
    # The SDK's states are str enums: their value is the wire text ("idle"), as Batch sent it.
    states = [getattr(node.state, "value", node.state) async for node in batch.list_nodes(POOL_ID)]
    return Counter(str(state) for state in states)


async def eventually(check: Any, what: str, timeout_s: float = 20) -> Any:
    """Poll `check()` (async) until it returns something true."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await anyio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


async def probes_while_hung(url: str) -> tuple[set[int], Any]:
    """/livez statuses seen every 100 ms for twice its bound and until /readyz says 503 (at most 10 s).

    Returns the /livez statuses and the last /readyz body.
    """
    live_seen: set[int] = set()
    started = time.monotonic()
    while True:
        live_seen.add((await probe(f"{url}/livez"))[0])
        ready, body = await probe(f"{url}/readyz")
        elapsed = time.monotonic() - started
        if (ready == 503 and elapsed >= 2 * LIVENESS_BOUND_S) or elapsed > 10:
            return live_seen, body
        await anyio.sleep(0.1)


async def check_pool_metrics(url: str, batch: BatchClient) -> None:
    """The pool gauges against Batch's own answers, through a scale to zero."""

    async def nodes_agree() -> bool:
        states = await nodes_by_state(batch)
        shown = {state: count for state, count in node_series(await scrape(url)).items() if count}
        return states["idle"] >= 1 and shown == dict(states)

    await eventually(nodes_agree, "topn_pool_nodes to show the pool's idle node")
    pool = await batch.get_pool(POOL_ID)
    samples = await scrape(url)
    target = (pool.target_dedicated_nodes or 0) + (pool.target_low_priority_nodes or 0)
    assert target == 1 and samples[("topn_pool_target_nodes", frozenset())] == target
    assert pool.start_task is not None and pool.start_task.resource_files
    script_url = str(pool.start_task.resource_files[0].http_url)
    (expiry_text,) = parse_qs(urlsplit(script_url).query)["se"]
    sas_expiry = datetime.fromisoformat(expiry_text.replace("Z", "+00:00")).timestamp()
    assert abs(samples[("topn_sas_expiry_timestamp_seconds", frozenset())] - sas_expiry) <= 1.0

    # Jobs of anyone in the account count, topn's or not (the quota counts them all).
    others = [f"other-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    for job_id in others:
        await batch.create_job(BatchJobCreateOptions(id=job_id, pool_info=BatchPoolInfo(pool_id="elsewhere")))

    async def active_jobs(count: int) -> bool:
        return (await scrape(url)).get(("topn_active_jobs", frozenset())) == count

    await eventually(lambda: active_jobs(2), "topn_active_jobs to count the two jobs")
    # No tasks: it completes at once.
    await batch.begin_terminate_job(others[0], BatchJobTerminateOptions(termination_reason="test"))
    await eventually(lambda: active_jobs(1), "topn_active_jobs to drop the completed job")

    await batch.begin_resize_pool(POOL_ID, BatchPoolResizeOptions(target_dedicated_nodes=0))

    async def scaled_to_zero() -> bool:
        samples = await scrape(url)
        return (
            sum((await nodes_by_state(batch)).values()) == 0
            and node_series(samples).get("idle") == 0
            and sum(node_series(samples).values()) == 0
            and samples[("topn_pool_target_nodes", frozenset())] == 0
        )

    await eventually(scaled_to_zero, "the pool's idle node to leave topn_pool_nodes")


async def test_hung_services_fail_readiness_not_liveness_and_pool_metrics_follow_batch(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "LIVENESS_MIN_S", LIVENESS_BOUND_S)
    monkeypatch.setattr(daemon_module, "POOL_VIEW_EVERY_S", 0.5)
    monkeypatch.setattr(daemon_module, "TIDY_EVERY_S", 0.5)
    monkeypatch.setattr(daemon_module, "REACHABILITY_TIMEOUT_S", CHECK_TIMEOUT_S, raising=False)
    emulator = await start_emulator()
    credential = AzureNamedKeyCredential(emulator.account_name, emulator.account_key)
    async with (
        relays_for(emulator, azurite) as (batch_relay, storage_relay, batch_via, storage_via),
        BatchClient(emulator.endpoint, credential, **SDK_RETRY_KWARGS) as batch,
    ):
        settings = daemon_settings_for(batch_via, storage_via, tmp_path / "state", POOL_ID)
        async with running_daemon(settings, folders_under(tmp_path)) as daemon:
            url = daemon.state.listen_url
            assert url is not None
            try:
                await check_pool_metrics(url, batch)

                for relay, down, up in (
                    (batch_relay, "batch_reachable", "storage_reachable"),
                    (storage_relay, "storage_reachable", "batch_reachable"),
                ):
                    assert (await probe(f"{url}/readyz"))[0] == 200
                    relay.hang()
                    live_seen, body = await probes_while_hung(url)
                    assert live_seen == {200}, f"/livez failed while {down} was hung"
                    assert body["ready"] is False and body[down] is False and body[up] is True, body
                    relay.restore()
                    await eventually(
                        lambda: _ready(url), f"/readyz to come back once {down} answers", timeout_s=15
                    )
            finally:
                batch_relay.restore()
                storage_relay.restore()


async def _ready(url: str) -> bool:
    return (await probe(f"{url}/readyz"))[0] == 200
