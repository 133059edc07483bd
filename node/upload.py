"""Upload the node's blobs concurrently with azure.storage.blob.aio, using only a container SAS URL."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

UPLOAD_RETRIES = 4
UPLOAD_CONCURRENCY = 8
CONNECTION_TIMEOUT_S = 10
READ_TIMEOUT_S = 60

_SIGNATURE_RE = re.compile(r"(sig=)[^&\s'\"]+", re.IGNORECASE)
_URL_QUERY_RE = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*")


def redact(text: str) -> str:
    """Drop the query (the SAS) of every URL and any stray `sig=` value from text we print."""
    return _SIGNATURE_RE.sub(r"\1REDACTED", _URL_QUERY_RE.sub(r"\1", text))


def url_without_query(url: str) -> str:
    """The URL with its query (a SAS) and fragment removed."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


@dataclass(frozen=True)
class Destination:
    """A container SAS URL; `container` and `safe_url` are what messages may show."""

    container_url: str

    @property
    def safe_url(self) -> str:
        return url_without_query(self.container_url)

    @property
    def container(self) -> str:
        return urlsplit(self.container_url).path.rstrip("/").rsplit("/", 1)[-1]


def check_container_url(url: str) -> Destination:
    """Validate a container SAS URL, or raise ValueError saying what is wrong (without the SAS)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"--output-container-url must be an http(s) container URL with a SAS query, got {redact(url)!r}"
        )
    if not parts.path.strip("/"):
        raise ValueError(f"--output-container-url {url_without_query(url)!r} names no container")
    if "sig=" not in parts.query:
        raise ValueError(
            f"--output-container-url {url_without_query(url)!r} carries no SAS (no 'sig=' in its query); "
            "pass the container URL with a write SAS appended"
        )
    return Destination(url)


def seed_container_url(blob_endpoint: str, container: str, sas_token: str) -> Destination:
    """The container URL of the seed's flags: endpoint + container + SAS token."""
    if not container or "/" in container:
        raise ValueError(f"--storagecontainer must be a container name, got {container!r}")
    token = sas_token.lstrip("?")
    return check_container_url(f"{blob_endpoint.rstrip('/')}/{container}?{token}")


@dataclass(frozen=True)
class Blob:
    name: str
    data: bytes | IO[bytes]  # a file is read from its current position (the SDK finds its length)
    content_type: str


@dataclass(frozen=True)
class UploadFailure:
    blob: str
    message: str


def describe_error(error: BaseException, needed: str = "create and write") -> str:
    """HTTP status and service error code when there is a response; the error's kind otherwise.

    `needed` is what the SAS must allow, named in the hint for a 403.
    """
    status = getattr(error, "status_code", None)
    code = getattr(error, "error_code", None)
    code = getattr(code, "value", code)  # the SDK gives a StorageErrorCode enum for known codes
    if status is not None:
        described = f"HTTP {status}" + (f" {code}" if code else "")
        if status == 403:
            described += f" (the SAS must be valid and allow {needed} on the container)"
        return described
    reason = redact(str(error)).splitlines()[0] if str(error) else ""
    return f"no HTTP response ({type(error).__name__}{': ' + reason if reason else ''})"


class Uploader:
    """One container client for all of a task's uploads, at most `concurrency` requests at a time.

    Use as `async with Uploader(destination) as uploader: failures = await uploader.upload(blobs)`.
    """

    def __init__(
        self,
        destination: Destination,
        *,
        retries: int = UPLOAD_RETRIES,
        concurrency: int = UPLOAD_CONCURRENCY,
    ) -> None:
        self._destination = destination
        self._retries = retries
        self._limiter = asyncio.Semaphore(concurrency)
        self._container: Any = None

    async def __aenter__(self) -> Uploader:
        # Imported here so that counting (and `--json`) never pays for the SDK's import time.
        from azure.storage.blob.aio import ContainerClient, ExponentialRetry

        # The SDK's default retry can take 80+ s to give up. This one waits about 2, 4, 8, 16 s (±1 s)
        # before retries 1-4 (the SDK waits initial + base**attempt): four retries give up after ~30 s.
        retry_policy = ExponentialRetry(
            initial_backoff=0, increment_base=2, retry_total=self._retries, random_jitter_range=1
        )
        self._container = ContainerClient.from_container_url(
            self._destination.container_url,
            retry_policy=retry_policy,
            connection_timeout=CONNECTION_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
        )
        await self._container.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._container.__aexit__(*exc_info)

    async def upload(self, blobs: Sequence[Blob]) -> list[UploadFailure]:
        """Upload blobs concurrently (overwriting: a retried task rewrites its own outputs); the failures."""
        from azure.core.exceptions import AzureError
        from azure.storage.blob import ContentSettings

        failures: list[UploadFailure] = []

        async def upload_one(blob: Blob) -> None:
            async with self._limiter:
                try:
                    await self._container.upload_blob(
                        blob.name,
                        blob.data,
                        overwrite=True,
                        content_settings=ContentSettings(content_type=blob.content_type),
                    )
                except AzureError as error:
                    failures.append(
                        UploadFailure(
                            blob.name,
                            f"upload of {blob.name!r} to container {self._destination.container!r} "
                            f"at {self._destination.safe_url} failed: {describe_error(error)}",
                        )
                    )

        await asyncio.gather(*(upload_one(blob) for blob in blobs))
        return failures
