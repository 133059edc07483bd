"""The autoscale formula language: tokenizer, parser and evaluator (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulator.formula import (
    EVALUATION_ERROR,
    INSUFFICIENT_SAMPLES,
    NOT_EMULATED,
    SYNTAX_ERROR,
    FormulaError,
    Statement,
    parse,
    tokenize,
)
from emulator.formula_eval import Interval, PoolMetrics, Sample, evaluate, format_value

PERIOD = 30.0


def history(metric: str, values: list[float], now: float = 10_000.0) -> list[Sample]:
    """Samples of one metric every 30 s, oldest first, the newest taken at `now`."""
    count = len(values)
    return [Sample(now - PERIOD * (count - 1 - i), {metric: value}) for i, value in enumerate(values)]


def metrics(samples: list[Sample] | None = None, **kwargs: object) -> PoolMetrics:
    return PoolMetrics(now_s=10_000.0, samples=samples or [], **kwargs)  # type: ignore[arg-type]


def error_of(formula: str, pool: PoolMetrics | None = None) -> FormulaError:
    outcome = evaluate(formula, pool or metrics())
    assert outcome.error is not None, outcome.results
    return outcome.error


# -- tokenizer and parser -----------------------------------------------------------------------
def test_comments_line_breaks_and_semicolons_are_handled() -> None:
    statements = parse("// comment\n$a = 1; /* block\n comment */ b = 2;;\n c = 3")
    assert [statement.target for statement in statements] == ["$a", "b", "c"]
    assert statements[2].line == 4 and statements[2].column == 2


def test_tokens_carry_line_and_column() -> None:
    tokens = tokenize("a = 1;\n  $b=2.5e1")
    assert [(token.text, token.line, token.column) for token in tokens[:5]] == [
        ("a", 1, 1),
        ("=", 1, 3),
        ("1", 1, 5),
        (";", 1, 6),
        ("$b", 2, 3),
    ]


@pytest.mark.parametrize(
    ("formula", "detail"),
    [
        ("$TargetDedicatedNodes = (1;", "Line 1, Col 27: expected ')' but found ';'"),
        ("a = 1\nb = 2", "Line 2, Col 1: expected ';' but found 'b'"),
        ("a = 1 +", "Line 1, Col 8: expected a number, a name or '(' but found the end of the formula"),
        ("a = 1 # 2", "Line 1, Col 7: unexpected character '#'"),
        ("a = 1; /* open", "Line 1, Col 8: unterminated comment"),
        ("a = $x.;", "Line 1, Col 8: expected a method name after '.' but found ';'"),
    ],
)
def test_syntax_errors_say_where(formula: str, detail: str) -> None:
    with pytest.raises(FormulaError) as error:
        parse(formula)
    assert (error.value.code, error.value.detail) == (SYNTAX_ERROR, detail)
    wire = error.value.to_wire()
    assert wire["values"] == [{"name": "Message", "value": detail}]


def test_a_formula_longer_than_the_service_allows_is_refused() -> None:
    with pytest.raises(FormulaError):
        parse("a = 1;" * 2000)


@given(st.text(max_size=60))
def test_any_text_parses_or_raises_a_formula_error(text: str) -> None:
    try:
        statements = parse(text)
    except FormulaError as error:
        assert error.code == SYNTAX_ERROR and error.detail.startswith("Line ")
    else:
        assert all(isinstance(statement, Statement) for statement in statements)


# -- evaluation ---------------------------------------------------------------------------------
def test_the_documented_pending_tasks_formula() -> None:
    formula = """
        startingNumberOfVMs = 1;
        maxNumberofVMs = 25;
        pendingTaskSamplePercent = $PendingTasks.GetSamplePercent(180 * TimeInterval_Second);
        pendingTaskSamples = pendingTaskSamplePercent < 70 ? startingNumberOfVMs :
            avg($PendingTasks.GetSample(180 * TimeInterval_Second));
        $TargetDedicatedNodes=min(maxNumberofVMs, pendingTaskSamples);
        $NodeDeallocationOption = taskcompletion;
    """
    # Seven samples cover 180 s: the average of the last 180 s is (30+...+90)/7 rounded down to nodes.
    busy = metrics(history("$PendingTasks", [0, 30, 40, 50, 60, 70, 80, 90]))
    outcome = evaluate(formula, busy)
    assert outcome.error is None
    assert (outcome.target_dedicated, outcome.deallocation) == (25, "taskcompletion")
    assert outcome.results == (
        "$TargetDedicatedNodes=25;$TargetLowPriorityNodes=0;$NodeDeallocationOption=taskcompletion;"
        "maxNumberofVMs=25;pendingTaskSamplePercent=100;pendingTaskSamples=60;startingNumberOfVMs=1"
    )
    # Too few samples: the formula falls back to one node.
    assert evaluate(formula, metrics(history("$PendingTasks", [90, 90]))).target_dedicated == 1


def test_the_documented_task_based_formula_with_its_own_target_and_halving() -> None:
    formula = """
        $samples = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 15);
        $tasks = $samples < 70 ? max(0,$PendingTasks.GetSample(1)) :
            max( $PendingTasks.GetSample(1), avg($PendingTasks.GetSample(TimeInterval_Minute * 15)));
        $targetVMs = $tasks > 0? $tasks:max(0, $TargetDedicatedNodes/2);
        $TargetDedicatedNodes = max(0, min($targetVMs, 20));
        $NodeDeallocationOption = taskcompletion;
    """
    idle = metrics(history("$PendingTasks", [0.0] * 31), target_dedicated=6)
    outcome = evaluate(formula, idle)
    assert outcome.target_dedicated == 3
    assert outcome.results.endswith(";$samples=100;$targetVMs=3;$tasks=0")


def test_preempted_nodes_formula_with_low_priority_targets() -> None:
    formula = """
        maxNumberofVMs = 25;
        $TargetDedicatedNodes = min(maxNumberofVMs, $PreemptedNodeCount.GetSample(180 * TimeInterval_Second));
        $TargetLowPriorityNodes = min(maxNumberofVMs , maxNumberofVMs - $TargetDedicatedNodes);
    """
    outcome = evaluate(formula, metrics(history("$PreemptedNodeCount", [0, 2, 3])))
    assert (outcome.target_dedicated, outcome.target_low_priority) == (0, 25)


def test_node_counts_read_bare_and_the_aliases_lose_to_full_names() -> None:
    pool = metrics(current={"$CurrentDedicatedNodes": 4.0, "$CurrentLowPriorityNodes": 1.0})
    outcome = evaluate(
        "$TargetDedicatedNodes = $CurrentDedicatedNodes * 0.9; $TargetDedicated = 9; $TargetLowPriority = 2;",
        pool,
    )
    assert (outcome.target_dedicated, outcome.target_low_priority) == (3, 2)


@pytest.mark.parametrize(
    ("formula", "value"),
    [
        ("x = 7 - 2 * 3;", "1"),
        ("x = (7 - 2) * 3;", "15"),
        ("x = -2 + !0;", "-1"),
        ("x = 1 < 2 && 2 <= 2 && 3 > 2 && 3 >= 4 || 5 == 5 && 5 != 6;", "1"),
        ("x = 0 ? 1 : 0 ? 2 : 3;", "3"),
        ("x = ceil(2.1) + floor(2.9);", "5"),
        ("x = sum(1, 2, 3) / len(1, 2, 3, 4);", "1.5"),
        ("x = TimeInterval_Hour * 2 + TimeInterval_Minute;", "02:01:00"),
        ("x = TimeInterval_Day * 1.5;", "1.12:00:00"),
        ("x = TimeInterval_Minute < TimeInterval_Hour;", "1"),
        ("x = 1 / 3;", "0.333333"),
        ("x = requeue;", "requeue"),
    ],
)
def test_operators_and_functions(formula: str, value: str) -> None:
    results = evaluate(formula, metrics()).results
    assert results.endswith(f";x={value}")


def test_vectors_combine_component_wise() -> None:
    pool = metrics(history("$ActiveTasks", [1, 2, 3]))
    results = evaluate("v = $ActiveTasks.GetSample(3) * 2 + 1;", pool).results
    assert results.endswith(";v=[3,5,7]")


def test_get_sample_windows_and_percentages() -> None:
    pool = metrics(history("$RunningTasks", [5, 6, 7, 8]))  # taken 90, 60, 30 and 0 s ago
    outcome = evaluate(
        "a = $RunningTasks.GetSample(TimeInterval_Second * 60);"
        "b = $RunningTasks.GetSample(TimeInterval_Second * 30, TimeInterval_Second * 90);"
        "c = $RunningTasks.GetSamplePercent(TimeInterval_Minute * 10);"
        "d = $RunningTasks.GetSample(2);",
        pool,
    )
    assert outcome.results.endswith(";a=[6,7,8];b=[5,6,7];c=20;d=[7,8]")


@pytest.mark.parametrize(
    ("formula", "code", "detail"),
    [
        (
            "$TargetDedicatedNodes = $CPUPercent.GetSample(1);",
            NOT_EMULATED,
            "Line 1, Col 25: $CPUPercent is not",
        ),
        ("x = 0 ? time() : 1;", NOT_EMULATED, "Line 1, Col 9: the function time() is not emulated"),
        ("x = $PendingTasks.Count();", NOT_EMULATED, "the method Count() is not emulated"),
        ("$MemoryBytes = 3;", NOT_EMULATED, "$MemoryBytes is not emulated"),
        ("x = y + 1;", EVALUATION_ERROR, "Line 1, Col 5: y is not defined"),
        ("x = avg($PendingTasks);", EVALUATION_ERROR, "$PendingTasks is a set of samples"),
        ("$PendingTasks = 3;", EVALUATION_ERROR, "$PendingTasks is read-only"),
        ("x = frobnicate(1);", EVALUATION_ERROR, "frobnicate() is not a function"),
        ("x = 1 / 0;", EVALUATION_ERROR, "division by zero"),
        ("x = TimeInterval_Minute + 1;", EVALUATION_ERROR, "does not apply to a time interval and a number"),
        ("$TargetDedicatedNodes = -1;", EVALUATION_ERROR, "must be a number of nodes"),
        ("$NodeDeallocationOption = 3;", EVALUATION_ERROR, "must be one of requeue"),
        ("x = avg($PendingTasks.GetSample(TimeInterval_Minute));", EVALUATION_ERROR, "of an empty list"),
        (
            "x = $PendingTasks.GetSample(1);",
            INSUFFICIENT_SAMPLES,
            "$PendingTasks wanted 1 samples, received 0",
        ),
        (
            "x = $PendingTasks.GetSample(TimeInterval_Minute * 5, 70);",
            INSUFFICIENT_SAMPLES,
            "Line 1, Col 5: Insufficient data from data set: $PendingTasks wanted 70%, received 0%",
        ),
    ],
)
def test_errors_name_what_failed_and_leave_the_targets(formula: str, code: str, detail: str) -> None:
    pool = metrics(target_dedicated=3, target_low_priority=1)
    outcome = evaluate(formula, pool)
    assert outcome.error is not None
    assert outcome.error.code == code
    assert detail in outcome.error.detail
    assert (outcome.target_dedicated, outcome.target_low_priority, outcome.deallocation) == (3, 1, "requeue")
    assert (
        outcome.results == "$TargetDedicatedNodes=3;$TargetLowPriorityNodes=1;$NodeDeallocationOption=requeue"
    )


def test_insufficient_samples_is_the_services_error_shape() -> None:
    wire = error_of("x = $RunningTasks.GetSample(TimeInterval_Minute * 10, 95);").to_wire()
    assert wire["code"] == "InsufficientSampleData"
    assert wire["message"] == "Autoscale evaluation failed due to insufficient sample data"


def test_format_value_shapes() -> None:
    assert [format_value(value) for value in (2.0, 96.66666, 1e20, (1.0, 2.5), Interval(59.0))] == [
        "2",
        "96.6667",
        "1e+20",
        "[1,2.5]",
        "00:00:59",
    ]


small_ints = st.integers(min_value=-50, max_value=50)


@st.composite
def arithmetic(draw: st.DrawFn, depth: int = 3) -> str:
    """A random + - * expression of small integers with parentheses."""
    if depth == 0 or draw(st.booleans()):
        number = draw(small_ints)
        return f"({number})" if number < 0 else str(number)
    op = draw(st.sampled_from(["+", "-", "*"]))
    return f"({draw(arithmetic(depth - 1))} {op} {draw(arithmetic(depth - 1))})"


@given(arithmetic())
def test_arithmetic_agrees_with_python(expression: str) -> None:
    expected = eval(expression)  # noqa: S307 (the expression is our own generated integer arithmetic)
    outcome = evaluate(f"x = {expression};", metrics())
    assert outcome.error is None
    assert outcome.results.endswith(f";x={expected}")


@given(st.lists(st.integers(min_value=0, max_value=500), min_size=1, max_size=40), st.integers(1, 30))
def test_targets_follow_the_last_sample_and_are_whole_non_negative_nodes(values: list[int], cap: int) -> None:
    pool = metrics(history("$ActiveTasks", [float(value) for value in values]))
    outcome = evaluate(f"$TargetDedicatedNodes = min({cap}, $ActiveTasks.GetSample(1)) / 2;", pool)
    assert outcome.error is None
    assert outcome.target_dedicated == int(min(cap, values[-1]) / 2) >= 0


@given(st.lists(st.booleans(), max_size=40), st.integers(min_value=1, max_value=30))
def test_sample_percent_counts_the_samples_in_the_window(present: list[bool], minutes: int) -> None:
    """Dropped samples lower the percentage; it never exceeds 100."""
    now = 10_000.0
    samples = [
        Sample(now - PERIOD * (len(present) - 1 - i), {"$ActiveTasks": 1.0})
        for i, kept in enumerate(present)
        if kept
    ]
    outcome = evaluate(
        f"p = $ActiveTasks.GetSamplePercent(TimeInterval_Minute * {minutes});", metrics(samples)
    )
    window_s = minutes * 60.0
    in_window = sum(1 for sample in samples if now - window_s <= sample.time_s)
    expected = min(100.0, 100.0 * in_window / (window_s / PERIOD))
    assert outcome.results.endswith(f";p={format_value(expected)}")
