"""Fetch what a finished task left: its unit's result blob (one request per task), its stderr tail."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob.aio import BlobServiceClient

from orchestrator import naming
from orchestrator.azure.nodefiles import STDERR_TAIL_BYTES, stderr_tail
from orchestrator.azure.retry import RetryPolicy, retry_call
from orchestrator.results import ResultWriter


class TaskFileClient(Protocol):
    """The Batch operation that reads a task's files (azure.batch.aio.BatchClient has it)."""

    async def download_task_file(
        self, job_id: str, task_id: str, file_path: str, **kwargs: Any
    ) -> AsyncIterator[bytes]: ...


async def read_unit_result(
    blob_service: BlobServiceClient, container: str, task_id: str, retry: RetryPolicy
) -> bytes | None:
    """A work unit's result blob (one request), or None when the task left none."""
    blob = blob_service.get_blob_client(container, naming.unit_result_name(task_id))
    try:
        return await retry_call(retry, "download_blob", lambda: _read_blob(blob))
    except ResourceNotFoundError:
        return None


def save_outputs(out_dir: Path, outputs: Sequence[tuple[str, bytes]]) -> list[Path | str]:
    """Write each `(name, text)` under out_dir atomically: its path, or why its name was refused.

    One call per unit, in one worker thread: writes and the filesystem sync block. The files are
    durable when it returns (one sync for them all), so the caller may journal them. A folder that
    cannot be written raises LocalWriteError (the run stays resumable); an unsafe name fails only its file.
    """
    saved: list[Path | str] = []
    writer = ResultWriter(out_dir, sync_later=True)
    for name, data in outputs:
        try:
            saved.append(writer.write(name, data))
        except naming.UnsafeNameError as error:
            saved.append(f"its output was not saved: {error}")
    writer.sync()
    return saved


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
