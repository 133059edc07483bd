"""The autoscale properties of pool create, enableautoscale and evaluateautoscale bodies (pure).

Each function checks a request body with the service's codes and returns what the pool's spec takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from emulator.formula import MAX_FORMULA_CHARS, FormulaError, parse
from emulator.wire import ServiceError, invalid_property, missing_property, parse_duration

DEFAULT_INTERVAL = "PT15M"
MIN_INTERVAL_S = 5 * 60.0
MAX_INTERVAL_S = 168 * 3600.0
# The service's periods; `--time-scale F` multiplies each by F on the emulator's clock.
SAMPLE_PERIOD_S = 30.0
# A sample reaches formulas one period after it is taken. The service documents a delay of up to
# about a minute; with a longer one here, its own sample formula (70% of 180 s) could never pass.
SAMPLE_DELAY_S = 30.0
ENABLE_THROTTLE_S = 30.0
AUTOSCALE_PROPERTIES = ("enableAutoScale", "autoScaleFormula", "autoScaleEvaluationInterval")


def check_formula(formula: object, name: str = "autoScaleFormula") -> str:
    """A formula that parses, or 400 naming what is wrong and where (AutoScalingFormulaSyntaxError)."""
    if not isinstance(formula, str) or not formula.strip():
        raise invalid_property(name, "must be a non-empty autoscale formula")
    if len(formula) > MAX_FORMULA_CHARS:
        raise ServiceError(
            400,
            "AutoScalingFormulaTooLong",
            f"The autoscale formula is longer than {MAX_FORMULA_CHARS} characters.",
            {"PropertyName": name},
        )
    try:
        parse(formula)
    except FormulaError as error:
        raise ServiceError(
            400,
            "AutoScalingFormulaSyntaxError",
            "The specified auto-scaling formula has a syntax error.",
            {"PropertyName": name, "Message": error.detail},
        ) from None
    return formula


def check_interval(interval: object) -> str:
    """An evaluation interval from 5 minutes to 168 hours (ISO 8601), or 400 InvalidPropertyValue."""
    name = "autoScaleEvaluationInterval"
    try:
        if not isinstance(interval, str):
            raise ValueError
        seconds = parse_duration(interval)
    except ValueError:
        raise invalid_property(name, "must be an ISO 8601 duration such as PT5M") from None
    if not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
        raise invalid_property(name, "must be from 5 minutes (PT5M) to 168 hours (PT168H)")
    return interval


def validate_pool_autoscale(body: Mapping[str, Any]) -> dict[str, Any]:
    """The autoscale part of a create-pool body (nulls already dropped): spec entries to add."""
    enabled = body.get("enableAutoScale", False)
    if not isinstance(enabled, bool):
        raise invalid_property("enableAutoScale", "must be true or false")
    if not enabled:
        for name in ("autoScaleFormula", "autoScaleEvaluationInterval"):
            if name in body:
                raise invalid_property(name, "must not be set unless enableAutoScale is true")
        return {"enableAutoScale": False}
    for name in ("targetDedicatedNodes", "targetLowPriorityNodes"):
        if name in body:
            raise invalid_property(name, "must not be set when enableAutoScale is true (the formula sets it)")
    if "autoScaleFormula" not in body:
        raise missing_property("autoScaleFormula")
    return {
        "enableAutoScale": True,
        "autoScaleFormula": check_formula(body["autoScaleFormula"]),
        "autoScaleEvaluationInterval": check_interval(
            body.get("autoScaleEvaluationInterval", DEFAULT_INTERVAL)
        ),
    }


def validate_enable(body: Mapping[str, Any], currently_enabled: bool) -> dict[str, str]:
    """An enableautoscale body: the formula and interval to set (at least one when already enabled)."""
    body = _set_properties(body)
    unknown = sorted(set(body) - {"autoScaleFormula", "autoScaleEvaluationInterval"})
    if unknown:
        raise invalid_property(
            unknown[0], "enableautoscale takes autoScaleFormula and autoScaleEvaluationInterval"
        )
    changes: dict[str, str] = {}
    if "autoScaleFormula" in body:
        changes["autoScaleFormula"] = check_formula(body["autoScaleFormula"])
    if "autoScaleEvaluationInterval" in body:
        changes["autoScaleEvaluationInterval"] = check_interval(body["autoScaleEvaluationInterval"])
    if not currently_enabled:
        if "autoScaleFormula" not in changes:
            raise missing_property("autoScaleFormula")
        changes.setdefault("autoScaleEvaluationInterval", DEFAULT_INTERVAL)
    elif not changes:
        raise missing_property("autoScaleFormula")
    return changes


def _set_properties(body: Mapping[str, Any]) -> dict[str, Any]:
    """JSON nulls mean "not set" to the service (older clients send them)."""
    return {name: value for name, value in body.items() if value is not None}


def validate_evaluate(body: Mapping[str, Any]) -> str:
    """An evaluateautoscale body: the formula (syntax errors come back in the run, not as a 400)."""
    formula = _set_properties(body).get("autoScaleFormula")
    if formula is None:
        raise missing_property("autoScaleFormula")
    if not isinstance(formula, str):
        raise invalid_property("autoScaleFormula", "must be a string")
    return formula
