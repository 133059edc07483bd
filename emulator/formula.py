"""The Batch autoscale formula language: tokenizer and parser (pure); evaluation is in formula_eval.py.

A formula is `;`-separated statements (`name = expression;`) with `//` and `/* */` comments. Expressions
have C precedence: `?:`, `||`, `&&`, `== !=`, `< <= > >=`, `+ -`, `* /`, unary `- !`, calls and
`$Variable.Method(...)` calls. Errors carry the line and column, as the service reports them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_FORMULA_CHARS = 8192

# Error codes of an autoScaleRun. InsufficientSampleData and its message are the service's; the
# others are the emulator's names for what the service reports in its own words.
SYNTAX_ERROR = "AutoScalingFormulaSyntaxError"
EVALUATION_ERROR = "FormulaEvaluationError"
NOT_EMULATED = "AutoScaleFeatureNotEmulated"
INSUFFICIENT_SAMPLES = "InsufficientSampleData"
_SUMMARIES = {
    SYNTAX_ERROR: "The specified auto-scaling formula has a syntax error",
    EVALUATION_ERROR: "Autoscale evaluation failed",
    NOT_EMULATED: "The formula uses a feature the emulator does not emulate",
    INSUFFICIENT_SAMPLES: "Autoscale evaluation failed due to insufficient sample data",
}


class FormulaError(Exception):
    """Why a formula cannot be parsed or evaluated, in the shape of an `autoScaleRun.error`."""

    def __init__(self, code: str, detail: str, line: int = 1, column: int = 1) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = f"Line {line}, Col {column}: {detail}"

    @property
    def summary(self) -> str:
        return _SUMMARIES[self.code]

    def to_wire(self) -> dict[str, object]:
        return {
            "code": self.code,
            "message": self.summary,
            "values": [{"name": "Message", "value": self.detail}],
        }


# -- tokens -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    kind: str  # "number", "name", "string", "op", "end"
    text: str
    line: int
    column: int


_TOKEN = re.compile(
    r"(?P<space>[ \t\r\n]+)"
    r"|(?P<comment>//[^\n]*|/\*.*?\*/)"
    r"|(?P<unterminated>/\*)"
    r"|(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>\$?[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<string>\"[^\"\n]*\")"
    r"|(?P<op>&&|\|\||==|!=|<=|>=|[-+*/<>!?:;=(),.])",
    re.DOTALL,
)


def tokenize(text: str) -> list[Token]:
    """Split a formula into tokens with 1-based line and column numbers; raises FormulaError."""
    tokens: list[Token] = []
    position, line, line_start = 0, 1, 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        column = position - line_start + 1
        if match is None:
            raise FormulaError(SYNTAX_ERROR, f"unexpected character {text[position]!r}", line, column)
        kind = match.lastgroup
        if kind == "unterminated":
            raise FormulaError(SYNTAX_ERROR, "unterminated comment", line, column)
        assert kind is not None
        if kind not in ("space", "comment"):
            tokens.append(Token(kind, match.group(), line, column))
        newlines = match.group().count("\n")
        if newlines:
            line += newlines
            line_start = position + match.group().rfind("\n") + 1
        position = match.end()
    tokens.append(Token("end", "", line, position - line_start + 1))
    return tokens


# -- syntax tree --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    line: int
    column: int


@dataclass(frozen=True)
class Number(Node):
    value: float


@dataclass(frozen=True)
class Text(Node):
    value: str


@dataclass(frozen=True)
class Name(Node):
    name: str


@dataclass(frozen=True)
class Unary(Node):
    op: str
    operand: Node


@dataclass(frozen=True)
class Binary(Node):
    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Conditional(Node):
    condition: Node
    then: Node
    otherwise: Node


@dataclass(frozen=True)
class Call(Node):
    function: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class MethodCall(Node):
    target: str
    method: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Statement(Node):
    target: str | None  # None: an expression evaluated for its errors only
    value: Node


_BINARY_LEVELS: tuple[tuple[str, ...], ...] = (
    ("||",),
    ("&&",),
    ("==", "!="),
    ("<", "<=", ">", ">="),
    ("+", "-"),
    ("*", "/"),
)


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.index = 0

    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def error(self, expected: str) -> FormulaError:
        token = self.current
        found = "the end of the formula" if token.kind == "end" else repr(token.text)
        return FormulaError(SYNTAX_ERROR, f"expected {expected} but found {found}", token.line, token.column)

    def accept(self, text: str) -> bool:
        if self.current.kind == "op" and self.current.text == text:
            self.advance()
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.accept(text):
            raise self.error(repr(text))

    def statements(self) -> tuple[Statement, ...]:
        result: list[Statement] = []
        while self.current.kind != "end":
            if self.accept(";"):
                continue
            result.append(self.statement())
            if self.current.kind != "end":
                self.expect(";")
        return tuple(result)

    def statement(self) -> Statement:
        start = self.current
        following = self.tokens[self.index + 1]
        if start.kind == "name" and following.kind == "op" and following.text == "=":
            self.advance()
            self.advance()
            return Statement(start.line, start.column, start.text, self.expression())
        return Statement(start.line, start.column, None, self.expression())

    def expression(self) -> Node:
        condition = self.binary(0)
        if self.current.kind == "op" and self.current.text == "?":
            token = self.advance()
            then = self.expression()
            self.expect(":")
            otherwise = self.expression()
            return Conditional(token.line, token.column, condition, then, otherwise)
        return condition

    def binary(self, level: int) -> Node:
        if level == len(_BINARY_LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.current.kind == "op" and self.current.text in _BINARY_LEVELS[level]:
            token = self.advance()
            left = Binary(token.line, token.column, token.text, left, self.binary(level + 1))
        return left

    def unary(self) -> Node:
        if self.current.kind == "op" and self.current.text in ("-", "!", "+"):
            token = self.advance()
            operand = self.unary()
            return operand if token.text == "+" else Unary(token.line, token.column, token.text, operand)
        return self.primary()

    def arguments(self) -> tuple[Node, ...]:
        args: list[Node] = []
        if not self.accept(")"):
            args.append(self.expression())
            while self.accept(","):
                args.append(self.expression())
            self.expect(")")
        return tuple(args)

    def primary(self) -> Node:
        token = self.current
        if token.kind == "number":
            self.advance()
            return Number(token.line, token.column, float(token.text))
        if token.kind == "string":
            self.advance()
            return Text(token.line, token.column, token.text[1:-1])
        if token.kind == "name":
            self.advance()
            if self.accept("("):
                return Call(token.line, token.column, token.text, self.arguments())
            if self.accept("."):
                method = self.current
                if method.kind != "name":
                    raise self.error("a method name after '.'")
                self.advance()
                self.expect("(")
                return MethodCall(token.line, token.column, token.text, method.text, self.arguments())
            return Name(token.line, token.column, token.text)
        if self.accept("("):
            inner = self.expression()
            self.expect(")")
            return inner
        raise self.error("a number, a name or '('")


def parse(text: str) -> tuple[Statement, ...]:
    """Parse a formula into statements; raises FormulaError (SYNTAX_ERROR) with line and column."""
    if len(text) > MAX_FORMULA_CHARS:
        raise FormulaError(SYNTAX_ERROR, f"the formula is longer than {MAX_FORMULA_CHARS} characters")
    return _Parser(tokenize(text)).statements()
