"""Upload each unit's pack: its small local inputs read in batches in a worker thread, sent as one blob.

A pack up to PACK_PUT_BYTES is one Put Blob (the short pipeline of azure/putblob.py under a shared
key, the SDK's upload under Entra ID); a bigger one goes up as staged blocks of that size and one
commit, so memory holds a block and a batch of files per pack in flight, never the pack. Each
input's MD5 is that of the bytes read into the pack (what a resume compares), its extent where they
lie. An input that changed size since discovery is packed as it is now; one that keeps changing
while it is read, or cannot be read, is left out and reported (only it fails); one that grew past
`[run] pack_max_bytes` goes up as a blob of its own, as a big input does.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import structlog
from azure.storage.blob import BlobBlock, ContentSettings
from azure.storage.blob.aio import BlobServiceClient

from orchestrator.azure import staging
from orchestrator.azure.putblob import BlobService
from orchestrator.azure.retry import RetryPolicy, retry_call
from orchestrator.errors import first_leaf
from orchestrator.inputs import InputFile

log = structlog.get_logger()

# The largest pack sent in one request; a bigger one goes up in blocks of this size.
PACK_PUT_BYTES = 4 * 1024 * 1024
# A pack's inputs are read in worker-thread trips of up to this many files (or about this many bytes).
READ_BATCH_FILES = 64
READ_BATCH_BYTES = 1024 * 1024
PACK_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class _Read:
    """A file read whole: its bytes, and its version before and after (equal: a consistent read)."""

    before: staging.FileVersion
    data: bytes
    md5_hex: str
    after: staging.FileVersion


@dataclass(frozen=True)
class _TooBig:
    """A file now larger than a packed input may be."""

    size_bytes: int


def _read_one(path: Path, limit: int) -> _Read | _TooBig | OSError:
    try:
        before = staging.file_version(path)
        if before[0] > limit:
            return _TooBig(before[0])
        data = path.read_bytes()
        md5_hex = hashlib.md5(data, usedforsecurity=False).hexdigest()
        return _Read(before, data, md5_hex, staging.file_version(path))
    except OSError as error:
        return error


def _read_batch(paths: Sequence[Path], limit: int) -> list[_Read | _TooBig | OSError]:
    """Each file's read, in one worker-thread trip."""
    return [_read_one(path, limit) for path in paths]


def _batches(items: Sequence[InputFile]) -> list[list[InputFile]]:
    batches: list[list[InputFile]] = [[]]
    size = 0
    for item in items:
        if batches[-1] and (len(batches[-1]) >= READ_BATCH_FILES or size >= READ_BATCH_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += item.size_bytes
    return batches


class _PackWriter:
    """Collects a pack's bytes: one Put Blob at the end when they fit PACK_PUT_BYTES, else blocks."""

    def __init__(self, blob_service: BlobServiceClient, container: str, blob_name: str, retry: RetryPolicy):
        self._service = blob_service
        self._container = container
        self._blob_name = blob_name
        self._retry = retry
        self._buffer = bytearray()
        self._blocks: list[str] = []
        self._md5 = hashlib.md5(usedforsecurity=False)
        self.size_bytes = 0

    async def add(self, data: bytes) -> None:
        self._buffer += data
        self._md5.update(data)
        self.size_bytes += len(data)
        while len(self._buffer) > PACK_PUT_BYTES:
            await self._stage_block(bytes(self._buffer[:PACK_PUT_BYTES]))
            del self._buffer[:PACK_PUT_BYTES]

    async def _stage_block(self, data: bytes) -> None:
        block_id = base64.b64encode(f"pack-{len(self._blocks):08d}".encode()).decode("ascii")
        blob = self._service.get_blob_client(self._container, self._blob_name)
        await retry_call(
            staging.retry_for_upload(self._retry, len(data)),
            "stage_block",
            lambda: blob.stage_block(block_id, data),
        )
        self._blocks.append(block_id)

    async def finish(self) -> None:
        """Send what is left: the whole pack in one request, or its last block and the block list."""
        md5 = self._md5.digest()
        settings = ContentSettings(content_type=PACK_CONTENT_TYPE, content_md5=bytearray(md5))
        if self._blocks:
            if self._buffer:
                await self._stage_block(bytes(self._buffer))
            blob = self._service.get_blob_client(self._container, self._blob_name)
            blocks = [BlobBlock(block_id) for block_id in self._blocks]
            await retry_call(
                self._retry,
                "commit_block_list",
                lambda: blob.commit_block_list(blocks, content_settings=settings),
            )
            return
        data = bytes(self._buffer)
        putter = self._service.putter if isinstance(self._service, BlobService) else None
        retry = staging.retry_for_upload(self._retry, len(data))
        if putter is not None:
            await retry_call(
                retry,
                "upload_blob",
                lambda: putter.put(
                    self._container,
                    self._blob_name,
                    data,
                    content_md5=md5,
                    content_type=PACK_CONTENT_TYPE,
                    overwrite=True,
                ),
            )
        else:
            blob = self._service.get_blob_client(self._container, self._blob_name)
            await retry_call(
                retry,
                "upload_blob",
                lambda: blob.upload_blob(data, overwrite=True, content_settings=settings),
            )


async def upload_packs(
    blob_service: BlobServiceClient,
    container: str,
    run_id: str,
    packs: Sequence[tuple[str, Sequence[InputFile]]],
    *,
    pack_max_bytes: int,
    concurrency: int,
    retry: RetryPolicy,
    on_staged: staging.UploadedCallback | None = None,
) -> list[staging.StagedInput]:
    """Upload each `(pack blob name, its inputs)` with at most `concurrency` packs in flight.

    `on_staged` hears of each input of a pack once the pack is in Blob Storage (or of the input alone,
    when it went up alone or could not be read). Returns every input's StagedInput (`index` 0: the
    caller numbers them).
    """
    staged: list[staging.StagedInput] = []
    pending = iter(packs)

    async def settle(items: list[staging.StagedInput]) -> None:
        staged.extend(items)
        if on_staged is not None:
            for item in items:
                await on_staged(item)

    async def worker() -> None:
        for blob_name, items in pending:
            await settle(
                await _upload_pack(blob_service, container, run_id, blob_name, items, pack_max_bytes, retry)
            )

    try:
        async with anyio.create_task_group() as group:
            for _ in range(min(concurrency, len(packs))):
                group.start_soon(worker)
    except BaseExceptionGroup as errors:
        raise first_leaf(errors) from None
    return staged


async def _upload_pack(
    blob_service: BlobServiceClient,
    container: str,
    run_id: str,
    blob_name: str,
    items: Sequence[InputFile],
    pack_max_bytes: int,
    retry: RetryPolicy,
) -> list[staging.StagedInput]:
    started = time.monotonic()
    writer = _PackWriter(blob_service, container, blob_name, retry)
    packed: list[staging.StagedInput] = []
    alone: list[staging.StagedInput] = []
    for batch in _batches(items):
        reads = await anyio.to_thread.run_sync(_read_batch, [item.path for item in batch], pack_max_bytes)
        for item, read in zip(batch, reads, strict=True):
            outcome = await _settled_read(item, read, pack_max_bytes)
            if isinstance(outcome, _Read):
                extent = (writer.size_bytes, len(outcome.data))
                await writer.add(outcome.data)
                packed.append(
                    staging.StagedInput(
                        0, item.relpath, blob_name, outcome.md5_hex, extent[1], False, extent=extent
                    )
                )
            elif isinstance(outcome, _TooBig):  # grew past the limit since discovery: a blob of its own
                alone.append(await staging.stage_input_file(blob_service, container, run_id, item, retry))
            else:
                log.warning("input.unreadable", file=item.relpath, error=outcome)
                alone.append(
                    staging.StagedInput(0, item.relpath, blob_name, "", 0, False, unreadable=outcome)
                )
    await writer.finish()
    log.debug(
        "blob.uploaded",
        blob=blob_name,
        bytes=writer.size_bytes,
        duration_s=round(time.monotonic() - started, 4),
        skipped=False,
    )
    return packed + alone


async def _settled_read(
    item: InputFile, read: _Read | _TooBig | OSError, limit: int
) -> _Read | _TooBig | str:
    """A consistent read of the input (read again after a pause while it changes), or why there is none."""
    for delay in (*staging.CHANGED_INPUT_RETRY_DELAYS_S, None):
        if isinstance(read, OSError):
            return staging.unreadable_reason(item.path, read)
        if isinstance(read, _TooBig) or read.before == read.after:
            return read
        if delay is None:
            break
        await anyio.sleep(delay)
        read = await anyio.to_thread.run_sync(_read_one, item.path, limit)
    return (
        f"input {item.path} kept changing while it was read for its unit's pack "
        f"({len(staging.CHANGED_INPUT_RETRY_DELAYS_S) + 1} attempts); only this file fails"
    )
