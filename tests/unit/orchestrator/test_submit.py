"""Bulk submission: chunk planning (property-tested) and result handling against a small fake service."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from azure.batch.models import (
    BatchCreateTaskCollectionResult,
    BatchError,
    BatchErrorMessage,
    BatchTaskCreateOptions,
    BatchTaskCreateResult,
    BatchTaskGroup,
)
from azure.core.exceptions import HttpResponseError, ODataV4Format
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.azure.retry import RetryPolicy
from orchestrator.azure.submit import MAX_REQUEST_BYTES, plan_chunks, submit_tasks, task_json_size
from orchestrator.errors import RunFailedError

FAST = RetryPolicy(max_attempts=4, base_delay_s=0.0, max_delay_s=0.0, deadline_s=30)


@given(
    sizes=st.lists(st.integers(1, 400_000), max_size=300),
    max_tasks=st.integers(1, 120),
)
def test_chunks_cover_every_task_once_in_order_within_limits(sizes: list[int], max_tasks: int) -> None:
    chunks = plan_chunks(sizes, max_tasks=max_tasks, max_bytes=MAX_REQUEST_BYTES)
    flattened = [index for chunk in chunks for index in chunk]
    assert flattened == list(range(len(sizes)))
    for chunk in chunks:
        assert 1 <= len(chunk) <= max_tasks
        body = len('{"value":[]}') + sum(sizes[i] for i in chunk) + len(chunk) - 1
        assert body < MAX_REQUEST_BYTES or len(chunk) == 1


def test_many_small_tasks_fill_chunks_of_one_hundred() -> None:
    assert [len(chunk) for chunk in plan_chunks([500] * 250)] == [100, 100, 50]


def task(number: int, padding: int = 0) -> BatchTaskCreateOptions:
    return BatchTaskCreateOptions(id=f"t{number:06d}", command_line="/bin/true" + " " * padding)


def test_task_size_is_its_wire_json() -> None:
    small, large = task(1), task(1, padding=1000)
    assert task_json_size(large) - task_json_size(small) == 1000


def http_error(status: int, code: str) -> HttpResponseError:
    error = HttpResponseError(message=f"{status} {code}")
    error.status_code = status
    error.error = ODataV4Format({"code": code, "message": f"{code} happened"})
    return error


class FakeBatch:
    """Answers create_task_collection from a script of per-call behaviours."""

    def __init__(self, max_tasks_per_body: int = 100) -> None:
        self.requests: list[list[str]] = []
        self.added: set[str] = set()
        self.max_tasks_per_body = max_tasks_per_body
        self.server_errors: dict[str, int] = {}  # task id -> how many times to answer servererror
        self.refused: dict[str, str] = {}  # task id -> clienterror code
        self.whole_request_failures: list[HttpResponseError] = []

    async def create_task_collection(
        self, job_id: str, task_collection: BatchTaskGroup, **kwargs: Any
    ) -> BatchCreateTaskCollectionResult:
        ids = [t.id for t in task_collection.task_values]
        self.requests.append(ids)
        if self.whole_request_failures:
            raise self.whole_request_failures.pop(0)
        if len(ids) > self.max_tasks_per_body:
            raise http_error(413, "RequestBodyTooLarge")
        results = []
        for task_id in reversed(ids):  # the service does not promise order
            if self.server_errors.get(task_id, 0) > 0:
                self.server_errors[task_id] -= 1
                results.append(self.result(task_id, "servererror", "ServerBusy"))
            elif task_id in self.refused:
                results.append(self.result(task_id, "clienterror", self.refused[task_id]))
            elif task_id in self.added:
                results.append(self.result(task_id, "clienterror", "TaskExists"))
            else:
                self.added.add(task_id)
                results.append(BatchTaskCreateResult(status="success", task_id=task_id))
        return BatchCreateTaskCollectionResult(result_values=results)

    @staticmethod
    def result(task_id: str, status: str, code: str) -> BatchTaskCreateResult:
        return BatchTaskCreateResult(
            status=status, task_id=task_id, error=BatchError(code=code, message=BatchErrorMessage(value=code))
        )


def tasks_of(count: int) -> list[BatchTaskCreateOptions]:
    return [task(number) for number in range(count)]


async def test_all_tasks_are_added_in_chunks_of_at_most_one_hundred() -> None:
    batch = FakeBatch()
    seen: list[str] = []

    async def added(ids: Sequence[str]) -> None:
        seen.extend(ids)

    report = await submit_tasks(batch, "j", tasks_of(250), concurrency=3, retry=FAST, on_chunk_added=added)
    assert batch.added == {f"t{n:06d}" for n in range(250)}
    assert sorted(len(ids) for ids in batch.requests) == [50, 100, 100]
    assert report.tasks_added == 250 and report.requests == 3
    assert sorted(seen) == sorted(batch.added)


async def test_resubmission_counts_task_exists_as_added() -> None:
    batch = FakeBatch()
    await submit_tasks(batch, "j", tasks_of(5), concurrency=2, retry=FAST)
    report = await submit_tasks(batch, "j", tasks_of(5), concurrency=2, retry=FAST)
    assert report.tasks_added == 5 and report.already_existed == 5


async def test_per_task_server_errors_resend_only_those_tasks() -> None:
    batch = FakeBatch()
    batch.server_errors = {"t000003": 2}
    report = await submit_tasks(batch, "j", tasks_of(10), concurrency=1, retry=FAST)
    assert batch.requests[1:] == [["t000003"], ["t000003"]]
    assert report.tasks_added == 10


async def test_persistent_server_errors_stop_after_the_policy_attempts() -> None:
    batch = FakeBatch()
    batch.server_errors = {"t000001": 1000}
    with pytest.raises(RunFailedError, match="kept failing"):
        await submit_tasks(batch, "j", tasks_of(3), concurrency=1, retry=FAST)
    assert len(batch.requests) == FAST.max_attempts


async def test_a_refused_task_fails_the_submission_with_its_code() -> None:
    batch = FakeBatch()
    batch.refused = {"t000002": "InvalidPropertyValue"}
    with pytest.raises(RunFailedError, match=r"t000002.*InvalidPropertyValue"):
        await submit_tasks(batch, "j", tasks_of(4), concurrency=1, retry=FAST)


async def test_too_large_bodies_are_split_until_they_fit() -> None:
    batch = FakeBatch(max_tasks_per_body=30)
    report = await submit_tasks(batch, "j", tasks_of(100), concurrency=2, retry=FAST)
    assert len(batch.added) == 100
    assert sorted(len(ids) for ids in batch.requests) == [25, 25, 25, 25, 50, 50, 100]
    assert report.splits == 3


async def test_whole_request_5xx_is_retried_then_succeeds() -> None:
    batch = FakeBatch()
    batch.whole_request_failures = [http_error(503, "ServerBusy"), http_error(500, "InternalError")]
    report = await submit_tasks(batch, "j", tasks_of(7), concurrency=1, retry=FAST)
    assert report.tasks_added == 7 and len(batch.requests) == 3


async def test_job_not_found_is_reported_not_retried() -> None:
    batch = FakeBatch()
    batch.whole_request_failures = [http_error(404, "JobNotFound")]
    with pytest.raises(RunFailedError, match="JobNotFound"):
        await submit_tasks(batch, "j", tasks_of(2), concurrency=1, retry=FAST)
    assert len(batch.requests) == 1
