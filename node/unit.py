"""`python -m node unit --manifest FILE|URL`: count a whole work unit, fetching its inputs from Blob Storage.

The node reads each input itself with `azure.storage.blob.aio` (whole blobs, or the byte range of a
split file), at most `--concurrency` at a time, counting each download as its chunks arrive, so
memory holds a few chunks and the counts of the inputs in flight, never a whole blob. Per input it
uploads the seed's `_OUTPUT` file (not for a range: only the merge of all ranges has one); per unit
it writes one `topn.result` blob with every input's full counts and the task's AZ_BATCH_* identity,
spooled to a temporary file as inputs finish. docs/node.md describes the command, docs/contracts.md
the manifest and result formats.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, cast

from node.cli import non_negative_int, positive_int
from node.counting import BLOCK_BYTES
from node.extents import PackSplitter
from node.manifest import ManifestError, UnitInput, UnitManifest, parse_manifest
from node.ranges import RangeCounter, RangeCounts
from node.report import output_text
from node.result import (
    STATUS_FAILED,
    STATUS_OK,
    FileResult,
    ResultWriter,
    batch_identity,
)
from node.upload import (
    CONNECTION_TIMEOUT_S,
    READ_TIMEOUT_S,
    UPLOAD_RETRIES,
    Blob,
    Destination,
    Uploader,
    check_container_url,
    describe_error,
    redact,
    url_without_query,
)

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1
EXIT_USAGE = 2  # also: an input could not be read (the others are still counted and reported)
EXIT_UPLOAD_FAILED = 3
OUTPUT_URL_VARIABLE = "TOPN_OUTPUT_SAS_URL"
DEFAULT_CONCURRENCY = 8
READ_RETRIES = 4
# One GET per chunk: small enough that `concurrency` downloads in flight stay a few MiB each, large
# enough that a big range costs few requests. A blob up to this size is read in a single request.
CHUNK_BYTES = 4 << 20
# A download of up to this many bytes is counted on the event loop (a millisecond or so); a larger
# one in a thread, overlapped with its own next chunks, so the other downloads keep moving.
INLINE_COUNT_BYTES = 64 << 10
# Chunks of one big input downloaded ahead of the one being counted: download and counting overlap.
READ_AHEAD_CHUNKS = 2
# An entry with at most this many distinct words is written to the result on the event loop.
INLINE_WRITE_WORDS = 4096
RESULT_CONTENT_TYPE = "application/json"
OUTPUT_CONTENT_TYPE = "text/plain; charset=utf-8"


Extent = tuple[int, int]


class UsageError(Exception):
    """Bad flags or an unusable manifest: exit 2 with the message."""


@dataclasses.dataclass(frozen=True)
class UnitPlan:
    manifest_location: str
    destination: Destination
    concurrency: int
    upload_retries: int
    chunk_bytes: int = 4 << 20


# Hands a finished input's result on (its `_OUTPUT` upload and its result entry), bounded.
Report = Callable[[int, FileResult], Awaitable[None]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="node unit",
        description="Count every input of a work unit (a topn.unit manifest), read from Blob Storage.",
    )
    parser.add_argument(
        "--manifest", required=True, help="the unit's manifest: a file, or a blob URL with a read SAS"
    )
    parser.add_argument(
        "--output-container-url", help=f"container URL with a write SAS (default: ${OUTPUT_URL_VARIABLE})"
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=DEFAULT_CONCURRENCY,
        help=f"inputs read at a time (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--upload-retries", type=non_negative_int, default=UPLOAD_RETRIES, help="retries per blob upload"
    )
    parser.add_argument(
        "--chunk-bytes",
        type=positive_int,
        default=CHUNK_BYTES,
        help=f"bytes per GET request of an input (default {CHUNK_BYTES})",
    )
    return parser


def plan_from_args(argv: Sequence[str], environ: Mapping[str, str]) -> UnitPlan:
    args = build_parser().parse_args(argv)
    url = args.output_container_url or environ.get(OUTPUT_URL_VARIABLE)
    if not url:
        raise UsageError(
            f"no output destination: pass --output-container-url URL (a container SAS URL) "
            f"or set ${OUTPUT_URL_VARIABLE}"
        )
    try:
        destination = check_container_url(url)
    except ValueError as error:
        raise UsageError(str(error)) from error
    return UnitPlan(args.manifest, destination, args.concurrency, args.upload_retries, args.chunk_bytes)


def _retry_policy(retries: int) -> Any:
    from azure.storage.blob.aio import ExponentialRetry

    # As the uploader's: about 2, 4, 8, 16 s (±1 s) between tries, then give up.
    return ExponentialRetry(initial_backoff=0, increment_base=2, retry_total=retries, random_jitter_range=1)


def _client_options(retries: int, chunk_bytes: int = CHUNK_BYTES) -> dict[str, Any]:
    return {
        "retry_policy": _retry_policy(retries),
        "connection_timeout": CONNECTION_TIMEOUT_S,
        "read_timeout": READ_TIMEOUT_S,
        "max_single_get_size": chunk_bytes,
        "max_chunk_get_size": chunk_bytes,
    }


async def load_manifest(location: str) -> UnitManifest:
    """Read the manifest from a file or a blob URL; UsageError says why it cannot be used."""
    try:
        if location.startswith(("http://", "https://")):
            from azure.core.exceptions import AzureError
            from azure.storage.blob.aio import BlobClient

            try:
                async with BlobClient.from_blob_url(location, **_client_options(READ_RETRIES)) as blob:
                    data: bytes = await (await blob.download_blob()).readall()
            except AzureError as error:
                described = describe_error(error, "read")
                raise UsageError(
                    f"cannot read the manifest {url_without_query(location)!r}: {described}"
                ) from None
        else:
            try:
                data = await asyncio.to_thread(_read_file, location)
            except OSError as error:
                reason = error.strerror or error
                raise UsageError(f"cannot read the manifest {location!r}: {reason}") from None
        return parse_manifest(data)
    except ManifestError as error:
        raise UsageError(f"the manifest {url_without_query(location)!r} is not usable: {error}") from None


def _read_file(path: str) -> bytes:
    return Path(path).read_bytes()


def _error_kind(error: BaseException) -> str:
    status = getattr(error, "status_code", None)
    if status == 404:
        return "not_found"
    if status == 403:
        return "forbidden"
    if status == 412:
        return "changed"
    return "read_failed"


def _total_size(content_range: str | None, fallback: int) -> int:
    """The blob's size from a `bytes a-b/TOTAL` content range (a ranged read's `size` is the range's)."""
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        if total.isdigit():
            return int(total)
    return fallback


class UnitRunner:
    """Reads, counts and reports the inputs of one unit with one client per source container."""

    def __init__(self, manifest: UnitManifest, plan: UnitPlan, environ: Mapping[str, str]) -> None:
        self._manifest = manifest
        self._plan = plan
        self._environ = environ
        self._identity = batch_identity(environ)
        self._sources: list[Any] = []
        self._write_lock = asyncio.Lock()
        self.read_failures = 0
        self.upload_failures: list[str] = []

    async def run(self, uploader: Uploader) -> None:
        """Count every input, upload the `_OUTPUT` files and the result blob."""
        from azure.storage.blob.aio import ContainerClient

        options = _client_options(READ_RETRIES, self._plan.chunk_bytes)
        try:
            for url in self._manifest.sources:
                self._sources.append(ContainerClient.from_container_url(url, **options))
            # On disk, not in memory: the result holds every input's full counts.
            with tempfile.TemporaryFile() as spool:
                writer = ResultWriter(
                    spool,
                    unit=self._manifest.unit,
                    tokenizer=self._manifest.tokenizer,
                    top=self._manifest.top,
                    identity=self._identity,
                )
                await self._count_all(uploader, writer)
                writer.close()
                await self._upload_result(uploader, spool)
        finally:
            for client in self._sources:
                await client.close()

    async def _count_all(self, uploader: Uploader, writer: ResultWriter) -> None:
        # A fixed number of workers take jobs in manifest order: coroutines in flight are bounded
        # by --concurrency, never by the number of inputs. A job is one input, or one pack blob's
        # inputs (every input with an extent of that blob), read in one streamed GET.
        pending: Iterator[list[int]] = iter(_jobs(self._manifest.inputs))
        reporting = asyncio.Semaphore(self._plan.concurrency)
        reports: set[asyncio.Future[None]] = set()

        async def report(index: int, result: FileResult) -> None:
            try:
                result = await self._report(self._manifest.inputs[index], result, uploader)
                async with self._write_lock:
                    if len(result.counts) <= INLINE_WRITE_WORDS:
                        writer.add(result)
                    else:
                        await asyncio.to_thread(writer.add, result)
            finally:
                reporting.release()

        async def start_report(index: int, result: FileResult) -> None:
            # Bounded: a pack's inputs finish faster than their `_OUTPUT` uploads go.
            await reporting.acquire()
            task = asyncio.ensure_future(report(index, result))
            reports.add(task)
            task.add_done_callback(reports.discard)

        async def worker() -> None:
            for job in pending:
                if self._manifest.inputs[job[0]].extent is not None:
                    await self._count_pack(job, start_report)
                else:
                    (index,) = job
                    await start_report(index, await self._read_and_count(index, self._manifest.inputs[index]))

        count = min(self._plan.concurrency, len(self._manifest.inputs))
        workers = [asyncio.ensure_future(worker()) for _ in range(count)]
        try:
            await asyncio.gather(*workers)
            while reports:
                await asyncio.gather(*list(reports))
        except BaseException:
            # Python 3.10 has no TaskGroup: one failing worker cancels the others, all are awaited.
            for task in [*workers, *reports]:
                task.cancel()
            await asyncio.gather(*workers, *reports, return_exceptions=True)
            raise

    async def _report(self, unit_input: UnitInput, result: FileResult, uploader: Uploader) -> FileResult:
        """Upload the input's `_OUTPUT` file (not for a failure or a range); the result to write."""
        if result.status != STATUS_OK:
            self.read_failures += 1
            return result
        if unit_input.output_name is None:
            return result
        text = output_text(_top(result.counts, self._manifest.top), self._environ)
        output = Blob(unit_input.output_name, text.encode("utf-8"), OUTPUT_CONTENT_TYPE)
        failures = await uploader.upload([output])
        self.upload_failures += [failure.message for failure in failures]
        return dataclasses.replace(result, output_uploaded=not failures)

    async def _count_pack(self, indexes: list[int], report: Report) -> None:
        """Count the inputs packed in one blob over one streamed read of the span of their extents."""
        from azure.core.exceptions import AzureError

        first = self._manifest.inputs[indexes[0]]
        splitter = PackSplitter([cast(Extent, self._manifest.inputs[index].extent) for index in indexes])
        counters: dict[int, RangeCounter] = {}
        etag: list[str | None] = [None]

        def feed(chunk: bytes) -> list[tuple[int, FileResult]]:
            finished: list[tuple[int, FileResult]] = []
            for piece in splitter.feed(chunk):
                counter = counters.get(piece.extent)
                if counter is None:
                    counter = counters[piece.extent] = RangeCounter(self._manifest.tokenizer, 0, None)
                _feed_in_blocks(counter, piece.data)
                if piece.done:
                    position = indexes[piece.extent]
                    counted = counters.pop(piece.extent).finish()
                    finished.append((position, self._packed_result(position, counted, etag[0])))
            return finished

        try:
            if splitter.end > splitter.start:
                blob = self._sources[first.source].get_blob_client(first.blob)
                downloader = await blob.download_blob(
                    offset=splitter.start, length=splitter.end - splitter.start
                )
                etag[0] = downloader.properties.etag
                async for chunk in downloader.chunks():
                    if len(chunk) <= INLINE_COUNT_BYTES:
                        done = feed(chunk)
                    else:
                        done = await asyncio.to_thread(feed, chunk)
                    for position, result in done:
                        await report(position, result)
            for position, result in feed(b""):  # empty extents at the span's end (or an empty span)
                await report(position, result)
            failure = (
                "read_failed",
                f"the pack blob {first.blob!r} ended at byte {splitter.position}, before the input's extent",
            )
        except AzureError as error:
            failure = (
                _error_kind(error),
                f"cannot read pack blob {first.blob!r} of "
                f"{url_without_query(self._manifest.sources[first.source])}: "
                + describe_error(error, "read"),
            )
        for extent in splitter.unfinished():
            position = indexes[extent]
            unit_input = self._manifest.inputs[position]
            kind, message = failure
            await report(
                position,
                FileResult(
                    position,
                    unit_input.relpath,
                    STATUS_FAILED,
                    unit_input.output_name,
                    None,
                    error_kind=kind,
                    error_message=message,
                ),
            )

    def _packed_result(self, position: int, counted: RangeCounts, etag: str | None) -> FileResult:
        unit_input = self._manifest.inputs[position]
        return FileResult(
            position,
            unit_input.relpath,
            STATUS_OK,
            unit_input.output_name,
            None,
            counted=(counted.counted_start, counted.counted_end),
            size=cast(Extent, unit_input.extent)[1],
            etag=etag,
            words=counted.counts.words,
            invalid_bytes=counted.counts.invalid_bytes,
            counts=list(counted.counts.counts.items()),
        )

    async def _read_and_count(self, index: int, unit_input: UnitInput) -> FileResult:
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError

        blob = self._sources[unit_input.source].get_blob_client(unit_input.blob)
        start, end = unit_input.byte_range or (0, None)
        counter = RangeCounter(self._manifest.tokenizer, start, end)
        conditions: dict[str, Any] = {}
        if unit_input.byte_range is not None and unit_input.etag is not None:
            # Every range of a split file must read the same version, or the merge would be wrong.
            conditions = {"etag": unit_input.etag, "match_condition": MatchConditions.IfNotModified}
        try:
            # A whole blob is read without an offset: the SDK then also handles an empty blob (a
            # ranged GET of an empty blob is a 416). A range is read from its start to the blob's
            # end, and the download stops as soon as the range's last word is complete.
            downloader = await blob.download_blob(offset=start or None, **conditions)
            etag = downloader.properties.etag
            size = _total_size(downloader.properties.content_range, start + downloader.size)
            if downloader.size <= INLINE_COUNT_BYTES:
                # Small (most inputs): one chunk, counted on the loop; no thread hop, no extra task.
                async for chunk in downloader.chunks():
                    if counter.feed(chunk):
                        break
                counted = counter.finish()
            else:
                await _count_overlapped(downloader.chunks(), counter)
                counted = await asyncio.to_thread(counter.finish)
        except AzureError as error:
            return FileResult(
                index,
                unit_input.relpath,
                STATUS_FAILED,
                unit_input.output_name,
                unit_input.byte_range,
                error_kind=_error_kind(error),
                error_message=f"cannot read blob {unit_input.blob!r} of "
                f"{url_without_query(self._manifest.sources[unit_input.source])}: "
                + describe_error(error, "read"),
            )
        return FileResult(
            index,
            unit_input.relpath,
            STATUS_OK,
            unit_input.output_name,
            unit_input.byte_range,
            counted=(counted.counted_start, counted.counted_end),
            size=size,
            etag=etag,
            words=counted.counts.words,
            invalid_bytes=counted.counts.invalid_bytes,
            counts=list(counted.counts.counts.items()),
        )

    async def _upload_result(self, uploader: Uploader, spool: IO[bytes]) -> None:
        spool.seek(0)
        failures = await uploader.upload([Blob(self._manifest.result_name, spool, RESULT_CONTENT_TYPE)])
        self.upload_failures += [failure.message for failure in failures]


async def _count_overlapped(chunks: AsyncIterator[bytes], counter: RangeCounter) -> None:
    """Count chunks in a thread while the next ones download (at most READ_AHEAD_CHUNKS held)."""
    queue: asyncio.Queue[bytes | Exception | None] = asyncio.Queue(maxsize=READ_AHEAD_CHUNKS)

    async def download() -> None:
        try:
            async for chunk in chunks:
                await queue.put(chunk)
            await queue.put(None)
        except Exception as error:  # handed to the counting side, which raises it
            await queue.put(error)

    downloading = asyncio.ensure_future(download())
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            if await asyncio.to_thread(_feed_in_blocks, counter, item):
                return  # the range is complete: the rest of the blob is never requested
    finally:
        downloading.cancel()
        await asyncio.gather(downloading, return_exceptions=True)


def _jobs(inputs: Sequence[UnitInput]) -> list[list[int]]:
    """The unit's jobs in manifest order: each input alone, or all the inputs with extents of one
    blob together (at the position of the first of them)."""
    jobs: list[list[int]] = []
    packs: dict[tuple[int, str], list[int]] = {}
    for index, unit_input in enumerate(inputs):
        if unit_input.extent is None:
            jobs.append([index])
            continue
        key = (unit_input.source, unit_input.blob)
        if key not in packs:
            packs[key] = []
            jobs.append(packs[key])
        packs[key].append(index)
    return jobs


def _feed_in_blocks(counter: RangeCounter, chunk: bytes) -> bool:
    """Feed a chunk in the node's usual block size: the token lists of one block stay small."""
    # any() stops at the first True: later blocks belong to the next range.
    starts = range(0, len(chunk), BLOCK_BYTES)
    return any(counter.feed(chunk[start : start + BLOCK_BYTES]) for start in starts)


def _top(counts: list[tuple[str, int]], top: int) -> list[tuple[str, int]]:
    """The node's own ranking, as `python -m node` ranks (Counter.most_common over first-occurrence order)."""
    from collections import Counter

    return Counter(dict(counts)).most_common(top)


def _say(message: str) -> None:
    print(f"node: {redact(message)}", file=sys.stderr, flush=True)


async def run_unit(plan: UnitPlan, environ: Mapping[str, str]) -> int:
    """Load the manifest and count the unit; the exit status."""
    manifest = await load_manifest(plan.manifest_location)
    runner = UnitRunner(manifest, plan, environ)
    async with Uploader(plan.destination, retries=plan.upload_retries) as uploader:
        await runner.run(uploader)
    status = EXIT_OK
    if runner.read_failures:
        _say(
            f"{runner.read_failures} of {len(manifest.inputs)} inputs could not be read "
            f"(the result blob {manifest.result_name!r} says which and why)"
        )
        status = EXIT_USAGE
    for message in runner.upload_failures:
        _say(message)
        status = EXIT_UPLOAD_FAILED
    return status


def main(argv: Sequence[str]) -> int:
    """`node unit ...`: the exit status (0 ok, 2 usage or unreadable input, 3 upload failed, 1 bug)."""
    environ = os.environ
    try:
        plan = plan_from_args(argv, environ)
    except UsageError as error:
        _say(str(error))
        return EXIT_USAGE
    azure_logger = logging.getLogger("azure")
    azure_logger.addHandler(logging.NullHandler())
    azure_logger.propagate = False
    try:
        return asyncio.run(run_unit(plan, environ))
    except UsageError as error:
        _say(str(error))
        return EXIT_USAGE
    except Exception:
        print(redact(traceback.format_exc()), file=sys.stderr, end="", flush=True)
        return EXIT_INTERNAL_ERROR
