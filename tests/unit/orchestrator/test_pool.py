"""Pool options and node classification (pure parts of orchestrator/azure/pool.py)."""

from __future__ import annotations

from azure.batch.models import BatchNode

from orchestrator.azure.nodefiles import stderr_tail
from orchestrator.azure.pool import classify_nodes, pool_create_options
from orchestrator.settings import PoolSettings


def test_fixed_size_pool_has_node_counts_and_an_admin_start_task_that_waits() -> None:
    options = pool_create_options(
        PoolSettings(dedicated_nodes=3, low_priority_nodes=2, task_slots_per_node=4),
        "https://x/node.pyz?sig=s",
        "cmd",
    )
    assert options.target_dedicated_nodes == 3 and options.target_low_priority_nodes == 2
    assert options.task_slots_per_node == 4 and not options.enable_auto_scale
    start = options.start_task
    assert start.wait_for_success and start.command_line == "cmd"
    assert start.user_identity.auto_user.elevation_level == "admin"
    assert start.resource_files[0].file_path == "node.pyz"


def test_autoscale_pool_sends_the_formula_instead_of_counts() -> None:
    options = pool_create_options(PoolSettings(autoscale_formula="$TargetDedicatedNodes = 2;"), "u", "c")
    assert options.enable_auto_scale and options.auto_scale_formula == "$TargetDedicatedNodes = 2;"
    assert options.target_dedicated_nodes is None


def test_nodes_are_sorted_into_usable_failed_and_unusable() -> None:
    nodes = [
        BatchNode(id=str(n), state=state)
        for n, state in enumerate(
            ["idle", "running", "starting", "starttaskfailed", "unusable", "waitingforstarttask"]
        )
    ]
    usable, failed, unusable = classify_nodes(nodes)
    assert [node.id for node in usable] == ["0", "1"]
    assert [node.id for node in failed] == ["3"] and [node.id for node in unusable] == ["4"]


def test_stderr_tail_keeps_the_last_lines_and_survives_bad_bytes() -> None:
    data = b"".join(f"line {n}\n".encode() for n in range(100)) + b"\xff bad byte\n"
    tail = stderr_tail(data, max_lines=3)
    assert tail.splitlines() == ["line 98", "line 99", "\ufffd bad byte"]
