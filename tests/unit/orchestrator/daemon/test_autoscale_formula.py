"""The daemon's autoscale settings (pure): the default formula's meaning, where it is shown, the pool
it creates, the interval Batch accepts, the runs' view of capacity and the autoscale error events.

The formula is evaluated with the emulator's formula evaluator, so these tests check what it asks
Batch for (targets, deallocation), not how it is spelled.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from emulator.formula_eval import PoolMetrics, Sample, evaluate
from orchestrator.azure.pool import Capacity, pool_create_options
from orchestrator.errors import ConfigError
from orchestrator.service.keeping import (
    DaemonPoolSupply,
    daemon_settings,
    default_formula,
    report_autoscale_error,
)
from orchestrator.service.poolkeeper import PoolKeeper
from orchestrator.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[4]
LOCAL = ROOT / "config" / "local.toml"
AZURE = ROOT / "config" / "azure.toml"
AZURE_KEYS = {"TOPN_BATCH_ACCOUNT_KEY": "a2V5", "TOPN_STORAGE_ACCOUNT_KEY": "a2V5"}
NOW_S = 100_000.0


def pending_history(values: list[float]) -> PoolMetrics:
    """`$PendingTasks` sampled every 30 s, the newest now, as a formula sees it."""
    count = len(values)
    samples = [
        Sample(NOW_S - 30.0 * (count - 1 - i), {"$PendingTasks": value}) for i, value in enumerate(values)
    ]
    return PoolMetrics(now_s=NOW_S, samples=samples, sample_period_s=30.0)


def targets(formula: str, pending: list[float]) -> tuple[int, int, str]:
    outcome = evaluate(formula, pending_history(pending))
    assert outcome.error is None, outcome.error
    return outcome.target_dedicated, outcome.target_low_priority, outcome.deallocation


def daemon_config(**variables: str) -> Settings:
    return load_settings(LOCAL, {"TOPN_DAEMON_AUTOSCALE": "true", **variables})


@pytest.mark.parametrize(
    ("pending", "nodes"),
    [
        ([0.0] * 6, 0),  # idle: no node
        ([0.0, 0.0, 5.0, 1.0, 0.0, 0.0], 3),  # the most pending over 3 minutes, 2 slots a node
        ([40.0] * 6, 4),  # never above max_nodes
        ([3.0] * 6, 2),  # pending counts running tasks too: a node is not taken from under them
    ],
)
def test_the_default_formula_asks_for_nodes_for_pending_tasks_and_drains_them(
    pending: list[float], nodes: int
) -> None:
    formula = default_formula(max_nodes=4, slots_per_node=2, low_priority=False)
    assert targets(formula, pending) == (nodes, 0, "taskcompletion")


def test_low_priority_asks_for_spot_nodes_only() -> None:
    formula = default_formula(max_nodes=4, slots_per_node=2, low_priority=True)
    assert targets(formula, [0.0, 5.0, 0.0]) == (0, 3, "taskcompletion")
    # From the setting through to the pool the daemon creates.
    settings = daemon_settings(daemon_config(TOPN_DAEMON_LOW_PRIORITY="true", TOPN_DAEMON_MAX_NODES="3"))
    options = pool_create_options(settings.pool, "https://a/b", "true", timedelta(minutes=7))
    assert options.enable_auto_scale and options.auto_scale_formula is not None
    assert targets(options.auto_scale_formula, [9.0]) == (0, 3, "taskcompletion")


def test_the_pool_is_created_with_the_configured_evaluation_interval() -> None:
    settings = daemon_settings(daemon_config(TOPN_DAEMON_AUTOSCALE_INTERVAL_S="420"))
    options = pool_create_options(settings.pool, "https://a/b", "true", timedelta(seconds=420))
    assert options.auto_scale_evaluation_interval == timedelta(minutes=7)
    assert options.target_dedicated_nodes is None  # the formula sizes it


@pytest.mark.parametrize("interval", ["60", "700000"])
def test_an_interval_batch_refuses_is_a_config_error_naming_the_key(interval: str) -> None:
    with pytest.raises(
        ConfigError, match=r"\[daemon\] autoscale_interval_s .*TOPN_DAEMON_AUTOSCALE_INTERVAL_S"
    ):
        daemon_settings(daemon_config(TOPN_DAEMON_AUTOSCALE_INTERVAL_S=interval))
    # Without autoscale the interval is not used, so it is not refused.
    daemon_settings(load_settings(LOCAL, {"TOPN_DAEMON_AUTOSCALE_INTERVAL_S": interval}))


def commented_formula(toml: str) -> str:
    block = re.search(r'^# autoscale_formula = """\n(.*?)"""$', toml, re.MULTILINE | re.DOTALL)
    assert block is not None, "config/azure.toml shows no commented autoscale_formula"
    return "\n".join(line.removeprefix("# ") for line in block.group(1).splitlines())


def test_the_azure_template_has_a_daemon_section_with_the_default_formula() -> None:
    template = load_settings(AZURE, AZURE_KEYS)
    assert template.daemon.autoscale and template.daemon.autoscale_formula is None  # the default applies
    shown = commented_formula(AZURE.read_text(encoding="utf-8"))
    daemon = template.daemon
    assert shown == default_formula(daemon.max_nodes, template.pool.task_slots_per_node, daemon.low_priority)
    # docs/daemon.md shows the same formula with placeholders for the two numbers.
    docs = (ROOT / "docs" / "daemon.md").read_text(encoding="utf-8")
    for line in shown.splitlines()[1:]:
        placeholder = line.replace(f"min({daemon.max_nodes},", "min(MAX_NODES,").replace(
            f"/ {template.pool.task_slots_per_node})", "/ TASK_SLOTS_PER_NODE)"
        )
        assert placeholder in docs, placeholder


class ZeroNodeKeeper:
    """A keeper whose pool has no node: its own view would size units for one node."""

    def planned_slots(self) -> int:
        return 2

    async def wait_usable(self) -> Capacity:
        raise AssertionError("an autoscaled pool at zero nodes must not be waited for")


async def test_units_are_sized_from_max_nodes_while_the_pool_has_zero_nodes() -> None:
    settings = daemon_settings(daemon_config(TOPN_DAEMON_MAX_NODES="5", TOPN_POOL_TASK_SLOTS_PER_NODE="3"))
    supply = DaemonPoolSupply(ZeroNodeKeeper(), settings)  # type: ignore[arg-type]
    assert supply.planned_slots() == 15
    assert await supply.wait_usable() == Capacity(usable_nodes=0, slots=15)
    fixed = DaemonPoolSupply(ZeroNodeKeeper(), load_settings(LOCAL, {}))  # type: ignore[arg-type]
    assert fixed.planned_slots() == 2  # without autoscale the keeper's own view


def test_a_failing_autoscale_run_is_reported_once_and_its_recovery_too() -> None:
    keeper = PoolKeeper.__new__(PoolKeeper)  # only its remembered error is used
    keeper.autoscale_error = None
    with capture_logs() as events:
        report_autoscale_error(keeper, "p", "InvalidFormula: bad")
        report_autoscale_error(keeper, "p", "InvalidFormula: bad")
        report_autoscale_error(keeper, "p", None)
        report_autoscale_error(keeper, "p", None)
    assert [(event["event"], event.get("error")) for event in events] == [
        ("pool.autoscale_error", "InvalidFormula: bad"),
        ("pool.autoscale_error_cleared", None),
    ]
