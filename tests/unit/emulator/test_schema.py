"""Numbers and booleans read as the service's JSON deserializer reads them; unknown properties refused."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulator import schema, validation
from emulator.wire import ServiceError

POOL = {
    "id": "p",
    "vmSize": "s",
    "virtualMachineConfiguration": {"imageReference": {}, "nodeAgentSKUId": "batch.node.ubuntu 24.04"},
}


def refused_name(call: Any) -> str:
    with pytest.raises(ServiceError) as refused:
        call()
    assert (refused.value.status, refused.value.code) == (400, "InvalidPropertyValue")
    return str(refused.value.values["PropertyName"])


def test_the_cli_sends_numbers_as_strings() -> None:
    spec = validation.validate_pool(
        {
            **POOL,
            "targetDedicatedNodes": "1",
            "taskSlotsPerNode": " 2 ",
            "enableInterNodeCommunication": "False",
        }
    )
    assert (spec["targetDedicatedNodes"], spec["taskSlotsPerNode"]) == (1, 2)
    assert spec["enableInterNodeCommunication"] is False
    assert validation.validate_resize({"targetDedicatedNodes": "3", "targetLowPriorityNodes": 1.0}) == (
        3,
        1,
        "requeue",
    )  # the default deallocation
    task = validation.validate_task(
        {"id": "t", "commandLine": "c", "constraints": {"maxTaskRetryCount": "+2"}, "requiredSlots": "1"}, {}
    )
    assert task["constraints"]["maxTaskRetryCount"] == 2 and task["requiredSlots"] == 1
    start = validation.validate_pool({**POOL, "startTask": {"commandLine": "c", "waitForSuccess": "TRUE"}})
    assert start["startTask"]["waitForSuccess"] is True


@pytest.mark.parametrize("value", ["one", "1.5", "", "0x10", True, [1], {"n": 1}, "2147483648"])
def test_what_is_not_an_integer_is_refused_by_name(value: Any) -> None:
    assert refused_name(lambda: validation.validate_pool({**POOL, "targetDedicatedNodes": value})) == (
        "targetDedicatedNodes"
    )


@pytest.mark.parametrize("value", ["yes", "1", "", [True], {"v": True}])
def test_what_is_not_a_boolean_is_refused_by_name(value: Any) -> None:
    body = {**POOL, "startTask": {"commandLine": "c", "waitForSuccess": value}}
    assert refused_name(lambda: validation.validate_pool(body)) == "startTask.waitForSuccess"


@given(st.integers(-(2**31), 2**31 - 1), st.sampled_from(["", " ", "  "]))
def test_any_int32_text_reads_as_that_number(number: int, padding: str) -> None:
    rule = {"n": schema.INT}
    assert schema.conform({"n": f"{padding}{number}{padding}"}, rule) == {"n": number}
    assert schema.conform({"n": number}, rule) == {"n": number}


@given(st.text().filter(lambda text: not text.strip().lstrip("+-").isdigit()))
def test_any_other_text_is_refused_naming_the_property(text: str) -> None:
    with pytest.raises(ServiceError) as refused:
        schema.conform({"outer": {"n": text}}, {"outer": {"n": schema.INT}})
    assert refused.value.values["PropertyName"] == "outer.n"


def test_nulls_are_unset_and_unknown_or_refused_properties_are_named() -> None:
    rule: schema.Schema = {
        "a": schema.STR,
        "b": [{"c": schema.INT}],
        "r": schema.Refused("not emulated here"),
    }
    assert schema.conform({"a": None, "b": [None, {"c": "4"}], "r": []}, rule) == {"b": [{"c": 4}]}
    assert refused_name(lambda: schema.conform({"z": 1}, rule)) == "z"
    assert schema.conform({"certificateReferences": [], "r": {}, "z": False}, rule) == {}
    assert refused_name(lambda: schema.conform({"b": [{"d": 1}]}, rule)) == "b.d"
    with pytest.raises(ServiceError) as refused:
        schema.conform({"r": {"x": 1}}, rule)
    assert refused.value.values == {"PropertyName": "r", "Reason": "not emulated here"}
