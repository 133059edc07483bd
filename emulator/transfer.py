"""Resource-file downloads and output-file uploads for tasks, over HTTP to Blob Storage (Azurite).

URLs carry SAS tokens in their query strings, so only `strip_query(url)` ever reaches a message.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp
import anyio
from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import ContainerClient

from emulator.model import FailureInfo
from emulator.wire import strip_query

_CHUNK_BYTES = 1 << 20
_DEFAULT_FILE_MODE = 0o770
# Small retry budget: a broken URL should fail the task in seconds, not minutes of backoff.
_STORAGE_CLIENT_OPTIONS: dict[str, Any] = {"retry_total": 2, "retry_backoff_factor": 0.2}


class TransferError(Exception):
    """A resource or output file could not be moved; `failure` is what the task reports."""

    def __init__(self, failure: FailureInfo) -> None:
        super().__init__(failure.message)
        self.failure = failure


def resolve_inside(base: Path, relative: str) -> Path:
    """`relative` under `base`; raises ValueError when it would escape (absolute or `..`)."""
    candidate = PurePosixPath(relative)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise ValueError(f"{relative!r} must be a relative path inside the working directory")
    return base.joinpath(*candidate.parts)


def _download_failure(code: str, url: str, detail: str) -> TransferError:
    category = "usererror" if code in ("BlobNotFound", "BlobAccessDenied") else "servererror"
    message = f"Resource file download failed: {detail}"
    return TransferError(FailureInfo(category, code, message, (("FileUrl", strip_query(url)),)))


def _code_for_status(status: int) -> str:
    if status == 404:
        return "BlobNotFound"
    if status in (401, 403):
        return "BlobAccessDenied"
    return "BlobDownloadMiscError"


def _apply_mode(path: Path, file_mode: object) -> None:
    mode = _DEFAULT_FILE_MODE
    if isinstance(file_mode, str) and file_mode:
        mode = int(file_mode, 8)
    path.chmod(mode)


async def _download_http(session: aiohttp.ClientSession, url: str, target: Path) -> None:
    try:
        async with session.get(url) as response:
            if response.status != 200:
                raise _download_failure(
                    _code_for_status(response.status), url, f"HTTP {response.status} from {strip_query(url)}"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            async with await anyio.open_file(target, "wb") as output:
                async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
                    await output.write(chunk)
    except TimeoutError:
        raise _download_failure(
            "BlobDownloadTimedOut", url, f"timed out reading {strip_query(url)}"
        ) from None
    except aiohttp.ClientError as exc:
        raise _download_failure(
            "BlobDownloadMiscError", url, f"{type(exc).__name__} for {strip_query(url)}"
        ) from None


async def _download_container(container_url: str, prefix: str, target_dir: Path, file_mode: object) -> None:
    try:
        async with ContainerClient.from_container_url(container_url, **_STORAGE_CLIENT_OPTIONS) as container:
            async for blob in container.list_blobs(name_starts_with=prefix or None):
                target = resolve_inside(target_dir, blob.name)
                target.parent.mkdir(parents=True, exist_ok=True)
                downloader = await container.download_blob(blob.name)
                async with await anyio.open_file(target, "wb") as output:
                    async for chunk in downloader.chunks():
                        await output.write(chunk)
                _apply_mode(target, file_mode)
    except ResourceNotFoundError:
        raise _download_failure(
            "BlobNotFound", container_url, f"container {strip_query(container_url)} not found"
        ) from None
    except HttpResponseError as exc:
        status = exc.status_code or 0
        raise _download_failure(
            _code_for_status(status), container_url, f"HTTP {status} listing {strip_query(container_url)}"
        ) from None
    except (AzureError, ValueError) as exc:
        raise _download_failure(
            "BlobDownloadMiscError", container_url, f"{type(exc).__name__} for {strip_query(container_url)}"
        ) from None


async def download_resource_files(
    session: aiohttp.ClientSession, resource_files: Sequence[Mapping[str, Any]], working_dir: Path
) -> None:
    """Fetch every resource file into `working_dir` before the command runs."""
    for resource in resource_files:
        file_path = str(resource.get("filePath") or "")
        if resource.get("httpUrl"):
            url = str(resource["httpUrl"])
            target = resolve_inside(working_dir, file_path)
            await _download_http(session, url, target)
            _apply_mode(target, resource.get("fileMode"))
        elif resource.get("storageContainerUrl"):
            target_dir = resolve_inside(working_dir, file_path) if file_path else working_dir
            await _download_container(
                str(resource["storageContainerUrl"]),
                str(resource.get("blobPrefix") or ""),
                target_dir,
                resource.get("fileMode"),
            )


@dataclass(frozen=True)
class PlannedUpload:
    source: Path
    blob_name: str


def has_wildcard(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")


def plan_uploads(pattern: str, destination_path: str | None, working_dir: Path) -> list[PlannedUpload]:
    """Files an output pattern matches and their blob names (the service's rules; `..` allowed)."""
    # normpath (not resolve) folds `..` without following symlinks, as the node agent does.
    absolute = os.path.normpath(working_dir / pattern)
    if not has_wildcard(pattern):
        source = Path(absolute)
        if not source.is_file():
            return []
        return [PlannedUpload(source, destination_path or source.name)]
    parts = PurePosixPath(absolute).parts
    base_parts: list[str] = []
    for part in parts:
        if has_wildcard(part):
            break
        base_parts.append(part)
    base = Path(*base_parts)
    matches = sorted(Path(found) for found in glob.glob(absolute, recursive=True) if Path(found).is_file())  # noqa: PTH207 (pathlib's glob does not take absolute patterns)
    prefix = (destination_path or "").strip("/")
    uploads: list[PlannedUpload] = []
    for source in matches:
        relative = source.relative_to(base).as_posix()
        uploads.append(PlannedUpload(source, f"{prefix}/{relative}" if prefix else relative))
    return uploads


def condition_applies(condition: str, succeeded: bool) -> bool:
    lowered = condition.lower()
    if lowered == "tasksuccess":
        return succeeded
    if lowered == "taskfailure":
        return not succeeded
    return True


def _upload_failure(code: str, message: str) -> TransferError:
    return TransferError(FailureInfo("usererror", code, message))


def upload_settings(headers: list[dict[str, Any]]) -> tuple[ContentSettings | None, dict[str, str] | None]:
    """An output file's `uploadHeaders` as blob properties and metadata (`x-ms-meta-*`)."""
    values = {str(header["name"]).lower(): str(header.get("value", "")) for header in headers}

    def header(name: str) -> str | None:
        return values.get(f"x-ms-blob-{name}") or values.get(name) or None

    settings = ContentSettings(
        content_type=header("content-type"),
        content_encoding=header("content-encoding"),
        content_language=header("content-language"),
        content_disposition=header("content-disposition"),
        cache_control=header("cache-control"),
    )
    metadata = {
        name[len("x-ms-meta-") :]: value for name, value in values.items() if name.startswith("x-ms-meta-")
    }
    has_settings = any(
        (
            settings.content_type,
            settings.content_encoding,
            settings.content_language,
            settings.content_disposition,
            settings.cache_control,
        )
    )
    return (settings if has_settings else None), (metadata or None)


async def upload_output_files(
    output_files: Sequence[Mapping[str, Any]], working_dir: Path, task_dir: Path, succeeded: bool
) -> None:
    """Upload what the task's output patterns match, for patterns whose condition holds."""
    log_lines: list[str] = []
    error_lines: list[str] = []
    attempted = False
    try:
        for spec in output_files:
            condition = str((spec.get("uploadOptions") or {}).get("uploadCondition", "taskcompletion"))
            if not condition_applies(condition, succeeded):
                continue
            attempted = True
            container_spec = spec["destination"]["container"]
            container_url = str(container_spec["containerUrl"])
            settings, metadata = upload_settings(container_spec.get("uploadHeaders") or [])
            uploads = plan_uploads(str(spec["filePattern"]), container_spec.get("path"), working_dir)
            try:
                async with ContainerClient.from_container_url(
                    container_url, **_STORAGE_CLIENT_OPTIONS
                ) as container:
                    for upload in uploads:
                        with upload.source.open("rb") as data:
                            await container.upload_blob(
                                upload.blob_name,
                                data,
                                overwrite=True,
                                content_settings=settings,
                                metadata=metadata,
                            )
                        target = f"{strip_query(container_url)}/{upload.blob_name}"
                        log_lines.append(f"uploaded {upload.source.name} to {target}")
            except ResourceNotFoundError:
                error_lines.append(f"container {strip_query(container_url)} not found")
                raise _upload_failure(
                    "FileUploadContainerNotFound",
                    "One of the specified Azure container(s) was not found "
                    "while attempting to upload an output file",
                ) from None
            except (AzureError, OSError, ValueError) as exc:
                status = getattr(exc, "status_code", None)
                error_lines.append(
                    f"upload to {strip_query(container_url)} failed: {type(exc).__name__} {status or ''}"
                )
                raise _upload_failure(
                    "FileUploadMiscError",
                    f"An output file could not be uploaded ({type(exc).__name__} {status or ''})",
                ) from None
    finally:
        if attempted:
            (task_dir / "fileuploadout.txt").write_text("".join(line + "\n" for line in log_lines))
            (task_dir / "fileuploaderr.txt").write_text("".join(line + "\n" for line in error_lines))
