"""Older api-versions over the wire: what an old client writes it reads back, in its own shapes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.conftest import BatchEndpoint
from tests.integration.emulator.conftest import wait_for
from tests.integration.emulator.signed_http import SignedHttp
from tests.integration.emulator.test_task_runtime import Storage, storage  # noqa: F401 (fixture)

pytestmark = pytest.mark.asyncio(loop_scope="session")
TUTORIAL_ERA = "2016-07-01.3.1"  # azure-batch 1.1.0, the seed tutorial's client
JS_CLIENT = "2022-10-01.16.0"  # @azure/batch 10.2.0
TRACK1_AND_CLI = "2024-02-01.19.0"  # azure-batch 14.2.0, az batch
CURRENT = "2025-06-01"  # azure-batch 15.1


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def vm_configuration() -> dict[str, Any]:
    return {
        "imageReference": {"publisher": "Canonical", "offer": "UbuntuServer", "sku": "16.04-LTS"},
        "nodeAgentSKUId": "batch.node.ubuntu 16.04",
    }


@pytest_asyncio.fixture(loop_scope="session")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def wait_pool_nodes(http: SignedHttp, pool_id: str, key: str, count: int) -> dict[str, Any]:
    """Wait until the pool is steady with `count` nodes counted under `key`; returns the pool."""
    seen: list[dict[str, Any]] = []

    async def steady() -> bool:
        pool = await http.ok("GET", f"/pools/{pool_id}")
        seen.append(pool)
        return bool(pool["allocationState"] == "steady" and pool.get(key) == count)

    await wait_for(steady, 30, f"pool {pool_id} to be steady with {count} nodes")
    return seen[-1]


@pytest.mark.parametrize("version", ["2030-01-01.99.0", "2016-02-01.3.0", "2025-06-01.1", "latest"])
async def test_unknown_versions_are_refused_naming_the_range(
    batch_emulator: BatchEndpoint, session: aiohttp.ClientSession, version: str
) -> None:
    status, error = await SignedHttp(batch_emulator, session, version).call("GET", "/pools")
    assert status == 400
    assert error["code"] == "UnsupportedRequestVersion"
    assert "2016-07-01.3.1 to 2025-06-01" in error["message"]["value"]


@pytest.mark.parametrize("version", [TUTORIAL_ERA, JS_CLIENT, TRACK1_AND_CLI, CURRENT])
async def test_every_client_version_is_served(
    batch_emulator: BatchEndpoint, session: aiohttp.ClientSession, version: str
) -> None:
    answer = await SignedHttp(batch_emulator, session, version).ok("GET", "/jobs")
    assert isinstance(answer["value"], list)


async def test_tutorial_era_client_reads_back_what_it_wrote(
    batch_emulator: BatchEndpoint,
    session: aiohttp.ClientSession,
    storage: Storage,  # noqa: F811
) -> None:
    http = SignedHttp(batch_emulator, session, TUTORIAL_ERA)
    pool_id, job_id = unique("pool"), unique("job")
    await storage.container.upload_blob("words.txt", b"alpha beta beta\n")
    script_url = storage.blob_url("words.txt")

    skus = (await http.ok("GET", "/nodeagentskus"))["value"]
    ubuntu = next(sku for sku in skus if sku["id"] == "batch.node.ubuntu 16.04")
    assert ubuntu["osType"] == "linux"
    assert {"publisher": "Canonical", "offer": "UbuntuServer"}.items() <= ubuntu["verifiedImageReferences"][
        0
    ].items()
    for missing in ("/supportedimages", f"/jobs/{job_id}/taskcounts"):
        status, error = await http.call("GET", missing)
        assert (status, error["code"]) == (404, "ResourceNotFound")

    status, error = await http.call(
        "POST",
        "/pools",
        {
            "id": pool_id,
            "vmSize": "small",
            "virtualMachineConfiguration": vm_configuration(),
            "targetDedicated": -1,
        },
    )
    assert (status, error["code"]) == (400, "InvalidPropertyValue")
    assert {"key": "PropertyName", "value": "targetDedicated"} in error["values"]
    status, error = await http.call(
        "POST",
        "/pools",
        {
            "id": pool_id,
            "vmSize": "small",
            "virtualMachineConfiguration": vm_configuration(),
            "targetDedicatedNodes": 1,
        },
    )
    assert status == 400 and {"key": "PropertyName", "value": "targetDedicatedNodes"} in error["values"]

    await http.ok(
        "POST",
        "/pools",
        {
            "id": pool_id,
            "vmSize": "small",
            "virtualMachineConfiguration": vm_configuration(),
            "targetDedicated": 1,
            "maxTasksPerNode": 2,
            "startTask": {
                "commandLine": "/bin/sh -c 'cp words.txt $AZ_BATCH_NODE_SHARED_DIR/'",
                "resourceFiles": [{"blobSource": script_url, "filePath": "words.txt"}],
                "runElevated": True,
                "waitForSuccess": True,
            },
        },
    )
    pool = await wait_pool_nodes(http, pool_id, "currentDedicated", 1)
    assert pool["targetDedicated"] == 1 and pool["maxTasksPerNode"] == 2
    for newer in (
        "targetDedicatedNodes",
        "currentDedicatedNodes",
        "taskSlotsPerNode",
        "targetLowPriorityNodes",
    ):
        assert newer not in pool
    assert pool["startTask"]["runElevated"] is True and "userIdentity" not in pool["startTask"]
    assert pool["startTask"]["resourceFiles"] == [{"blobSource": script_url, "filePath": "words.txt"}]
    selected = await http.ok(
        "GET", f"/pools/{pool_id}", query={"$select": "id,targetDedicated,currentDedicated"}
    )
    assert selected == {"id": pool_id, "targetDedicated": 1, "currentDedicated": 1}

    nodes: list[dict[str, Any]] = []

    async def node_ready() -> bool:
        nodes[:] = (await http.ok("GET", f"/pools/{pool_id}/nodes"))["value"]
        return bool(nodes) and nodes[0]["state"] == "idle"

    await wait_for(node_ready, 30, "the node's start task to succeed")
    node = nodes[0]
    assert node["startTask"]["runElevated"] is True
    assert node["startTaskInfo"]["exitCode"] == 0 and "result" not in node["startTaskInfo"]

    await http.ok("POST", "/jobs", {"id": job_id, "poolInfo": {"poolId": pool_id}})
    tasks = [
        {
            "id": "reads",
            "commandLine": "/bin/sh -c 'cat words.txt $AZ_BATCH_NODE_SHARED_DIR/words.txt'",
            "resourceFiles": [{"blobSource": script_url, "filePath": "words.txt"}],
            "runElevated": True,
        },
        {"id": "exits", "commandLine": "/bin/false"},
        {
            "id": "missing",
            "commandLine": "/bin/true",
            "resourceFiles": [{"blobSource": storage.blob_url("absent.txt"), "filePath": "absent.txt"}],
        },
    ]
    results = (await http.ok("POST", f"/jobs/{job_id}/addtaskcollection", {"value": tasks}))["value"]
    assert [result["status"] for result in results] == ["success"] * 3

    async def all_completed() -> bool:
        listed = (await http.ok("GET", f"/jobs/{job_id}/tasks"))["value"]
        return len(listed) == 3 and all(task["state"] == "completed" for task in listed)

    await wait_for(all_completed, 30, "the tutorial-era tasks to complete")
    listed = {task["id"]: task for task in (await http.ok("GET", f"/jobs/{job_id}/tasks"))["value"]}
    reads, exits, missing = listed["reads"], listed["exits"], listed["missing"]
    assert reads["runElevated"] is True and "userIdentity" not in reads
    assert reads["resourceFiles"] == [{"blobSource": script_url, "filePath": "words.txt"}]
    assert reads["executionInfo"]["exitCode"] == 0
    assert exits["runElevated"] is False
    # An exit-code failure was no scheduling error in this version; a download failure was.
    assert exits["executionInfo"]["exitCode"] == 1
    for info in (reads["executionInfo"], exits["executionInfo"]):
        assert not {"result", "failureInfo", "schedulingError"} & info.keys()
    assert missing["executionInfo"]["schedulingError"]["code"] == "BlobNotFound"
    assert "failureInfo" not in missing["executionInfo"]

    status, output = await http.send("GET", f"/jobs/{job_id}/tasks/reads/files/stdout.txt")
    assert (status, output) == (200, b"alpha beta beta\n" * 2)

    await http.ok("POST", f"/pools/{pool_id}/resize", {"targetDedicated": 2})
    pool = await wait_pool_nodes(http, pool_id, "currentDedicated", 2)
    assert pool["targetDedicated"] == 2

    await http.ok("DELETE", f"/jobs/{job_id}")
    await http.ok("DELETE", f"/pools/{pool_id}")


async def test_cli_numbers_as_strings_create_and_resize_a_pool(
    batch_emulator: BatchEndpoint, session: aiohttp.ClientSession
) -> None:
    http = SignedHttp(batch_emulator, session, TRACK1_AND_CLI)
    pool_id = unique("pool")
    base = {"id": pool_id, "vmSize": "standard_d2s_v3", "virtualMachineConfiguration": vm_configuration()}
    status, error = await http.call("POST", "/pools", {**base, "targetDedicatedNodes": "one"})
    assert (status, error["code"]) == (400, "InvalidPropertyValue")
    assert {"key": "PropertyName", "value": "targetDedicatedNodes"} in error["values"]
    status, error = await http.call(
        "POST", "/pools", {**base, "mountConfiguration": [{"nfsMountConfiguration": {}}]}
    )
    assert status == 400 and {"key": "PropertyName", "value": "mountConfiguration"} in error["values"]

    await http.ok(
        "POST", "/pools", {**base, "targetDedicatedNodes": "1", "enableInterNodeCommunication": "false"}
    )
    pool = await wait_pool_nodes(http, pool_id, "currentDedicatedNodes", 1)
    assert pool["targetDedicatedNodes"] == 1 and pool["enableInterNodeCommunication"] is False
    await http.ok("POST", f"/pools/{pool_id}/resize", {"targetDedicatedNodes": "2"})
    await wait_pool_nodes(http, pool_id, "currentDedicatedNodes", 2)
    await http.ok("DELETE", f"/pools/{pool_id}")


@pytest.mark.parametrize(
    ("version", "shape"),
    [
        ("2017-06-01.5.1", "bare+validation"),
        ("2019-08-01.10.0", "bare"),
        (JS_CLIENT, "slots"),
        (CURRENT, "slots"),
    ],
)
async def test_task_counts_take_each_versions_shape(
    batch_emulator: BatchEndpoint, session: aiohttp.ClientSession, version: str, shape: str
) -> None:
    http = SignedHttp(batch_emulator, session, version)
    job_id = unique("job")
    await http.ok("POST", "/jobs", {"id": job_id, "poolInfo": {"poolId": unique("nopool")}})
    await http.ok("POST", f"/jobs/{job_id}/tasks", {"id": "waits", "commandLine": "/bin/true"})
    counts = await http.ok("GET", f"/jobs/{job_id}/taskcounts")
    expected = {"active": 1, "running": 0, "completed": 0, "succeeded": 0, "failed": 0}
    if shape == "slots":
        assert counts["taskCounts"] == expected and counts["taskSlotCounts"]["active"] == 1
    else:
        assert {key: counts.pop(key) for key in expected} == expected
        assert counts == ({"validationStatus": "validated"} if shape == "bare+validation" else {})
    await http.ok("DELETE", f"/jobs/{job_id}")


async def test_2019_era_pool_keeps_its_slots_name_and_start_task_default(
    batch_emulator: BatchEndpoint, session: aiohttp.ClientSession
) -> None:
    http = SignedHttp(batch_emulator, session, "2019-08-01.10.0")
    old = SignedHttp(batch_emulator, session, "2019-06-01.9.0")
    pool_id = unique("pool")
    start_task = {
        "commandLine": "/bin/true",
        "resourceFiles": [{"httpUrl": "http://127.0.0.1:9/x", "filePath": "x"}],
    }
    for client, name in ((http, pool_id), (old, pool_id + "-old")):
        await client.ok(
            "POST",
            "/pools",
            {
                "id": name,
                "vmSize": "standard_d2s_v3",
                "virtualMachineConfiguration": vm_configuration(),
                "maxTasksPerNode": 3,
                "startTask": start_task,
            },
        )
    pool = await http.ok("GET", f"/pools/{pool_id}")
    assert pool["maxTasksPerNode"] == 3 and "taskSlotsPerNode" not in pool
    assert pool["startTask"]["resourceFiles"] == start_task["resourceFiles"]
    assert pool["startTask"]["waitForSuccess"] is True  # the default from 2019-08-01.10.0 on
    assert (await old.ok("GET", f"/pools/{pool_id}-old"))["startTask"]["waitForSuccess"] is False
    current = await SignedHttp(batch_emulator, session, CURRENT).ok("GET", f"/pools/{pool_id}")
    assert current["taskSlotsPerNode"] == 3
    for name in (pool_id, pool_id + "-old"):
        await http.ok("DELETE", f"/pools/{name}")
