"""Bulk task submission: chunks of ≤100 tasks and < 1 MB, several requests in flight, every result checked.

We do not use the SDK's `create_tasks` helper: it loops forever on a persistent 5xx and sends chunks
in reverse order (shared/reference/azure-batch-rest.md §5.13). Here every retry is bounded, a
`TaskExists` result counts as added (so a resubmission after a crash is harmless), and a request the
service finds too large is split in two.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from azure.batch.models import BatchCreateTaskCollectionResult, BatchTaskCreateOptions, BatchTaskGroup
from azure.core.exceptions import HttpResponseError

from orchestrator.azure.retry import RetryPolicy, backoff_delay_s, error_code_of, retry_call, status_code_of
from orchestrator.errors import RunFailedError, first_leaf

MAX_TASKS_PER_REQUEST = 100
# The service refuses bodies of 1 MB or more; keep a margin for the envelope and rounding.
MAX_REQUEST_BYTES = 1_000_000
_ENVELOPE_BYTES = len('{"value":[]}')


class TaskCollectionClient(Protocol):
    """The one Batch operation submission needs (azure.batch.aio.BatchClient has it)."""

    def create_task_collection(
        self, job_id: str, task_collection: BatchTaskGroup, **kwargs: Any
    ) -> Awaitable[BatchCreateTaskCollectionResult]: ...


def task_json_size(task: BatchTaskCreateOptions) -> int:
    """Bytes the task takes in a request body, serialized as the SDK serializes it."""
    from azure.batch._utils.model_base import SdkJSONEncoder  # the SDK's own wire encoder

    return len(json.dumps(task, cls=SdkJSONEncoder, exclude_readonly=True).encode("utf-8"))


def plan_chunks(
    sizes: Sequence[int], max_tasks: int = MAX_TASKS_PER_REQUEST, max_bytes: int = MAX_REQUEST_BYTES
) -> list[range]:
    """Split tasks (given their JSON sizes) into consecutive chunks of ≤ max_tasks and < max_bytes.

    A task too large to fit even alone gets a chunk of its own; the service then says why.
    """
    if max_tasks < 1:
        raise ValueError("max_tasks must be at least 1")
    chunks: list[range] = []
    start = 0
    body = _ENVELOPE_BYTES
    for index, size in enumerate(sizes):
        separator = 1 if index > start else 0
        if index > start and (index - start >= max_tasks or body + separator + size >= max_bytes):
            chunks.append(range(start, index))
            start, body, separator = index, _ENVELOPE_BYTES, 0
        body += separator + size
    if start < len(sizes):
        chunks.append(range(start, len(sizes)))
    return chunks


@dataclass
class SubmitReport:
    """What submission cost: tasks added (TaskExists included), requests sent, requests split."""

    tasks_added: int = 0
    already_existed: int = 0
    requests: int = 0
    splits: int = 0


Sleep = Callable[[float], Awaitable[None]]


async def submit_tasks(
    batch: TaskCollectionClient,
    job_id: str,
    tasks: Sequence[BatchTaskCreateOptions],
    *,
    concurrency: int,
    retry: RetryPolicy,
    on_chunk_added: Callable[[Sequence[str]], Awaitable[None]] | None = None,
    max_tasks_per_request: int = MAX_TASKS_PER_REQUEST,
    sleep: Sleep = anyio.sleep,
    rand: Callable[[], float] = random.random,
) -> SubmitReport:
    """Add all tasks to the job; RunFailedError names a task the service refused, and why."""
    report = SubmitReport()
    limiter = anyio.CapacityLimiter(concurrency)
    sizes = [task_json_size(task) for task in tasks]

    async def send(chunk: list[BatchTaskCreateOptions]) -> None:
        pending = chunk
        attempt = 0
        while pending:
            attempt += 1
            report.requests += 1
            try:
                async with limiter:
                    request = functools.partial(
                        batch.create_task_collection, job_id, BatchTaskGroup(task_values=pending)
                    )
                    result = await retry_call(retry, "create_task_collection", request)
            except HttpResponseError as error:
                if status_code_of(error) == 413 and len(pending) > 1:
                    report.splits += 1
                    middle = len(pending) // 2
                    await send(pending[:middle])
                    await send(pending[middle:])
                    return
                raise RunFailedError(
                    f"adding tasks to job {job_id} failed: {describe_http_error(error)}"
                ) from None
            retry_ids, added = check_results(job_id, pending, result, report)
            if on_chunk_added is not None and added:
                await on_chunk_added(added)
            pending = [task for task in pending if task.id in retry_ids]
            if pending:
                if attempt >= retry.max_attempts:
                    raise RunFailedError(
                        f"the Batch service kept failing to add {len(pending)} task(s) to job {job_id} "
                        f"(e.g. {pending[0].id}) after {attempt} attempts; try again later"
                    )
                await sleep(backoff_delay_s(retry, attempt, rand()))

    try:
        async with anyio.create_task_group() as group:
            for chunk in plan_chunks(sizes, max_tasks=max_tasks_per_request):
                group.start_soon(send, [tasks[index] for index in chunk])
    except BaseExceptionGroup as errors:
        raise first_leaf(errors) from None
    return report


def check_results(
    job_id: str,
    sent: Sequence[BatchTaskCreateOptions],
    result: BatchCreateTaskCollectionResult,
    report: SubmitReport,
) -> tuple[set[str], list[str]]:
    """Sort per-task results: (ids to send again, ids now in the job); a refused task raises."""
    expected = {task.id for task in sent}
    retry_ids = set(expected)  # a task the response does not mention is sent again
    added: list[str] = []
    for item in result.result_values or []:
        if item.task_id not in expected:
            continue
        code = item.error.code if item.error is not None else None
        if item.status == "success" or (item.status == "clienterror" and code == "TaskExists"):
            retry_ids.discard(item.task_id)
            added.append(item.task_id)
            report.tasks_added += 1
            if code == "TaskExists":
                report.already_existed += 1
        elif item.status == "clienterror":
            message = item.error.message.value if item.error is not None and item.error.message else ""
            raise RunFailedError(
                f"the Batch service refused task {item.task_id} of job {job_id}: {code} {message}"
            )
    return retry_ids, added


def describe_http_error(error: HttpResponseError) -> str:
    """`status code: message` of a service error, first line only (no request ids or bodies)."""
    code = error_code_of(error) or type(error).__name__
    message = getattr(getattr(error, "error", None), "message", None) or ""
    first_line = str(message).splitlines()[0] if message else ""
    return f"{status_code_of(error)} {code}: {first_line}".strip()
