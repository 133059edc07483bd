"""Seeded fault decisions: deterministic, transient, within their fractions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.faults import FaultInjector, FaultSettings


def test_off_by_default() -> None:
    injector = FaultInjector(FaultSettings())
    assert all(injector.request_fault(f"id-{n}") is None for n in range(1000))
    assert not injector.should_preempt("j", "t")
    assert not injector.task_fails("anything")
    assert not injector.start_task_fails(0)


def test_same_seed_same_faults() -> None:
    settings_ = FaultSettings(seed=4, fraction_503=0.2, fraction_500=0.1, fraction_429=0.1)
    one, two = FaultInjector(settings_), FaultInjector(settings_)
    first = [one.request_fault(f"r{n}") for n in range(300)]
    second = [two.request_fault(f"r{n}") for n in range(300)]
    assert first == second
    assert {fault.status for fault in first if fault is not None} == {503, 500, 429}
    other = FaultInjector(FaultSettings(seed=5, fraction_503=0.2, fraction_500=0.1, fraction_429=0.1))
    assert [other.request_fault(f"r{n}") for n in range(300)] != first


def test_429_carries_retry_after() -> None:
    injector = FaultInjector(FaultSettings(fraction_429=0.9, retry_after_s=2.5))
    faults = [injector.request_fault(f"r{n}") for n in range(50)]
    assert any(fault is not None for fault in faults)
    assert all(fault.retry_after_s == 2.5 and fault.code == "TooManyRequests" for fault in faults if fault)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 0.9))
def test_a_retried_request_always_passes(seed: int, fraction: float) -> None:
    injector = FaultInjector(FaultSettings(seed=seed, fraction_503=fraction))
    for n in range(40):
        if injector.request_fault(f"req-{n}") is not None:
            assert injector.request_fault(f"req-{n}") is None


def test_fraction_is_roughly_honoured() -> None:
    injector = FaultInjector(FaultSettings(seed=1, fraction_500=0.25))
    hits = sum(injector.request_fault(f"r{n}") is not None for n in range(4000))
    assert 800 < hits < 1200


def test_preemption_at_most_once_per_task_and_start_task_failures() -> None:
    injector = FaultInjector(FaultSettings(seed=2, preempt_fraction=0.99))
    assert injector.should_preempt("job", "Task")
    assert not injector.should_preempt("job", "task")
    failing = FaultInjector(FaultSettings(start_task_failures=2))
    assert [failing.start_task_fails(index) for index in range(4)] == [True, True, False, False]


def test_task_fail_match_and_problems() -> None:
    injector = FaultInjector(FaultSettings(task_fail_match="bad.txt"))
    assert injector.task_fails("python3 node.pyz --filepath in/bad.txt")
    assert not injector.task_fails("python3 node.pyz --filepath in/good.txt")
    assert FaultSettings().problems() == []
    problems = FaultSettings(fraction_503=0.6, fraction_500=0.5, task_fail_exit_code=300).problems()
    assert any("below 1" in problem for problem in problems)
    assert any("exit status" in problem for problem in problems)
    assert FaultSettings(fraction_429=1.0).problems()


def test_slow_operations_are_held_by_name_and_bounded() -> None:
    settings = FaultSettings(slow_operations=(("update_job", 2.5), ("list_tasks", 0.25)))
    assert [settings.delay_of(name) for name in ("update_job", "list_tasks", "get_job")] == [2.5, 0.25, 0.0]
    assert settings.problems() == []
    too_slow = FaultSettings(slow_operations=(("update_job", 61.0),))
    assert too_slow.problems() == ["--fault-slow update_job=61: the delay must be from 0 to 60 seconds"]
