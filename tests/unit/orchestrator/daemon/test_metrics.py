"""The daemon's Prometheus exposition: exact names, and gauges that say what is true now."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from orchestrator.service.metrics import DaemonMetrics


def samples(metrics: DaemonMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value, parsed from the text /metrics serves."""
    parsed: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            parsed[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return parsed


def value(metrics: DaemonMetrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, frozenset(labels.items()))]


def node_states(metrics: DaemonMetrics) -> dict[str, float]:
    return {
        dict(labels)["state"]: count
        for (name, labels), count in samples(metrics).items()
        if name == "topn_pool_nodes"
    }


def test_a_state_the_pool_no_longer_has_reads_zero_so_the_states_add_up_to_the_nodes() -> None:
    metrics = DaemonMetrics()
    metrics.set_pool_nodes({"idle": 3, "running": 2})
    assert node_states(metrics) == {"idle": 3, "running": 2}
    metrics.set_pool_nodes({"running": 1, "leavingpool": 1})
    assert node_states(metrics) == {"idle": 0, "running": 1, "leavingpool": 1}
    metrics.set_pool_nodes({})  # scaled to zero
    assert node_states(metrics) == {"idle": 0, "running": 0, "leavingpool": 0}
    assert sum(node_states(metrics).values()) == 0


def test_the_nine_gauges_and_histograms_are_exported_under_their_names() -> None:
    metrics = DaemonMetrics()
    metrics.batches_active.set(2)
    metrics.batches_waiting.set(5)
    metrics.inbox_pending.set(7)
    metrics.tasks_completed.labels(outcome="succeeded").inc(4)
    metrics.tasks_completed.labels(outcome="failed").inc()
    metrics.set_pool_nodes({"idle": 1})
    metrics.pool_target_nodes.set(3)
    metrics.active_jobs.set(11)
    metrics.batch_duration.observe(42.0)
    metrics.sas_expiry.set(1_800_000_000)
    assert value(metrics, "topn_batches_active") == 2
    assert value(metrics, "topn_batches_waiting") == 5
    assert value(metrics, "topn_inbox_pending") == 7
    assert value(metrics, "topn_tasks_completed_total", outcome="succeeded") == 4
    assert value(metrics, "topn_tasks_completed_total", outcome="failed") == 1
    assert value(metrics, "topn_pool_nodes", state="idle") == 1
    assert value(metrics, "topn_pool_target_nodes") == 3
    assert value(metrics, "topn_active_jobs") == 11
    assert value(metrics, "topn_batch_duration_seconds_count") == 1
    assert value(metrics, "topn_batch_duration_seconds_sum") == 42.0
    assert value(metrics, "topn_batch_duration_seconds_bucket", le="45.0") == 1
    assert value(metrics, "topn_batch_duration_seconds_bucket", le="30.0") == 0
    assert value(metrics, "topn_sas_expiry_timestamp_seconds") == 1_800_000_000


def test_the_active_jobs_help_says_it_counts_the_whole_account() -> None:
    text = DaemonMetrics().render().decode()
    (help_line,) = [line for line in text.splitlines() if line.startswith("# HELP topn_active_jobs ")]
    assert "whole Batch account" in help_line and "topn's or not" in help_line
