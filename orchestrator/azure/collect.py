"""Fetch what a finished task left: its `_OUTPUT` file and counts on success, its stderr tail on failure."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob.aio import BlobServiceClient

from orchestrator import naming
from orchestrator.azure.nodefiles import STDERR_TAIL_BYTES, stderr_tail
from orchestrator.azure.retry import RetryPolicy, retry_call
from orchestrator.results import CountsFormatError, FileCounts, parse_counts_blob, write_result


class OutputUnusableError(Exception):
    """A task reported success but its outputs cannot be used: missing, unreadable or unsafely named."""


class TaskFileClient(Protocol):
    """The Batch operation that reads a task's files (azure.batch.aio.BatchClient has it)."""

    async def download_task_file(
        self, job_id: str, task_id: str, file_path: str, **kwargs: Any
    ) -> AsyncIterator[bytes]: ...


@dataclass(frozen=True)
class CollectedOutput:
    """A succeeded task's results, saved locally."""

    local_path: Path
    size_bytes: int
    counts: FileCounts


async def download_outputs(
    blob_service: BlobServiceClient, container: str, relpath: str, out_dir: Path, retry: RetryPolicy
) -> CollectedOutput:
    """Save `<relpath>_OUTPUT` under out_dir (atomically) and parse the counts blob."""

    async def fetch(blob_name: str) -> bytes:
        blob = blob_service.get_blob_client(container, blob_name)
        return await retry_call(retry, "download_blob", lambda: _read_blob(blob))

    try:
        output = await fetch(naming.output_name(relpath))
        counts_blob = await fetch(naming.counts_name(relpath))
    except ResourceNotFoundError as error:
        raise OutputUnusableError(
            f"the task finished but its output blob is missing ({error.reason})"
        ) from None
    try:
        counts = parse_counts_blob(counts_blob)
    except CountsFormatError as error:
        raise OutputUnusableError(f"the task's counts blob is unreadable: {error}") from None
    try:
        # fsync and rename block; keep them off the event loop that drives every other download.
        local_path = await anyio.to_thread.run_sync(
            write_result, out_dir, naming.output_name(relpath), output
        )
    except naming.UnsafeNameError as error:
        raise OutputUnusableError(f"its output was not saved: {error}") from None
    return CollectedOutput(local_path=local_path, size_bytes=len(output), counts=counts)


async def read_counts(
    blob_service: BlobServiceClient, container: str, relpath: str, retry: RetryPolicy
) -> FileCounts:
    """The counts blob of an output saved earlier (a resumed run's summary needs its full counts)."""
    blob = blob_service.get_blob_client(container, naming.counts_name(relpath))
    try:
        data = await retry_call(retry, "download_blob", lambda: _read_blob(blob))
        return parse_counts_blob(data)
    except ResourceNotFoundError as error:
        raise OutputUnusableError(f"the counts blob of {relpath} is missing ({error.reason})") from None
    except CountsFormatError as error:
        raise OutputUnusableError(f"the counts blob of {relpath} is unreadable: {error}") from None


async def _read_blob(blob: Any) -> bytes:
    downloader = await blob.download_blob()
    data: bytes = await downloader.readall()
    return data


async def task_stderr_tail(batch: TaskFileClient, job_id: str, task_id: str, retry: RetryPolicy) -> str:
    """The end of a task's stderr.txt, or a note saying why it could not be read."""

    async def read() -> bytes:
        stream = await batch.download_task_file(job_id, task_id, "stderr.txt")
        data = b""
        async for chunk in stream:
            data = (data + chunk)[-STDERR_TAIL_BYTES * 4 :]  # bounded memory for a chatty task
        return data

    try:
        return stderr_tail(await retry_call(retry, "get_task_file", read))
    except HttpResponseError as error:
        return f"(stderr.txt could not be read: HTTP {error.status_code})"
