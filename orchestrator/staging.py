"""Blob Storage side of a run: containers, concurrent uploads, the node script, and SAS URLs.

Everything here is idempotent, so a resumed run can call it again: containers are created if
absent, and an upload whose blob already holds the same MD5 is skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import anyio
import structlog
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import ContentSettings, UserDelegationKey
from azure.storage.blob.aio import BlobServiceClient

from orchestrator import naming, sas
from orchestrator.errors import InputError
from orchestrator.inputs import InputFile
from orchestrator.retry import RetryPolicy, retry_call
from orchestrator.submit import first_leaf

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
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        head = stream.read(IN_MEMORY_LIMIT_BYTES + 1)
        digest.update(head)
        if len(head) <= IN_MEMORY_LIMIT_BYTES:
            return head, digest.digest()
        for chunk in iter(lambda: stream.read(4 * 1024 * 1024), b""):
            digest.update(chunk)
    return None, digest.digest()


async def upload_file(
    blob_service: BlobServiceClient,
    container: str,
    blob_name: str,
    path: Path,
    retry: RetryPolicy,
    content_type: str = "text/plain; charset=utf-8",
) -> tuple[str, bool]:
    """Upload one file unless the blob already holds the same bytes; returns (md5 hex, skipped)."""
    try:
        data, md5 = await anyio.to_thread.run_sync(_md5_of_file, path)
    except OSError as error:
        raise InputError(
            f"cannot read input {path}: {error.strerror} (it changed since the run started?)"
        ) from None
    blob = blob_service.get_blob_client(container, blob_name)
    settings = ContentSettings(content_type=content_type, content_md5=bytearray(md5))

    async def put(overwrite: bool) -> None:
        if data is not None:
            await blob.upload_blob(data, overwrite=overwrite, content_settings=settings)
            return
        with path.open("rb") as stream:
            await blob.upload_blob(stream, overwrite=overwrite, content_settings=settings, max_concurrency=4)

    try:
        await retry_call(retry, "upload_blob", lambda: put(False))
        return md5.hex(), False
    except ResourceExistsError:
        pass
    properties = await retry_call(retry, "get_blob_properties", blob.get_blob_properties)
    existing = properties.content_settings.content_md5
    if existing is not None and bytes(existing) == md5:
        return md5.hex(), True
    await retry_call(retry, "upload_blob", lambda: put(True))
    return md5.hex(), False


async def upload_inputs(
    blob_service: BlobServiceClient,
    container: str,
    run_id: str,
    inputs: Sequence[InputFile],
    *,
    concurrency: int,
    retry: RetryPolicy,
    on_uploaded: UploadedCallback | None = None,
) -> list[StagedInput]:
    """Upload all inputs with at most `concurrency` in flight; results in input order."""
    limiter = anyio.CapacityLimiter(concurrency)
    staged: list[StagedInput | None] = [None] * len(inputs)

    async def upload(index: int, item: InputFile) -> None:
        async with limiter:
            started = time.monotonic()
            blob_name = naming.input_blob_name(run_id, item.relpath)
            md5_hex, skipped = await upload_file(blob_service, container, blob_name, item.path, retry)
            result = StagedInput(index, item.relpath, blob_name, md5_hex, item.size_bytes, skipped)
            staged[index] = result
            log.debug(
                "blob.uploaded",
                blob=blob_name,
                bytes=item.size_bytes,
                duration_s=round(time.monotonic() - started, 4),
                skipped=skipped,
            )
            if on_uploaded is not None:
                await on_uploaded(result)

    try:
        async with anyio.create_task_group() as group:
            for index, item in enumerate(inputs):
                group.start_soon(upload, index, item)
    except BaseExceptionGroup as errors:
        raise first_leaf(errors) from None
    return [item for item in staged if item is not None]


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
    """Mints the run's SAS URLs (via orchestrator/sas.py) with the account key or a user delegation key."""

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
