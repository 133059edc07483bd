"""The `$filter` parser and evaluator: examples, errors, and generated expressions with a Python oracle."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.odata import (
    And,
    Comparison,
    FilterError,
    FunctionCall,
    Not,
    Or,
    check_fields,
    dict_getter,
    evaluate,
    parse_filter,
)

TASK = {
    "id": "t007",
    "state": "completed",
    "stateTransitionTime": "2026-01-02T03:04:05.123456Z",
    "executionInfo": {"result": "failure", "exitCode": 3, "retryCount": 1},
}


def matches(text: str, resource: dict[str, Any] = TASK) -> bool:
    return evaluate(parse_filter(text), dict_getter(resource))


def test_parses_the_shapes_batch_filters_use() -> None:
    assert parse_filter("state eq 'completed'") == Comparison("state", "eq", "completed")
    assert parse_filter("executionInfo/exitCode ne 0") == Comparison("executionInfo/exitCode", "ne", 0)
    assert parse_filter("startswith(id,'t0')") == FunctionCall("startswith", "id", "t0")
    assert parse_filter("id eq 'it''s'") == Comparison("id", "eq", "it's")
    assert parse_filter("a eq 1 or b eq 2 and c eq 3") == Or(
        Comparison("a", "eq", 1), And(Comparison("b", "eq", 2), Comparison("c", "eq", 3))
    )
    assert parse_filter("(a eq 1 or b eq 2) and not c eq 3") == And(
        Or(Comparison("a", "eq", 1), Comparison("b", "eq", 2)), Not(Comparison("c", "eq", 3))
    )
    assert parse_filter("stateTransitionTime gt datetime'2026-01-01T00:00:00Z'") == Comparison(
        "stateTransitionTime", "gt", datetime(2026, 1, 1, tzinfo=UTC)
    )
    assert parse_filter("STATE EQ 'active' AND id NE 'x'") == And(
        Comparison("STATE", "eq", "active"), Comparison("id", "ne", "x")
    )


def test_evaluates_against_task_json() -> None:
    assert matches("state eq 'completed'")
    assert matches("state eq 'Completed'")  # enum values compare case-insensitively, as in the service
    assert not matches("state ne 'completed'")
    assert matches("executionInfo/result eq 'failure' and executionInfo/exitCode ge 3")
    assert not matches("executionInfo/exitCode gt 3")
    assert matches("executionInfo/exitCode lt 4 and executionInfo/exitCode le 3")
    assert matches("stateTransitionTime gt datetime'2026-01-02T03:04:05Z'")
    assert matches("stateTransitionTime lt 2026-01-02T03:04:06Z")
    assert matches("stateTransitionTime ge '2026-01-02T03:04:05.123456Z'")
    assert matches("startswith(id,'t00') and endswith(id,'7')")
    assert matches("nodeInfo/nodeId eq null")
    assert not matches("nodeInfo/nodeId gt 'a'")
    assert matches("(state eq 'active' or state eq 'completed') and not (executionInfo/exitCode eq 0)")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("state eq", "ends too early"),
        ("state equals 'x'", "expected one of"),
        ("state eq 'unterminated", "unexpected character"),
        ("(state eq 'x'", "ends too early"),
        ("state eq 'x')", "unexpected ')'"),
        ("state eq 'x' xor id eq 'y'", "unexpected 'xor'"),
        ("startswith(id, 3)", "quoted string"),
        ("stateTransitionTime gt datetime'yesterday'", "not a date and time"),
        ("state eq 'x' and", "ends too early"),
    ],
)
def test_bad_filters_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(FilterError) as error:
        parse_filter(text)
    assert fragment in str(error.value)


def test_unknown_properties_are_rejected_with_the_supported_list() -> None:
    with pytest.raises(FilterError) as error:
        check_fields(parse_filter("colour eq 'red' and state eq 'active'"), ["id", "state"])
    assert "colour" in str(error.value)
    assert "state" in str(error.value).split("supported")[1]
    check_fields(parse_filter("STATE eq 'active'"), ["id", "state"])


# -- generated expressions with an independent oracle -------------------------------------------
Record = dict[str, Any]
Predicate = Callable[[Record], bool]

OPERATORS: dict[str, Callable[[int, int], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}
STATES = ["active", "running", "completed"]


@st.composite
def leaves(draw: st.DrawFn) -> tuple[str, Predicate]:
    kind = draw(st.sampled_from(["state", "code", "id"]))
    if kind == "state":
        state = draw(st.sampled_from(STATES))
        negate = draw(st.booleans())
        op = "ne" if negate else "eq"
        return f"state {op} '{state}'", lambda r: (r["state"] != state) if negate else (r["state"] == state)
    if kind == "code":
        op = draw(st.sampled_from(sorted(OPERATORS)))
        value = draw(st.integers(-2, 5))
        return f"executionInfo/exitCode {op} {value}", lambda r: OPERATORS[op](
            r["executionInfo"]["exitCode"], value
        )
    prefix = draw(st.text(alphabet="ab'", min_size=0, max_size=2))
    quoted = prefix.replace("'", "''")
    return f"startswith(id,'{quoted}')", lambda r: r["id"].startswith(prefix)


def expressions() -> st.SearchStrategy[tuple[str, Predicate]]:
    def extend(
        children: st.SearchStrategy[tuple[str, Predicate]],
    ) -> st.SearchStrategy[tuple[str, Predicate]]:
        def combine(parts: tuple[tuple[str, Predicate], str, tuple[str, Predicate]]) -> tuple[str, Predicate]:
            (left_text, left), keyword, (right_text, right) = parts
            if keyword == "and":
                return f"({left_text}) and ({right_text})", lambda r: left(r) and right(r)
            return f"({left_text}) or ({right_text})", lambda r: left(r) or right(r)

        def negate(part: tuple[str, Predicate]) -> tuple[str, Predicate]:
            text, predicate = part
            return f"not ({text})", lambda r: not predicate(r)

        return st.one_of(
            st.tuples(children, st.sampled_from(["and", "or"]), children).map(combine), children.map(negate)
        )

    return st.recursive(leaves(), extend, max_leaves=8)


records = st.fixed_dictionaries(
    {
        "id": st.text(alphabet="ab'", max_size=4),
        "state": st.sampled_from(STATES),
        "executionInfo": st.fixed_dictionaries({"exitCode": st.integers(-2, 5)}),
    }
)


@settings(max_examples=300, deadline=None)
@given(expressions(), records)
def test_generated_filters_agree_with_the_python_oracle(
    expression: tuple[str, Predicate], record: Record
) -> None:
    text, predicate = expression
    assert evaluate(parse_filter(text), dict_getter(record)) == predicate(record)
