"""Blob Storage side of a run: containers, concurrent uploads, the node script, and SAS URLs.

Everything here is idempotent, so a resumed run can call it again: containers are created if
absent, and an upload whose blob already holds the same MD5 is skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, BinaryIO, cast

import anyio
import structlog
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import ContentSettings, UserDelegationKey
from azure.storage.blob.aio import BlobClient, BlobServiceClient

from orchestrator import naming
from orchestrator.azure import sas
from orchestrator.azure.putblob import BlobService
from orchestrator.azure.retry import RetryPolicy, retry_call
from orchestrator.errors import ConfigError, InputError, first_leaf
from orchestrator.files import read_md5
from orchestrator.inputs import InputFile

log = structlog.get_logger()

# Files up to this size are read into memory in a worker thread; larger ones are streamed.
IN_MEMORY_LIMIT_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class StagedInput:
    """An input that is in Blob Storage."""

    index: int
    relpath: str
    blob_name: str
    md5_hex: str
    size_bytes: int
    skipped: bool
    # Why it is not in Blob Storage after all: it vanished or became unreadable after discovery (or
    # kept changing). Only this file fails; its task runs the others.
    unreadable: str | None = None
    # An input read where it lives (orchestrator/blobinputs.py): its own container (`blob_name` is its
    # name there) and the ETag it was listed with. None: the run's input container.
    container: str | None = None
    etag: str | None = None
    # A packed input (orchestrator/azure/packing.py): (offset, length) in its pack, `blob_name`.
    extent: tuple[int, int] | None = None


UploadedCallback = Callable[[StagedInput], Awaitable[None]]


async def ensure_containers(
    blob_service: BlobServiceClient, names: Sequence[str], retry: RetryPolicy
) -> None:
    """Create each container unless it exists (concurrently)."""

    async def ensure(name: str) -> None:
        with contextlib.suppress(ResourceExistsError):
            await retry_call(retry, "create_container", lambda: blob_service.create_container(name))

    async with anyio.create_task_group() as group:
        for name in names:
            group.start_soon(ensure, name)


def _md5_of_file(path: Path) -> tuple[bytes | None, bytes]:
    """The file's bytes (when small enough to hold) and its MD5, read in one pass."""
    return read_md5(path, IN_MEMORY_LIMIT_BYTES)


# A file that changes while it is read or sent is tried again after each of these pauses (giving its
# writer time to finish), then reported: the blob must hold exactly the bytes the journal's MD5 says.
CHANGED_INPUT_RETRY_DELAYS_S: tuple[float, ...] = (0.5, 2.0)


class NodeBundleError(ConfigError):
    """The node bundle for real Batch nodes could not be built (exit 2: nothing was started)."""


class InputChangedError(InputError):
    """An input changed while it was being uploaded, on every attempt."""


FileVersion = tuple[int, int, int]  # (size, mtime in ns, inode): what a writer or a replacement changes


def file_version(path: Path) -> FileVersion:
    info = path.stat()
    return (info.st_size, info.st_mtime_ns, info.st_ino)


# A file's version before it is read, its bytes (when small) and MD5, and for bytes held in memory
# its version once they were read (what is sent is then those bytes, whatever comes next).
FileRead = tuple[FileVersion, tuple[bytes | None, bytes], FileVersion | None]


def _version_and_md5(path: Path) -> FileRead:
    before = file_version(path)
    data, md5 = _md5_of_file(path)
    return before, (data, md5), file_version(path) if data is not None else None


# An upload worker reads up to this many inputs (or about this many bytes) in one worker-thread
# trip, then uploads them one by one: thousands of small files cost hundreds of trips, not one each.
READ_BATCH_FILES = 8
READ_BATCH_BYTES = 1024 * 1024


def _read_files(paths: Sequence[Path]) -> list[FileRead | OSError]:
    """Each file's read (or why it could not be read), in one worker-thread trip."""
    reads: list[FileRead | OSError] = []
    for path in paths:
        try:
            reads.append(_version_and_md5(path))
        except OSError as error:
            reads.append(error)
    return reads


class _HashingReader:
    """A forward-only file reader for the SDK's chunked upload that hashes exactly the bytes it sends.

    It has no seek, tell or fileno, so the SDK reads it in order (never in parallel sub-streams) and
    the digest is that of the blob's content; reads run in a worker thread to keep the loop free.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.digest = hashlib.md5(usedforsecurity=False)
        self.size_bytes = 0

    def seekable(self) -> bool:
        return False

    async def read(self, size: int = -1) -> bytes:
        chunk = await anyio.to_thread.run_sync(self._stream.read, size)
        self.digest.update(chunk)
        self.size_bytes += len(chunk)
        return chunk


@dataclass(frozen=True)
class UploadedFile:
    """What one upload put in Blob Storage (or found there already)."""

    md5_hex: str
    size_bytes: int
    skipped: bool


# The slowest upload rate a big input's deadline allows for: `[retry] deadline_s` bounds a whole call,
# retries included, and suits small requests; one streamed upload of 2 GB to a busy local Azurite
# took 126 s, and the input was reported unreadable under a 60 s deadline.
MIN_UPLOAD_BYTES_PER_S = 4 * 1024 * 1024


def retry_for_upload(retry: RetryPolicy, size_bytes: int) -> RetryPolicy:
    """The policy for uploading `size_bytes`: its deadline plus the bytes' time at the slowest rate."""
    needed_s = size_bytes / MIN_UPLOAD_BYTES_PER_S
    if needed_s < 1.0:
        return retry
    return dataclasses.replace(retry, deadline_s=retry.deadline_s + needed_s)


async def upload_input_file(
    blob_service: BlobServiceClient,
    container: str,
    blob_name: str,
    path: Path,
    retry: RetryPolicy,
    content_type: str = "text/plain; charset=utf-8",
    first_read: FileRead | OSError | None = None,
) -> UploadedFile:
    """Upload one file so that the blob, its stored MD5 and the returned MD5 and size all agree.

    The file's size, mtime and inode are compared before and after it is read (a small file, sent from
    memory) or uploaded (a streamed one, which also hashes what it sent): a file that changed meanwhile
    is read and uploaded again (bounded), then InputChangedError names it. `first_read` is the file's
    read when it was done already (with other files' in one worker-thread trip).
    """
    attempts = len(CHANGED_INPUT_RETRY_DELAYS_S) + 1
    for attempt in range(1, attempts + 1):
        read = first_read if attempt == 1 else None
        uploaded = await _upload_once(blob_service, container, blob_name, path, retry, content_type, read)
        if uploaded is not None:
            return uploaded
        if attempt == attempts:
            break
        delay = CHANGED_INPUT_RETRY_DELAYS_S[attempt - 1]
        log.debug(
            "request.retried",
            operation="upload_blob",
            attempt=attempt,
            delay_s=delay,
            status_code=None,
            error_code="InputChanged",
            error_type=InputChangedError.__name__,
        )
        await anyio.sleep(delay)
    # The blob may hold a torn copy under an MD5 it does not match: remove it, so no later run or
    # resume can take it for a good upload.
    with contextlib.suppress(Exception):
        await blob_service.get_blob_client(container, blob_name).delete_blob()
    raise InputChangedError(
        f"input {path} kept changing while it was uploaded ({attempts} attempts); "
        "wait until whatever writes it has finished (or copy it) and run again"
    )


async def _upload_once(
    blob_service: BlobServiceClient,
    container: str,
    blob_name: str,
    path: Path,
    retry: RetryPolicy,
    content_type: str,
    read: FileRead | OSError | None,
) -> UploadedFile | None:
    """One read-and-upload of `path`; None when the file changed meanwhile (the blob is then suspect)."""
    try:
        # One worker-thread trip for the versions and the bytes of a small file (unless read already).
        # A file that changed while it was read is read again before anything is sent.
        if read is None:
            read = await anyio.to_thread.run_sync(_version_and_md5, path)
        if isinstance(read, OSError):
            raise read
        before, (data, md5), read_version = read
    except OSError as error:
        raise InputError(unreadable_reason(path, error)) from None
    if read_version is not None and read_version != before:
        return None
    # Small files go through the short pipeline when the client has one (azure/putblob.py); the SDK's
    # blob client, costly to build, only when it is needed (a streamed file, an existing blob).
    putter = blob_service.putter if isinstance(blob_service, BlobService) else None
    blob = (
        None
        if putter is not None and data is not None
        else blob_service.get_blob_client(container, blob_name)
    )
    settings = ContentSettings(content_type=content_type, content_md5=bytearray(md5))
    sent: list[tuple[bytes, int]] = []  # (md5, size) of what the last put sent
    upload_retry = retry_for_upload(retry, before[0])

    def sdk_blob() -> BlobClient:
        nonlocal blob
        if blob is None:
            blob = blob_service.get_blob_client(container, blob_name)
        return blob

    async def put(overwrite: bool) -> None:
        sent.clear()
        if data is not None:
            if putter is not None:
                await putter.put(
                    container,
                    blob_name,
                    data,
                    content_md5=md5,
                    content_type=content_type,
                    overwrite=overwrite,
                )
            else:
                await sdk_blob().upload_blob(data, overwrite=overwrite, content_settings=settings)
            sent.append((md5, len(data)))
            return
        client = sdk_blob()
        with path.open("rb") as stream:
            reader = _HashingReader(stream)
            # No MD5 is stored with the streamed bytes: only once they are known to be the file's
            # (below) is it set, so a crash in between leaves a blob that no resume will skip.
            await client.upload_blob(
                cast("IO[bytes]", reader),  # the SDK takes any object with an (async) read
                overwrite=overwrite,
                content_settings=ContentSettings(content_type=content_type),
                max_concurrency=4,
            )
            sent.append((reader.digest.digest(), reader.size_bytes))
            if sent[0][0] == md5:
                await retry_call(
                    retry, "set_http_headers", lambda: client.set_http_headers(content_settings=settings)
                )

    skipped = False
    try:
        await retry_call(upload_retry, "upload_blob", lambda: put(False))
    except ResourceExistsError:
        properties = await retry_call(retry, "get_blob_properties", sdk_blob().get_blob_properties)
        existing = properties.content_settings.content_md5
        if existing is not None and bytes(existing) == md5:
            skipped = True
        else:
            await retry_call(upload_retry, "upload_blob", lambda: put(True))
    if read_version is not None:
        after = read_version  # the blob holds the bytes read, which were the file's all along
    else:
        try:
            after = await anyio.to_thread.run_sync(file_version, path)
        except OSError:
            return None  # deleted or replaced meanwhile: try again, which names the problem if it stays
    size_bytes = before[0] if skipped else sent[0][1]
    if after != before or (not skipped and sent[0][0] != md5) or size_bytes != before[0]:
        return None
    return UploadedFile(md5_hex=md5.hex(), size_bytes=size_bytes, skipped=skipped)


def unreadable_reason(path: Path, error: OSError) -> str:
    """Why an input found at discovery cannot be uploaded now."""
    if isinstance(error, FileNotFoundError):
        return (
            f"input {path} was removed after the run started; only this file fails "
            "(restore it and run it again)"
        )
    return (
        f"cannot read input {path}: {error.strerror or error} (it changed since the run started); "
        "only this file fails"
    )


async def stage_input_file(
    blob_service: BlobServiceClient,
    container: str,
    run_id: str,
    item: InputFile,
    retry: RetryPolicy,
    *,
    index: int = 0,
    first_read: FileRead | OSError | None = None,
) -> StagedInput:
    """One input uploaded as a blob of its own; `unreadable` says (and an event) why it could not be."""
    blob_name = naming.input_blob_name(run_id, item.relpath)
    try:
        uploaded = await upload_input_file(
            blob_service, container, blob_name, item.path, retry, first_read=first_read
        )
    except (InputError, OSError) as error:  # gone, unreadable or never still since discovery
        reason = str(error) if isinstance(error, InputError) else unreadable_reason(item.path, error)
        log.warning("input.unreadable", file=item.relpath, error=reason)
        return StagedInput(index, item.relpath, blob_name, "", 0, False, unreadable=reason)
    # The size is what was uploaded: the file may have changed since it was discovered.
    return StagedInput(
        index, item.relpath, blob_name, uploaded.md5_hex, uploaded.size_bytes, uploaded.skipped
    )


async def upload_inputs(
    blob_service: BlobServiceClient,
    container: str,
    run_id: str,
    inputs: Sequence[InputFile],
    *,
    concurrency: int,
    retry: RetryPolicy,
    on_uploaded: UploadedCallback | None = None,
    on_staged: UploadedCallback | None = None,
) -> list[StagedInput]:
    """Upload all inputs with at most `concurrency` in flight, in input order; results in input order.

    `on_uploaded` hears of each input that is now in Blob Storage; `on_staged` of every input once
    it is settled, uploaded or unreadable (`unreadable` set).
    """
    staged: list[StagedInput | None] = [None] * len(inputs)

    async def upload(index: int, item: InputFile, read: FileRead | OSError) -> None:
        await _upload_one(index, item, read)
        if on_staged is not None:
            await on_staged(cast(StagedInput, staged[index]))

    async def _upload_one(index: int, item: InputFile, read: FileRead | OSError) -> None:
        started = time.monotonic()
        result = await stage_input_file(
            blob_service, container, run_id, item, retry, index=index, first_read=read
        )
        staged[index] = result
        if result.unreadable is not None:
            return
        log.debug(
            "blob.uploaded",
            blob=result.blob_name,
            bytes=result.size_bytes,
            duration_s=round(time.monotonic() - started, 4),
            skipped=result.skipped,
        )
        if on_uploaded is not None:
            await on_uploaded(result)

    pending = iter(enumerate(inputs))
    workers = min(concurrency, len(inputs))
    taken = 0

    def next_batch() -> list[tuple[int, InputFile]]:
        """The next inputs in order: up to READ_BATCH_FILES or about READ_BATCH_BYTES, and no more
        than an even share of what is left, so that a few inputs still go up side by side."""
        nonlocal taken
        most = max(1, min(READ_BATCH_FILES, (len(inputs) - taken) // workers))
        batch: list[tuple[int, InputFile]] = []
        size = 0
        for index, item in pending:
            batch.append((index, item))
            size += item.size_bytes
            if len(batch) >= most or size >= READ_BATCH_BYTES:
                break
        taken += len(batch)
        return batch

    async def worker() -> None:
        while batch := next_batch():
            reads = await anyio.to_thread.run_sync(_read_files, [item.path for _, item in batch])
            for (index, item), read in zip(batch, reads, strict=True):
                await upload(index, item, read)

    try:
        # A fixed set of workers takes the inputs in order: coroutines in flight are bounded by
        # `concurrency`, never by the number of inputs, and the first units are staged first.
        async with anyio.create_task_group() as group:
            for _ in range(workers):
                group.start_soon(worker)
    except BaseExceptionGroup as errors:
        raise first_leaf(errors) from None
    return [item for item in staged if item is not None]


def build_node_script(wheel_cache: Path | None = None) -> bytes:
    """The node program's bytes (no node code runs in this process).

    With `wheel_cache`, the self-contained bundle (node/bundle.py: the storage SDK as wheels for
    the node's python3, cached there): what real Batch nodes run. Without, the plain zipapp, which
    needs the SDK on the node: local mode's nodes are this machine, with topn's own environment.
    """
    with tempfile.TemporaryDirectory(prefix="topn-node-") as folder:
        target = Path(folder) / "node.pyz"
        if wheel_cache is None:
            path: Path = importlib.import_module("node.pack").build_zipapp(target)
        else:
            bundle = importlib.import_module("node.bundle")
            try:
                path = bundle.build_bundle(target, wheel_cache=wheel_cache)
            except bundle.BundleBuildError as error:
                raise NodeBundleError(
                    f"cannot build the node bundle: {error}. It needs PyPI once to fill {wheel_cache} "
                    "(`make node-bundle` does the same); check the network or pip's index settings"
                ) from None
        return path.read_bytes()


async def stage_node_script(
    blob_service: BlobServiceClient, container: str, script: bytes, retry: RetryPolicy
) -> str:
    """Upload the packed node script under a name derived from its content; returns the blob name."""
    blob_name = naming.node_blob_name(hashlib.sha256(script).hexdigest())
    blob = blob_service.get_blob_client(container, blob_name)
    started = time.monotonic()
    settings = ContentSettings(
        content_type="application/zip",
        content_md5=bytearray(hashlib.md5(script, usedforsecurity=False).digest()),
    )
    skipped = False
    try:
        await retry_call(
            retry, "upload_blob", lambda: blob.upload_blob(script, overwrite=False, content_settings=settings)
        )
    except ResourceExistsError:
        skipped = True  # the name is the content's hash: an existing blob holds the same bytes
    log.debug(
        "blob.uploaded",
        blob=blob_name,
        bytes=len(script),
        duration_s=round(time.monotonic() - started, 4),
        skipped=skipped,
    )
    return blob_name


async def stored_md5s(
    blob_service: BlobServiceClient, container: str, prefix: str, retry: RetryPolicy
) -> dict[str, str | None]:
    """Every blob under `prefix` with the hex MD5 Storage holds for it (None when it holds none)."""
    client = blob_service.get_container_client(container)

    async def listing() -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        async for blob in client.list_blobs(name_starts_with=prefix):
            md5 = blob.content_settings.content_md5 if blob.content_settings is not None else None
            found[str(blob.name)] = bytes(md5).hex() if md5 else None
        return found

    return await retry_call(retry, "list_blobs", listing)


async def delete_blobs_with_prefix(
    blob_service: BlobServiceClient, container: str, prefix: str, retry: RetryPolicy, concurrency: int = 16
) -> int:
    """Delete every blob under `prefix` (missing ones are fine); returns how many were deleted."""
    client = blob_service.get_container_client(container)
    names = [blob.name async for blob in client.list_blobs(name_starts_with=prefix)]
    limiter = anyio.CapacityLimiter(concurrency)

    async def delete(name: str) -> None:
        async with limiter:
            with contextlib.suppress(ResourceNotFoundError):
                await retry_call(retry, "delete_blob", lambda: client.delete_blob(name))

    async with anyio.create_task_group() as group:
        for name in names:
            group.start_soon(delete, name)
    return len(names)


async def delete_container(blob_service: BlobServiceClient, container: str, retry: RetryPolicy) -> None:
    """Delete a container if it exists."""
    with contextlib.suppress(ResourceNotFoundError):
        await retry_call(retry, "delete_container", lambda: blob_service.delete_container(container))


@dataclass(frozen=True)
class SasMinter:
    """Mints the run's SAS URLs (azure/sas.py) with the account key or a user delegation key."""

    account_url: str  # the blob endpoint, e.g. http://127.0.0.1:10000/devstoreaccount1
    account_name: str
    starts_at: datetime
    expires_at: datetime
    account_key: str | None = None
    delegation_key: UserDelegationKey | None = None

    def __repr__(self) -> str:  # never show signing material
        return f"SasMinter(account_url={self.account_url!r}, expires_at={self.expires_at.isoformat()})"

    def blob_read_url(self, container: str, blob_name: str) -> str:
        """A URL that can only read one blob, until the run's SAS expiry."""
        token = sas.mint_blob_read_sas(
            account_name=self.account_name,
            container=container,
            blob_name=blob_name,
            start=self.starts_at,
            expiry=self.expires_at,
            account_key=self.account_key,
            user_delegation_key=self.delegation_key,
        )
        return sas.blob_url(self.account_url, container, blob_name, token)

    def container_read_url(self, container: str) -> str:
        """A URL that can only read blobs in one container (no list, write or delete): a unit's inputs."""
        token = sas.mint_container_read_sas(
            account_name=self.account_name,
            container=container,
            start=self.starts_at,
            expiry=self.expires_at,
            account_key=self.account_key,
            user_delegation_key=self.delegation_key,
        )
        return sas.container_url(self.account_url, container, token)

    def container_write_url(self, container: str) -> str:
        """A URL that can only create and write blobs in one container (no read, list or delete)."""
        token = sas.mint_container_write_sas(
            account_name=self.account_name,
            container=container,
            start=self.starts_at,
            expiry=self.expires_at,
            account_key=self.account_key,
            user_delegation_key=self.delegation_key,
        )
        return sas.container_url(self.account_url, container, token)


async def make_sas_minter(
    *,
    account_url: str,
    account_name: str,
    account_key: str | None,
    delegation_source: sas.DelegationKeyProvider | None,
    run_timeout_s: float,
    margin_s: float,
    now: datetime | None = None,
) -> SasMinter:
    """Shared key when there is a key; otherwise a user delegation key from Entra ID (one request)."""
    starts_at, expires_at = sas.sas_window(now or sas.utc_now(), run_timeout_s, margin_s)
    if account_key is not None:
        return SasMinter(account_url, account_name, starts_at, expires_at, account_key=account_key)
    if delegation_source is None:
        raise ValueError("a user delegation SAS needs the blob service client to fetch its key")
    key = await sas.fetch_user_delegation_key(delegation_source, starts_at, expires_at)
    return SasMinter(account_url, account_name, starts_at, expires_at, delegation_key=key)
