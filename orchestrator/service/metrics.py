"""The daemon's Prometheus metrics: in-memory counters the loop updates, read by `/metrics`.

One registry per daemon (not prometheus-client's global one), so tests can run several daemons in
one process. Labels are small closed sets (source, outcome, operation, status, node state); never a
file name or a run id, which would grow the series without bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# File complete → result on disk spans the micro-batch wait, a pool possibly at zero, and the run.
LATENCY_BUCKETS = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 300, 600, 1200, 1800, 3600)


def topn_version() -> str:
    try:
        return version("topn")
    except PackageNotFoundError:
        return "unknown"


# Read once at import (before any event loop): the lookup stats the file system.
TOPN_VERSION = topn_version()


class DaemonMetrics:
    """Every metric named in issue 12, registered on the daemon's own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.inputs_received = Counter(
            "topn_inputs_received", "Input files claimed from the inbox", ["source"], registry=registry
        )
        self.inputs_duplicate = Counter(
            "topn_inputs_duplicate", "Input files whose content was already claimed", registry=registry
        )
        self.inputs_failed = Counter("topn_inputs_failed", "Input files moved to failed/", registry=registry)
        self.batches = Counter("topn_batches", "Batches ended, by outcome", ["outcome"], registry=registry)
        self.batches_active = Gauge("topn_batches_active", "Batches running in Batch now", registry=registry)
        self.batches_waiting = Gauge(
            "topn_batches_waiting", "Batches waiting in the journal for a slot", registry=registry
        )
        self.inbox_pending = Gauge(
            "topn_inbox_pending", "Files seen in the inbox and not complete yet", registry=registry
        )
        self.tasks_completed = Counter(
            "topn_tasks_completed", "Batch tasks completed, by outcome", ["outcome"], registry=registry
        )
        self.batch_requests = Counter(
            "topn_batch_requests", "Requests sent to Batch", ["operation", "status"], registry=registry
        )
        self.storage_requests = Counter(
            "topn_storage_requests", "Requests sent to Storage", ["operation", "status"], registry=registry
        )
        self.pool_nodes = Gauge("topn_pool_nodes", "Pool nodes by state", ["state"], registry=registry)
        self.pool_target_nodes = Gauge(
            "topn_pool_target_nodes", "Pool's target node count", registry=registry
        )
        self.active_jobs = Gauge(
            "topn_active_jobs",
            # Not only topn's: every job the account's active-jobs quota counts.
            "Active and terminating jobs in the whole Batch account, topn's or not",
            registry=registry,
        )
        self.quota_refusals = Counter(
            "topn_quota_refusals",
            "Job creations refused by the active-jobs quota (the batch waits)",
            registry=registry,
        )
        self.input_latency = Histogram(
            "topn_input_latency_seconds",
            "File complete to result on disk",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_duration = Histogram(
            "topn_batch_duration_seconds",
            "One batch's run, start to end",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.sas_expiry = Gauge(
            "topn_sas_expiry_timestamp_seconds",
            "When the pool start task's script SAS expires",
            registry=registry,
        )
        self.build_info = Gauge("topn_build_info", "topn's version", ["version"], registry=registry)
        self.build_info.labels(version=TOPN_VERSION).set(1)
        for outcome in ("succeeded", "failed"):
            self.batches.labels(outcome=outcome)
            self.tasks_completed.labels(outcome=outcome)
        for source in ("watch", "rescan", "api"):
            self.inputs_received.labels(source=source)
        self._node_states_seen: set[str] = set()

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)

    def set_pool_nodes(self, nodes_by_state: Mapping[str, int]) -> None:
        """The pool's nodes by state now: every state exported before and absent now reads 0.

        Otherwise a state's last count would stay forever (idle nodes after a scale to zero), and the
        states would no longer add up to the pool's node count.
        """
        self._node_states_seen.update(nodes_by_state)
        for state in self._node_states_seen:
            self.pool_nodes.labels(state=state).set(nodes_by_state.get(state, 0))

    def count_requests(self, service: str, by_operation_status: dict[tuple[str, str], int]) -> None:
        """Add request counts (deltas) observed since the last call."""
        counter = self.batch_requests if service == "batch" else self.storage_requests
        for (operation, status), count in by_operation_status.items():
            if count:
                counter.labels(operation=operation, status=status).inc(count)
