"""The OData `$filter` subset Batch list operations accept: a parser and an evaluator (pure).

Grammar (keywords are case-insensitive):

    expr       := and_expr ("or" and_expr)*
    and_expr   := unary ("and" unary)*
    unary      := "not" unary | "(" expr ")" | function | comparison
    function   := ("startswith" | "endswith") "(" field "," literal ")"
    comparison := field op literal          op := eq | ne | gt | ge | lt | le
    literal    := 'text' ('' escapes a quote) | datetime'...' | bare ISO time | number | true | false | null
    field      := name ("/" name)*          e.g. executionInfo/exitCode
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

from emulator.wire import parse_time

Literal: TypeAlias = str | int | float | bool | datetime | None
FieldGetter: TypeAlias = Callable[[str], object]

COMPARISON_OPERATORS = ("eq", "ne", "gt", "ge", "lt", "le")
FUNCTIONS = ("startswith", "endswith")


class FilterError(ValueError):
    """A `$filter` the emulator cannot parse or does not support; the message says where and why."""


@dataclass(frozen=True)
class Comparison:
    field: str
    operator: str
    value: Literal


@dataclass(frozen=True)
class FunctionCall:
    name: str
    field: str
    value: str


@dataclass(frozen=True)
class And:
    left: Node
    right: Node


@dataclass(frozen=True)
class Or:
    left: Node
    right: Node


@dataclass(frozen=True)
class Not:
    operand: Node


Node: TypeAlias = Comparison | FunctionCall | And | Or | Not

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<datetime>datetime'[^']*')
      | (?P<string>'(?:[^']|'')*')
      | (?P<time>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:/[A-Za-z_][A-Za-z0-9_]*)*)
      | (?P<punct>[(),])
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    position: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None or match.lastgroup is None:
            raise FilterError(f"unexpected character {text[position:].lstrip()[:1]!r} at position {position}")
        tokens.append(_Token(match.lastgroup, match.group(match.lastgroup), match.start(match.lastgroup)))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise FilterError("the filter ends too early")
        self.index += 1
        return token

    def is_keyword(self, keyword: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "name" and token.text.lower() == keyword

    def expect_punct(self, char: str) -> None:
        token = self.take()
        if token.text != char:
            raise FilterError(f"expected {char!r} at position {token.position}, found {token.text!r}")

    def parse(self) -> Node:
        if not self.tokens:
            raise FilterError("the filter is empty")
        node = self.parse_or()
        token = self.peek()
        if token is not None:
            raise FilterError(f"unexpected {token.text!r} at position {token.position}")
        return node

    def parse_or(self) -> Node:
        node = self.parse_and()
        while self.is_keyword("or"):
            self.take()
            node = Or(node, self.parse_and())
        return node

    def parse_and(self) -> Node:
        node = self.parse_unary()
        while self.is_keyword("and"):
            self.take()
            node = And(node, self.parse_unary())
        return node

    def parse_unary(self) -> Node:
        token = self.take()
        if token.kind == "punct" and token.text == "(":
            node = self.parse_or()
            self.expect_punct(")")
            return node
        if token.kind != "name":
            raise FilterError(f"expected a property name at position {token.position}, found {token.text!r}")
        lowered = token.text.lower()
        if lowered == "not":
            return Not(self.parse_unary())
        if lowered in FUNCTIONS and self.peek() is not None and self.peek().text == "(":  # type: ignore[union-attr]
            self.take()
            field = self.take()
            if field.kind != "name":
                raise FilterError(f"{lowered}() needs a property name first, at position {field.position}")
            self.expect_punct(",")
            value = self.parse_literal()
            if not isinstance(value, str):
                raise FilterError(f"{lowered}() needs a quoted string as its second argument")
            self.expect_punct(")")
            return FunctionCall(lowered, field.text, value)
        operator = self.take()
        if operator.kind != "name" or operator.text.lower() not in COMPARISON_OPERATORS:
            raise FilterError(
                f"expected one of {', '.join(COMPARISON_OPERATORS)} after {token.text!r} "
                f"at position {operator.position}"
            )
        return Comparison(token.text, operator.text.lower(), self.parse_literal())

    def parse_literal(self) -> Literal:
        token = self.take()
        if token.kind == "string":
            return token.text[1:-1].replace("''", "'")
        if token.kind == "datetime":
            return _parse_time_literal(token.text[len("datetime'") : -1], token.position)
        if token.kind == "time":
            return _parse_time_literal(token.text, token.position)
        if token.kind == "number":
            return float(token.text) if "." in token.text else int(token.text)
        if token.kind == "name" and token.text.lower() in ("true", "false"):
            return token.text.lower() == "true"
        if token.kind == "name" and token.text.lower() == "null":
            return None
        raise FilterError(f"expected a value at position {token.position}, found {token.text!r}")


def _parse_time_literal(text: str, position: int) -> datetime:
    try:
        return parse_time(text)
    except ValueError:
        raise FilterError(
            f"{text!r} at position {position} is not a date and time such as 2026-01-31T12:00:00Z"
        ) from None


def parse_filter(text: str) -> Node:
    """Parse a `$filter` expression; raises FilterError naming the position of the problem."""
    return _Parser(text).parse()


def fields_of(node: Node) -> set[str]:
    """Every property name the expression refers to."""
    if isinstance(node, Comparison | FunctionCall):
        return {node.field}
    if isinstance(node, Not):
        return fields_of(node.operand)
    return fields_of(node.left) | fields_of(node.right)


def check_fields(node: Node, allowed: Collection[str]) -> None:
    """Reject properties this list operation cannot filter on (case-insensitive, like the service)."""
    allowed_lower = {name.lower() for name in allowed}
    unknown = sorted(name for name in fields_of(node) if name.lower() not in allowed_lower)
    if unknown:
        raise FilterError(
            f"cannot filter on {', '.join(unknown)}; supported properties: {', '.join(sorted(allowed))}"
        )


def _coerce(actual: object, expected: Literal) -> tuple[object, Literal]:
    """Compare times as times even when the literal was a quoted string."""
    if isinstance(actual, datetime) and isinstance(expected, str):
        try:
            return actual, parse_time(expected)
        except ValueError:
            return actual, expected
    if isinstance(actual, str) and isinstance(expected, datetime):
        try:
            return parse_time(actual), expected
        except ValueError:
            return actual, expected
    return actual, expected


def _compare(operator: str, actual: object, expected: Literal) -> bool:
    actual, expected = _coerce(actual, expected)
    if operator == "eq":
        return _equal(actual, expected)
    if operator == "ne":
        return not _equal(actual, expected)
    if actual is None or expected is None or isinstance(actual, bool) != isinstance(expected, bool):
        return False
    comparable_numbers = isinstance(actual, int | float) and isinstance(expected, int | float)
    if not comparable_numbers and type(actual) is not type(expected):
        return False
    try:
        if operator == "gt":
            return actual > expected  # type: ignore[operator]
        if operator == "ge":
            return actual >= expected  # type: ignore[operator]
        if operator == "lt":
            return actual < expected  # type: ignore[operator]
        return actual <= expected  # type: ignore[operator]
    except TypeError:
        return False


def _equal(actual: object, expected: Literal) -> bool:
    if isinstance(actual, bool) != isinstance(expected, bool):
        return False
    if isinstance(actual, str) and isinstance(expected, str):
        # Enum values and ids are case-insensitive in the service.
        return actual.lower() == expected.lower()
    return actual == expected


def evaluate(node: Node, get: FieldGetter) -> bool:
    """Whether the resource whose properties `get` returns matches the expression."""
    if isinstance(node, Comparison):
        return _compare(node.operator, get(node.field), node.value)
    if isinstance(node, FunctionCall):
        actual = get(node.field)
        if not isinstance(actual, str):
            return False
        if node.name == "startswith":
            return actual.startswith(node.value)
        return actual.endswith(node.value)
    if isinstance(node, And):
        return evaluate(node.left, get) and evaluate(node.right, get)
    if isinstance(node, Or):
        return evaluate(node.left, get) or evaluate(node.right, get)
    return not evaluate(node.operand, get)


def dict_getter(resource: dict[str, object]) -> FieldGetter:
    """Look up `a/b/c` paths in a rendered JSON object (case-insensitive keys); missing means null."""

    def get(path: str) -> object:
        current: object = resource
        for part in path.split("/"):
            if not isinstance(current, dict):
                return None
            lowered = part.lower()
            current = next((value for key, value in current.items() if key.lower() == lowered), None)
        return current

    return get
