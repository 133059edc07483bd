"""SharedKey checks, body limits and validation errors, seen through the real SDK and raw HTTP."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.rest import HttpRequest

from tests.conftest import BatchEndpoint
from tests.integration.emulator.conftest import batch_client, pool_options

pytestmark = pytest.mark.asyncio(loop_scope="session")
API = "api-version=2025-06-01"
WRONG_KEY = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def stats(emulator: BatchEndpoint) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{emulator.endpoint}/_emulator/stats") as response,
    ):
        assert response.status == 200
        body: dict[str, Any] = await response.json(content_type=None)
        return body


async def test_wrong_key_is_rejected_and_creates_nothing(batch_emulator: BatchEndpoint) -> None:
    pool_id, job_id = unique("pool"), unique("job")
    async with batch_client(batch_emulator, key=WRONG_KEY) as intruder:
        with pytest.raises(HttpResponseError) as refused:
            await intruder.create_pool(pool_options(pool_id))
        assert refused.value.status_code == 403
        assert refused.value.error.code == "AuthenticationFailed"
        with pytest.raises(HttpResponseError) as refused_job:
            await intruder.create_job(
                models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id))
            )
        assert refused_job.value.error.code == "AuthenticationFailed"
    async with batch_client(batch_emulator) as owner:
        with pytest.raises(ResourceNotFoundError):
            await owner.get_pool(pool_id)
        with pytest.raises(ResourceNotFoundError):
            await owner.get_job(job_id)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "SharedKey"},
        {"Authorization": "SharedKey topnlocal"},
        {"Authorization": "SharedKey topnlocal:"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "SharedKey otheraccount:c2lnbmF0dXJl"},
    ],
)
async def test_missing_or_malformed_authorization_is_403(
    batch_emulator: BatchEndpoint, headers: dict[str, str]
) -> None:
    body = {
        "id": unique("pool"),
        "vmSize": "x",
        "virtualMachineConfiguration": {"nodeAgentSKUId": "n", "imageReference": {}},
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{batch_emulator.endpoint}/pools?{API}", json=body, headers=headers) as response,
    ):
        assert response.status == 403
        error = await response.json(content_type=None)
    assert error["code"] == "AuthenticationFailed"
    assert "RequestId:" in error["message"]["value"]
    async with batch_client(batch_emulator) as owner:
        with pytest.raises(ResourceNotFoundError):
            await owner.get_pool(body["id"])


@pytest.mark.parametrize(
    "literal",
    ["a b", "a+b", "100%", "x&y=z", "it''s", "naïve ünïcode 日本", "%2F/slash", "plus+and space"],
)
async def test_signatures_hold_for_awkward_filter_values(batch_emulator: BatchEndpoint, literal: str) -> None:
    job_id = unique("job")
    async with batch_client(batch_emulator) as client:
        await client.create_job(
            models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id="none"))
        )
        await client.create_task(job_id, models.BatchTaskCreateOptions(id="only", command_line="/bin/true"))
        query = f"id eq '{literal}' or id eq 'only'"
        found = [task.id async for task in client.list_tasks(job_id, filter=query)]
        assert found == ["only"]


async def test_raw_signed_requests_get_the_service_error_codes(batch_emulator: BatchEndpoint) -> None:
    job_id = unique("job")
    async with batch_client(batch_emulator) as client:

        async def send(method: str, path: str, body: bytes | None) -> tuple[int, dict[str, Any]]:
            request = HttpRequest(
                method,
                f"{path}?{API}",
                content=body,
                headers={"Content-Type": "application/json; odata=minimalmetadata"},
            )
            return await send_raw(request)

        async def send_raw(request: HttpRequest) -> tuple[int, dict[str, Any]]:
            # The SDK's error policy raises on any error status; the raw answer is on the exception.
            try:
                response = await client.send_request(request)
            except HttpResponseError as error:
                response = error.response
            text = response.text()
            return response.status_code, (json.loads(text) if text else {})

        status, error = await send("POST", "/jobs", b"{not json")
        assert (status, error["code"]) == (400, "InvalidRequestBody")
        status, error = await send("POST", "/jobs", json.dumps({"id": job_id}).encode())
        assert (status, error["code"]) == (400, "MissingRequiredProperty")
        assert {"key": "PropertyName", "value": "poolInfo"} in error["values"]
        status, error = await send(
            "POST", "/jobs", json.dumps({"id": "x" * 65, "poolInfo": {"poolId": "p"}}).encode()
        )
        assert (status, error["code"]) == (400, "InvalidPropertyValue")
        status, error = await send(
            "POST", "/jobs", json.dumps({"id": "bad id!", "poolInfo": {"poolId": "p"}}).encode()
        )
        assert (status, error["code"]) == (400, "InvalidPropertyValue")
        status, _ = await send(
            "POST", "/jobs", json.dumps({"id": job_id, "poolInfo": {"poolId": "p"}}).encode()
        )
        assert status == 201

        too_many = {"value": [{"id": f"t{index}", "commandLine": "/bin/true"} for index in range(101)]}
        status, error = await send("POST", f"/jobs/{job_id}/addtaskcollection", json.dumps(too_many).encode())
        assert (status, error["code"]) == (413, "RequestBodyTooLarge")
        too_big = {"value": [{"id": "big", "commandLine": "/bin/echo " + "x" * 1_100_000}]}
        status, error = await send("POST", f"/jobs/{job_id}/addtaskcollection", json.dumps(too_big).encode())
        assert (status, error["code"]) == (413, "RequestBodyTooLarge")

        mixed = {
            "value": [
                {"id": "good", "commandLine": "/bin/true"},
                {"id": "y" * 65, "commandLine": "/bin/true"},
                {"id": "no-command"},
                {"id": "dup", "commandLine": "/bin/true"},
                {"id": "DUP", "commandLine": "/bin/true"},
                {
                    "id": "escape",
                    "commandLine": "/bin/true",
                    "resourceFiles": [{"httpUrl": "http://h/x", "filePath": "../x"}],
                },
                {
                    "id": "absolute",
                    "commandLine": "/bin/true",
                    "resourceFiles": [{"httpUrl": "http://h/x", "filePath": "/etc/x"}],
                },
                "not an object",
            ]
        }
        status, body = await send("POST", f"/jobs/{job_id}/addtaskcollection", json.dumps(mixed).encode())
        assert status == 200
        outcome = {
            (item.get("taskId"), item["status"], item.get("error", {}).get("code")) for item in body["value"]
        }
        assert outcome == {
            ("good", "success", None),
            ("y" * 65, "clienterror", "InvalidPropertyValue"),
            ("no-command", "clienterror", "MissingRequiredProperty"),
            ("dup", "success", None),
            ("DUP", "clienterror", "InvalidPropertyValue"),
            ("escape", "clienterror", "InvalidPropertyValue"),
            ("absolute", "clienterror", "InvalidPropertyValue"),
            (None, "clienterror", "InvalidRequestBody"),
        }
        status, body = await send("POST", f"/jobs/{job_id}/addtaskcollection", json.dumps(mixed).encode())
        assert ("good", "TaskExists") in {
            (item.get("taskId"), item.get("error", {}).get("code")) for item in body["value"]
        }

        status, error = await send("GET", f"/jobs/{job_id}/tasks", None)
        assert status == 200
        status, error = await send_raw(HttpRequest("GET", f"/jobs/{job_id}/tasks?{API}&$filter=state%20eq"))
        assert (status, error["code"]) == (400, "InvalidQueryParameterValue")
        status, error = await send("GET", "/nothing/here", None)
        assert (status, error["code"]) == (404, "ResourceNotFound")
        status, error = await send("GET", f"/jobs/{job_id}/tasks/absent", None)
        assert (status, error["code"]) == (404, "TaskNotFound")


async def test_create_tasks_splits_large_bodies_after_json_413(batch_emulator: BatchEndpoint) -> None:
    job_id = unique("job")
    before = await stats(batch_emulator)
    # 150 tasks of ~15 KB each: a 100-task chunk is ~1.5 MB and must be halved by the SDK.
    padding = "p" * 15_000
    tasks = [
        models.BatchTaskCreateOptions(id=f"big{index:03d}", command_line=f"/bin/echo {padding}")
        for index in range(150)
    ]
    async with batch_client(batch_emulator) as client:
        await client.create_job(
            models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id="none"))
        )
        result = await client.create_tasks(job_id, tasks)
        assert len(result.result_values) == 150
        assert (await client.get_job_task_counts(job_id)).task_counts.active == 150
    after = await stats(batch_emulator)
    assert after["responses_by_status"].get("413", 0) > before["responses_by_status"].get("413", 0)
