"""The api-version table and its adapters, as pure functions."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulator.versions import STEPS, SUPPORTED_VERSIONS, VersionError, adapter_for
from emulator.wire import ServiceError, invalid_property

TUTORIAL_ERA = "2016-07-01.3.1"
COUNTS = {"active": 1, "running": 2, "completed": 3, "succeeded": 2, "failed": 1}


def test_the_table_holds_every_client_version_in_order() -> None:
    for version in ("2016-07-01.3.1", "2022-10-01.16.0", "2024-02-01.19.0", "2025-06-01"):
        assert version in SUPPORTED_VERSIONS
    assert list(SUPPORTED_VERSIONS) == sorted(SUPPORTED_VERSIONS)
    assert [step.version for step in STEPS] == sorted(step.version for step in STEPS)
    assert all(step.version in SUPPORTED_VERSIONS for step in STEPS)
    assert adapter_for("2025-06-01").is_current
    assert not adapter_for("2024-07-01.20.0").steps  # no emulated shape changed since


@pytest.mark.parametrize("version", ["2030-01-01.99.0", "2016-02-01.3.0", "2025-06-01.0", "", "2024-02-01"])
def test_other_versions_are_refused_with_the_range(version: str) -> None:
    with pytest.raises(ServiceError) as refused:
        adapter_for(version)
    assert (refused.value.status, refused.value.code) == (400, "UnsupportedRequestVersion")
    assert "2016-07-01.3.1 to 2025-06-01" in refused.value.message


@pytest.mark.parametrize(
    ("version", "missing"),
    [
        (TUTORIAL_ERA, {"list_supported_images", "get_job_task_counts"}),
        ("2017-06-01.5.1", {"list_supported_images"}),
        ("2019-06-01.9.0", {"list_node_agent_skus"}),
        ("2025-06-01", {"list_node_agent_skus"}),
    ],
)
def test_operations_exist_only_in_their_versions(version: str, missing: set[str]) -> None:
    adapter = adapter_for(version)
    assert adapter.missing_operations == missing
    with pytest.raises(ServiceError) as absent:
        adapter.require_operation(sorted(missing)[0])
    assert absent.value.status == 404
    adapter.require_operation("list_pools")


def test_tutorial_era_pool_and_task_requests_reach_the_current_shape() -> None:
    adapter = adapter_for(TUTORIAL_ERA)
    pool = adapter.request(
        "create_pool",
        {
            "id": "p",
            "targetDedicated": "1",
            "maxTasksPerNode": 2,
            "startTask": {
                "commandLine": "x",
                "runElevated": "true",
                "resourceFiles": [{"blobSource": "http://h/a?sig=s", "filePath": "a"}],
            },
        },
    )
    assert pool == {
        "id": "p",
        "targetDedicatedNodes": "1",  # still a string: numbers are read by validation, for every version
        "taskSlotsPerNode": 2,
        "startTask": {
            "commandLine": "x",
            "userIdentity": {"autoUser": {"elevationLevel": "admin"}},
            "resourceFiles": [{"httpUrl": "http://h/a?sig=s", "filePath": "a"}],
            "waitForSuccess": False,
        },
    }
    tasks = adapter.request(
        "create_task_collection",
        {
            "value": [
                {
                    "id": "t",
                    "runElevated": False,
                    "exitConditions": {"schedulingError": {"jobAction": "none"}},
                }
            ]
        },
    )
    assert tasks["value"][0] == {
        "id": "t",
        "userIdentity": {"autoUser": {"elevationLevel": "nonadmin"}},
        "exitConditions": {"preProcessingError": {"jobAction": "none"}},
    }
    assert adapter.request("resize_pool", {"targetDedicated": 3}) == {"targetDedicatedNodes": 3}
    explicit_null = adapter.request(
        "update_pool", {"startTask": {"commandLine": "x", "waitForSuccess": None}}
    )
    assert explicit_null["startTask"]["waitForSuccess"] is False


@pytest.mark.parametrize(
    ("operation", "body", "named"),
    [
        ("create_pool", {"targetDedicatedNodes": 1}, "targetDedicatedNodes"),
        ("create_pool", {"targetLowPriorityNodes": 1}, "targetLowPriorityNodes"),
        ("create_task", {"userIdentity": {}}, "userIdentity"),
        ("create_task", {"runElevated": "yes"}, "runElevated"),
        ("create_task", {"resourceFiles": [{"httpUrl": "u", "filePath": "f"}]}, "resourceFiles.httpUrl"),
        (
            "create_task",
            {"resourceFiles": [{"storageContainerUrl": "u"}]},
            "resourceFiles.storageContainerUrl",
        ),
        ("create_task", {"requiredSlots": 1}, "requiredSlots"),
        ("create_pool", {"startTask": {"userIdentity": {}}}, "startTask.userIdentity"),
    ],
)
def test_newer_properties_in_an_old_request_are_refused_by_name(
    operation: str, body: dict[str, Any], named: str
) -> None:
    with pytest.raises(VersionError) as refused:
        adapter_for(TUTORIAL_ERA).request(operation, body)
    assert refused.value.values["PropertyName"] == named
    # Already in the client's terms: the error translation leaves it alone.
    assert adapter_for(TUTORIAL_ERA).error(refused.value).values["PropertyName"] == named


def test_errors_from_the_current_shape_name_the_old_properties() -> None:
    adapter = adapter_for(TUTORIAL_ERA)
    assert (
        adapter.error(invalid_property("targetDedicatedNodes", "r")).values["PropertyName"]
        == "targetDedicated"
    )
    renamed = adapter.error(invalid_property("startTask.resourceFiles.httpUrl", "r"))
    assert renamed.values["PropertyName"] == "startTask.resourceFiles.blobSource"
    assert adapter_for("2025-06-01").error(invalid_property("targetDedicatedNodes", "r")).values == {
        "PropertyName": "targetDedicatedNodes",
        "Reason": "r",
    }


def test_selected_names_are_read_in_the_current_shape() -> None:
    adapter = adapter_for(TUTORIAL_ERA)
    assert adapter.current_name("targetDedicated") == "targetDedicatedNodes"
    assert adapter.current_name("maxTasksPerNode") == "taskSlotsPerNode"
    assert adapter_for("2025-06-01").current_name("targetDedicated") == "targetDedicated"


def test_answers_take_each_versions_shape() -> None:
    pool = {
        "id": "p",
        "targetDedicatedNodes": 1,
        "currentDedicatedNodes": 1,
        "targetLowPriorityNodes": 0,
        "currentLowPriorityNodes": 0,
        "taskSlotsPerNode": 2,
        "resizeErrors": [{"code": "AccountCoreQuotaReached", "message": "m"}],
        "startTask": {
            "commandLine": "x",
            "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "admin"}},
            "resourceFiles": [{"httpUrl": "u", "filePath": "f"}],
        },
    }
    old_pool = adapter_for(TUTORIAL_ERA).answer("list_pools", {"value": [copy.deepcopy(pool)]})["value"][0]
    assert old_pool == {
        "id": "p",
        "targetDedicated": 1,
        "currentDedicated": 1,
        "maxTasksPerNode": 2,
        "resizeError": {"code": "AccountCoreQuotaReached", "message": "m"},
        "startTask": {
            "commandLine": "x",
            "runElevated": True,
            "resourceFiles": [{"blobSource": "u", "filePath": "f"}],
        },
    }
    assert adapter_for("2024-02-01.19.0").answer("get_pool", copy.deepcopy(pool)) == pool
    counts = {"taskCounts": dict(COUNTS), "taskSlotCounts": dict(COUNTS)}
    assert adapter_for("2017-06-01.5.1").answer("get_job_task_counts", copy.deepcopy(counts)) == {
        **COUNTS,
        "validationStatus": "validated",
    }
    assert adapter_for("2019-08-01.10.0").answer("get_job_task_counts", copy.deepcopy(counts)) == COUNTS
    assert adapter_for("2022-10-01.16.0").answer("get_job_task_counts", copy.deepcopy(counts)) == counts


def test_old_task_answers_show_scheduling_errors_but_not_exit_code_failures() -> None:
    def task(code: str) -> dict[str, Any]:
        return {
            "id": "t",
            "executionInfo": {
                "exitCode": 1,
                "result": "failure",
                "failureInfo": {"code": code, "category": "usererror"},
            },
            "outputFiles": [],
            "exitConditions": {
                "preProcessingError": {"jobAction": "none"},
                "fileUploadError": {"jobAction": "none"},
            },
        }

    adapter = adapter_for(TUTORIAL_ERA)
    exited = adapter.answer("get_task", task("FailureExitCode"))
    assert exited["executionInfo"] == {"exitCode": 1}
    assert exited["exitConditions"] == {"schedulingError": {"jobAction": "none"}}
    assert "outputFiles" not in exited and exited["runElevated"] is False
    assert adapter.answer("get_task", task("TaskEnded"))["executionInfo"] == {"exitCode": 1}
    download = adapter.answer("get_task", task("BlobNotFound"))
    assert download["executionInfo"]["schedulingError"] == {"code": "BlobNotFound", "category": "usererror"}
    collection = adapter.answer(
        "create_task_collection",
        {
            "value": [
                {"status": "clienterror", "error": {"values": [{"key": "PropertyName", "value": "httpUrl"}]}}
            ]
        },
    )
    assert collection["value"][0]["error"]["values"] == [{"key": "PropertyName", "value": "blobSource"}]


@given(
    dedicated=st.integers(0, 1000),
    elevated=st.booleans(),
    urls=st.lists(st.text(min_size=1, max_size=20), max_size=3),
    slots=st.integers(1, 256),
)
def test_an_old_client_reads_back_what_it_wrote(
    dedicated: int, elevated: bool, urls: list[str], slots: int
) -> None:
    """Up then down is the identity on the translated properties, for every version before each step."""
    written = {
        "id": "p",
        "targetDedicated": dedicated,
        "maxTasksPerNode": slots,
        "startTask": {
            "commandLine": "c",
            "runElevated": elevated,
            "waitForSuccess": True,
            "resourceFiles": [{"blobSource": url, "filePath": f"f{index}"} for index, url in enumerate(urls)],
        },
    }
    adapter = adapter_for(TUTORIAL_ERA)
    stored = adapter.request("create_pool", copy.deepcopy(written))
    assert adapter.answer("get_pool", stored) == written
