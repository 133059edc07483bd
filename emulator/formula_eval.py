"""Evaluation of a parsed autoscale formula against a pool's samples (pure).

Values are doubles, vectors of doubles (samples), time intervals, strings and the deallocation
keywords. Anything the service has but the emulator does not run (resource metrics, `time()`,
`percentile()`, ...) is an error that names it, never a silent 0.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

from emulator.formula import (
    EVALUATION_ERROR,
    INSUFFICIENT_SAMPLES,
    NOT_EMULATED,
    Binary,
    Call,
    Conditional,
    FormulaError,
    MethodCall,
    Name,
    Node,
    Number,
    Statement,
    Text,
    Unary,
    parse,
)

DEALLOCATION_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")
# Sampled task and node variables (read with GetSample); the node counts can also be read bare.
TASK_METRICS = ("$ActiveTasks", "$RunningTasks", "$PendingTasks", "$SucceededTasks", "$FailedTasks")
NODE_METRICS = ("$CurrentDedicatedNodes", "$CurrentLowPriorityNodes", "$PreemptedNodeCount")
SAMPLED = {name.lower(): name for name in (*TASK_METRICS, *NODE_METRICS)}
TARGET_DEDICATED = "$TargetDedicatedNodes"
TARGET_LOW_PRIORITY = "$TargetLowPriorityNodes"
DEALLOCATION = "$NodeDeallocationOption"
_WRITABLE = {
    "$targetdedicatednodes": TARGET_DEDICATED,
    "$targetlowprioritynodes": TARGET_LOW_PRIORITY,
    "$nodedeallocationoption": DEALLOCATION,
}
# Older names the service still accepts; the full name wins when a formula sets both.
_ALIASES = {"$targetdedicated": TARGET_DEDICATED, "$targetlowpriority": TARGET_LOW_PRIORITY}
_NOT_EMULATED_VARIABLES = frozenset(
    name.lower()
    for name in (
        "$CPUPercent",
        "$WallClockSeconds",
        "$MemoryBytes",
        "$DiskBytes",
        "$DiskReadBytes",
        "$DiskWriteBytes",
        "$DiskReadOps",
        "$DiskWriteOps",
        "$NetworkInBytes",
        "$NetworkOutBytes",
        "$SampleNodeCount",
        "$UsableNodeCount",
        "$CurrentDedicated",
        "$PreemptedNodes",
    )
)
_NOT_EMULATED_FUNCTIONS = frozenset(
    {"lg", "ln", "log", "norm", "percentile", "rand", "range", "std", "stop", "time", "val", "round", "vec"}
)
_NOT_EMULATED_METHODS = frozenset({"getsampleperiod", "count", "historybegintime"})
_INTERVALS = {
    "timeinterval_zero": 0.0,
    "timeinterval_100ns": 1e-7,
    "timeinterval_microsecond": 1e-6,
    "timeinterval_millisecond": 1e-3,
    "timeinterval_second": 1.0,
    "timeinterval_minute": 60.0,
    "timeinterval_hour": 3600.0,
    "timeinterval_day": 86400.0,
    "timeinterval_week": 604800.0,
    "timeinterval_year": 31536000.0,
}


# -- values -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    seconds: float


@dataclass(frozen=True)
class Keyword:
    name: str


Vector = tuple[float, ...]
Value = Union[float, Vector, Interval, Keyword, str]  # noqa: UP007 (a runtime alias)


@dataclass(frozen=True)
class Sample:
    """The metric values taken at one moment (service seconds)."""

    time_s: float
    values: Mapping[str, float]


@dataclass(frozen=True)
class PoolMetrics:
    """What a formula may read: the visible samples (oldest first) and the pool's current numbers."""

    now_s: float
    samples: Sequence[Sample] = ()
    sample_period_s: float = 30.0
    current: Mapping[str, float] = field(default_factory=dict)
    target_dedicated: int = 0
    target_low_priority: int = 0


@dataclass(frozen=True)
class Evaluation:
    """The outcome of one run: new targets (unchanged on error) and the `results` string."""

    target_dedicated: int
    target_low_priority: int
    deallocation: str
    results: str
    error: FormulaError | None = None


def format_value(value: Value) -> str:
    """A value as the `results` string shows it."""
    if isinstance(value, Keyword):
        return value.name
    if isinstance(value, str):
        return value
    if isinstance(value, Interval):
        return _format_interval(value.seconds)
    if isinstance(value, tuple):
        return "[" + ",".join(_format_number(item) for item in value) + "]"
    return _format_number(value)


def _format_number(number: float) -> str:
    if math.isfinite(number) and number == int(number) and abs(number) < 1e15:
        return str(int(number))
    return f"{number:.6g}"


def _format_interval(seconds: float) -> str:
    sign = "-" if seconds < 0 else ""
    whole = abs(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{int(hours):02d}:{int(minutes):02d}:{int(secs):02d}"
    return sign + (f"{int(days)}.{text}" if days else text)


# -- evaluation ---------------------------------------------------------------------------------
def check_emulated(statements: Sequence[Statement]) -> None:
    """Refuse, naming it, the first variable, function or method the emulator does not run."""
    for statement in statements:
        if statement.target is not None and statement.target.lower() in _NOT_EMULATED_VARIABLES:
            _not_emulated_variable(statement.target, statement)
        _check_node(statement.value)


def _not_emulated_variable(name: str, where: Node) -> None:
    raise FormulaError(
        NOT_EMULATED,
        f"{name} is not emulated (only task counts and node counts are sampled)",
        where.line,
        where.column,
    )


def _check_node(node: Node) -> None:
    if isinstance(node, Name) and node.name.lower() in _NOT_EMULATED_VARIABLES:
        _not_emulated_variable(node.name, node)
    if isinstance(node, Call) and node.function.lower() in _NOT_EMULATED_FUNCTIONS:
        raise FormulaError(
            NOT_EMULATED, f"the function {node.function}() is not emulated", node.line, node.column
        )
    if isinstance(node, MethodCall):
        if node.target.lower() in _NOT_EMULATED_VARIABLES:
            _not_emulated_variable(node.target, node)
        if node.method.lower() in _NOT_EMULATED_METHODS:
            raise FormulaError(
                NOT_EMULATED, f"the method {node.method}() is not emulated", node.line, node.column
            )
    for child in _children(node):
        _check_node(child)


def _children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, Binary):
        return (node.left, node.right)
    if isinstance(node, Conditional):
        return (node.condition, node.then, node.otherwise)
    if isinstance(node, Call | MethodCall):
        return node.args
    return ()


def evaluate(text: str, metrics: PoolMetrics) -> Evaluation:
    """Run a formula against a pool's metrics; an error leaves the pool's targets as they were."""
    unchanged: dict[str, Value] = {
        TARGET_DEDICATED: float(metrics.target_dedicated),
        TARGET_LOW_PRIORITY: float(metrics.target_low_priority),
        DEALLOCATION: Keyword("requeue"),
    }
    try:
        statements = parse(text)
        check_emulated(statements)
        scope = _Scope(metrics)
        for statement in statements:
            value = scope.eval(statement.value)
            if statement.target is not None:
                scope.assign(statement, value)
        dedicated = scope.target(TARGET_DEDICATED)
        low_priority = scope.target(TARGET_LOW_PRIORITY)
        option = scope.system.get(DEALLOCATION, Keyword("requeue"))
        assert isinstance(option, Keyword)
    except FormulaError as error:
        return Evaluation(
            metrics.target_dedicated,
            metrics.target_low_priority,
            "requeue",
            _results(unchanged, {}),
            error,
        )
    final: dict[str, Value] = {
        TARGET_DEDICATED: float(dedicated),
        TARGET_LOW_PRIORITY: float(low_priority),
        DEALLOCATION: option,
    }
    return Evaluation(dedicated, low_priority, option.name, _results(final, scope.user))


def _results(system: Mapping[str, Value], user: Mapping[str, Value]) -> str:
    parts = [
        f"{name}={format_value(system[name])}"
        for name in (TARGET_DEDICATED, TARGET_LOW_PRIORITY, DEALLOCATION)
    ]
    parts.extend(f"{name}={format_value(user[name])}" for name in sorted(user))
    return ";".join(parts)


class _Scope:
    """Variables of one evaluation: the system's writable ones, the user's, and the pool's metrics."""

    def __init__(self, metrics: PoolMetrics) -> None:
        self.metrics = metrics
        self.system: dict[str, Value] = {
            TARGET_DEDICATED: float(metrics.target_dedicated),
            TARGET_LOW_PRIORITY: float(metrics.target_low_priority),
            DEALLOCATION: Keyword("requeue"),
        }
        self.full_name_set: set[str] = set()
        self.user: dict[str, Value] = {}

    def fail(self, node: Node, detail: str, code: str = EVALUATION_ERROR) -> FormulaError:
        return FormulaError(code, detail, node.line, node.column)

    def assign(self, statement: Statement, value: Value) -> None:
        name = statement.target
        assert name is not None
        lowered = name.lower()
        if lowered in _WRITABLE or lowered in _ALIASES:
            canonical = _WRITABLE.get(lowered) or _ALIASES[lowered]
            if canonical == DEALLOCATION:
                if not isinstance(value, Keyword):
                    raise self.fail(
                        statement, f"{DEALLOCATION} must be one of {', '.join(DEALLOCATION_OPTIONS)}"
                    )
            elif not isinstance(value, float):
                raise self.fail(statement, f"{canonical} must be a number, not {_type_name(value)}")
            if lowered in _WRITABLE:
                self.full_name_set.add(canonical)
            elif canonical in self.full_name_set:
                return  # the full name was set and takes precedence over the alias
            self.system[canonical] = value
            return
        if lowered in SAMPLED or lowered.startswith("timeinterval_"):
            raise self.fail(statement, f"{name} is read-only")
        self.user[name] = value

    def target(self, name: str) -> int:
        value = self.system[name]
        assert isinstance(value, float)
        if not math.isfinite(value) or value < 0:
            raise FormulaError(
                EVALUATION_ERROR, f"{name} must be a number of nodes (0 or more), got {_format_number(value)}"
            )
        return int(value)

    def eval(self, node: Node) -> Value:
        if isinstance(node, Number):
            return node.value
        if isinstance(node, Text):
            return node.value
        if isinstance(node, Name):
            return self.read(node)
        if isinstance(node, Unary):
            return self.unary(node)
        if isinstance(node, Binary):
            return self.binary(node)
        if isinstance(node, Conditional):
            condition = self.eval(node.condition)
            if not isinstance(condition, float):
                raise self.fail(node, f"the condition of ?: must be a number, not {_type_name(condition)}")
            return self.eval(node.then if condition != 0 else node.otherwise)
        if isinstance(node, Call):
            return self.call(node)
        assert isinstance(node, MethodCall)
        return self.method(node)

    def read(self, node: Name) -> Value:
        name, lowered = node.name, node.name.lower()
        if name in self.user:
            return self.user[name]
        canonical = _WRITABLE.get(lowered) or _ALIASES.get(lowered)
        if canonical is not None:
            return self.system[canonical]
        if lowered in _INTERVALS:
            return Interval(_INTERVALS[lowered])
        if lowered in SAMPLED:
            full = SAMPLED[lowered]
            if full in NODE_METRICS:
                return float(self.metrics.current.get(full, 0.0))
            raise self.fail(node, f"{full} is a set of samples; read it with {full}.GetSample(...)")
        if lowered in DEALLOCATION_OPTIONS:
            return Keyword(lowered)
        raise self.fail(node, f"{name} is not defined")

    def unary(self, node: Unary) -> Value:
        value = self.eval(node.operand)
        if node.op == "!" and isinstance(value, float):
            return 1.0 if value == 0 else 0.0
        if node.op == "-":
            if isinstance(value, float):
                return -value
            if isinstance(value, Interval):
                return Interval(-value.seconds)
            if isinstance(value, tuple):
                return tuple(-item for item in value)
        raise self.fail(node, f"the operator {node.op} does not apply to {_type_name(value)}")

    def binary(self, node: Binary) -> Value:
        left = self.eval(node.left)
        right = self.eval(node.right)
        op = node.op
        if op in ("&&", "||"):
            if not isinstance(left, float) or not isinstance(right, float):
                raise self._type_error(node, left, right)
            truth = (left != 0 and right != 0) if op == "&&" else (left != 0 or right != 0)
            return 1.0 if truth else 0.0
        if op in _COMPARISONS:
            return self.compare(node, left, right)
        return self.arithmetic(node, left, right)

    def compare(self, node: Binary, left: Value, right: Value) -> float:
        comparable: tuple[object, object]
        if isinstance(left, float) and isinstance(right, float):
            comparable = (left, right)
        elif isinstance(left, Interval) and isinstance(right, Interval):
            comparable = (left.seconds, right.seconds)
        elif isinstance(left, str) and isinstance(right, str):
            comparable = (left, right)
        elif isinstance(left, Keyword) and isinstance(right, Keyword) and node.op in ("==", "!="):
            comparable = (left.name, right.name)
        else:
            raise self._type_error(node, left, right)
        return 1.0 if _COMPARISONS[node.op](*comparable) else 0.0

    def arithmetic(self, node: Binary, left: Value, right: Value) -> Value:
        op = node.op
        if op == "/" and isinstance(right, float) and right == 0:
            raise self.fail(node, "division by zero")
        if isinstance(left, float) and isinstance(right, float):
            return _ARITHMETIC[op](left, right)
        if isinstance(left, tuple) and isinstance(right, float):
            return tuple(_ARITHMETIC[op](item, right) for item in left)
        if isinstance(left, tuple) and isinstance(right, tuple):
            if len(left) != len(right):
                raise self.fail(node, f"vectors of lengths {len(left)} and {len(right)} cannot be combined")
            if op == "/" and 0.0 in right:
                raise self.fail(node, "division by zero")
            return tuple(_ARITHMETIC[op](a, b) for a, b in zip(left, right, strict=True))
        if isinstance(left, Interval) and isinstance(right, float) and op in ("*", "/"):
            return Interval(_ARITHMETIC[op](left.seconds, right))
        if isinstance(left, float) and isinstance(right, Interval) and op == "*":
            return Interval(left * right.seconds)
        if isinstance(left, Interval) and isinstance(right, Interval) and op in ("+", "-"):
            return Interval(_ARITHMETIC[op](left.seconds, right.seconds))
        raise self._type_error(node, left, right)

    def _type_error(self, node: Binary, left: Value, right: Value) -> FormulaError:
        return self.fail(
            node, f"the operator {node.op} does not apply to {_type_name(left)} and {_type_name(right)}"
        )

    def call(self, node: Call) -> Value:
        name = node.function.lower()
        args = [self.eval(arg) for arg in node.args]
        if name in ("ceil", "floor"):
            if len(args) != 1 or not isinstance(args[0], float):
                raise self.fail(node, f"{node.function}() takes one number")
            return float(math.ceil(args[0]) if name == "ceil" else math.floor(args[0]))
        if name in _AGGREGATES:
            values: list[float] = []
            for arg in args:
                if isinstance(arg, float):
                    values.append(arg)
                elif isinstance(arg, tuple):
                    values.extend(arg)
                else:
                    raise self.fail(
                        node, f"{node.function}() takes numbers and sample vectors, not {_type_name(arg)}"
                    )
            if not values and name != "len":
                raise self.fail(node, f"{node.function}() of an empty list (no samples were available)")
            return _AGGREGATES[name](values)
        raise self.fail(node, f"{node.function}() is not a function of the autoscale language")

    def method(self, node: MethodCall) -> Value:
        lowered = node.target.lower()
        if lowered not in SAMPLED:
            raise self.fail(node, f"{node.target} has no samples (only the task and node count variables do)")
        metric = SAMPLED[lowered]
        args = [self.eval(arg) for arg in node.args]
        method = node.method.lower()
        if method == "getsample":
            return self.get_sample(node, metric, args)
        if method == "getsamplepercent":
            if not 1 <= len(args) <= 2 or not all(isinstance(arg, Interval) for arg in args):
                raise self.fail(node, "GetSamplePercent takes one or two time intervals")
            _, percent = self.window(metric, args)  # type: ignore[arg-type]
            return percent
        raise self.fail(node, f"{node.method}() is not a method of {metric}")

    def window(self, metric: str, bounds: Sequence[Interval]) -> tuple[Vector, float]:
        """Samples between the two look-back bounds (one bound: from it until now), and their percent."""
        start, end = (0.0, bounds[0].seconds) if len(bounds) == 1 else (bounds[0].seconds, bounds[1].seconds)
        newest, oldest = min(start, end), max(start, end)
        now = self.metrics.now_s
        values = tuple(
            float(sample.values.get(metric, 0.0))
            for sample in self.metrics.samples
            if now - oldest <= sample.time_s <= now - newest
        )
        expected = max((oldest - newest) / self.metrics.sample_period_s, 1.0)
        return values, min(100.0, 100.0 * len(values) / expected)

    def get_sample(self, node: MethodCall, metric: str, args: list[Value]) -> Vector:
        if len(args) == 1 and isinstance(args[0], float):
            wanted = max(int(args[0]), 1)
            values = tuple(float(sample.values.get(metric, 0.0)) for sample in self.metrics.samples[-wanted:])
            if not values:
                raise self.fail(
                    node,
                    f"Insufficient data from data set: {metric} wanted {wanted} samples, received 0",
                    INSUFFICIENT_SAMPLES,
                )
            return values
        bounds = [arg for arg in itertools.takewhile(lambda arg: isinstance(arg, Interval), args)]
        rest = args[len(bounds) :]
        required = rest[0] if rest else 0.0
        if not 1 <= len(bounds) <= 2 or len(rest) > 1 or not isinstance(required, float):
            raise self.fail(
                node, "GetSample takes a count, or one or two time intervals and a sample percent"
            )
        values, percent = self.window(metric, bounds)  # type: ignore[arg-type]
        if percent < required:
            raise self.fail(
                node,
                f"Insufficient data from data set: {metric} wanted {_format_number(required)}%, "
                f"received {_format_number(math.floor(percent))}%",
                INSUFFICIENT_SAMPLES,
            )
        return values


def _type_name(value: Value) -> str:
    if isinstance(value, float):
        return "a number"
    if isinstance(value, tuple):
        return "a sample vector"
    if isinstance(value, Interval):
        return "a time interval"
    if isinstance(value, Keyword):
        return f"the keyword {value.name}"
    return "a string"


_COMPARISONS: dict[str, Callable[[object, object], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,  # type: ignore[operator]
    "<=": lambda a, b: a <= b,  # type: ignore[operator]
    ">": lambda a, b: a > b,  # type: ignore[operator]
    ">=": lambda a, b: a >= b,  # type: ignore[operator]
}
_ARITHMETIC: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
}
_AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "min": min,
    "max": max,
    "sum": lambda values: float(sum(values)),
    "avg": lambda values: sum(values) / len(values),
    "len": lambda values: float(len(values)),
}
