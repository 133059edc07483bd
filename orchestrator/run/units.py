"""Work units on the wire: the manifest a task brings (`topn.unit`) and what its result (`topn.result`) gives.

The formats are the node's own (node/manifest.py, node/result.py: pure, standard-library modules the
orchestrator may import), so there is one reader and one writer of each. This module is the
orchestrator's side: the manifest of a unit from its staged inputs, and a finished unit's result
sorted into each input's saved `_OUTPUT` text or failure. Pure functions; the I/O is in the stages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from node.manifest import UnitInput, UnitManifest, encode_manifest
from node.result import STATUS_OK, UnitResult, render_output
from node.tokenizers import Tokenizer
from orchestrator import naming
from orchestrator.results import FileCounts

# The one source of a unit of local inputs: the run's input container, read through a container SAS.
INPUT_SOURCE = 0


@dataclass(frozen=True)
class UnitEntry:
    """One input of a unit as the manifest names it: a whole blob, or one byte range of a split input's."""

    relpath: str
    blob_name: str
    size_bytes: int
    byte_range: tuple[int, int] | None = None  # nominal; its `_OUTPUT` is the merge's (run/splitting.py)
    # A local input: the blob version every range of a split one reads. An input read where it lives:
    # the ETag it was listed with (the node reports the one it read; a range reads only that one).
    etag: str | None = None
    container: str | None = None  # an input read where it lives: its container (None: the run's)
    extent: tuple[int, int] | None = None  # a packed input: (offset, length) in `blob_name`, its pack


def build_manifest(
    task_id: str,
    *,
    tokenizer: Tokenizer,
    top: int,
    source_url: str,
    entries: Sequence[UnitEntry],
    blob_sources: Mapping[str, str] | None = None,
) -> bytes:
    """The unit's manifest: local inputs read from `source_url` (the run's input container with a
    read SAS), inputs that live in Blob Storage from their container's URL in `blob_sources`.

    `sources` holds the run's container first, then each other container the unit reads, once, in
    order of first use. An input that could not be uploaded is still listed (its blob does not
    exist): the node reports it `not_found` and counts the others, and the run puts the real reason
    in its summary entry.
    """
    sources = [source_url]
    position: dict[str | None, int] = {None: INPUT_SOURCE}
    for entry in entries:
        container = entry.container
        if container is not None and container not in position:
            if blob_sources is None or container not in blob_sources:
                raise KeyError(f"no read SAS URL for container {container!r}")
            position[container] = len(sources)
            sources.append(blob_sources[container])
    manifest = UnitManifest(
        unit=task_id,
        tokenizer=tokenizer,
        top=top,
        result_name=naming.unit_result_name(task_id),
        sources=tuple(sources),
        inputs=tuple(
            UnitInput(
                relpath=entry.relpath,
                source=position[entry.container],
                blob=entry.blob_name,
                output_name=naming.output_name(entry.relpath) if entry.byte_range is None else None,
                byte_range=entry.byte_range,
                etag=entry.etag,
                size=entry.size_bytes,
                extent=entry.extent,
            )
            for entry in entries
        ),
    )
    return encode_manifest(manifest)


@dataclass(frozen=True)
class RenderedFile:
    """An input the node counted: its counts and the `_OUTPUT` text to save under `output_name`."""

    position: int  # in the unit
    output_name: str
    text: bytes
    counts: FileCounts
    etag: str | None = None  # of the blob version the node read
    size_bytes: int | None = None  # of that version


@dataclass(frozen=True)
class FailedFile:
    """An input without a result: the node could not read it, or the result does not mention it."""

    position: int
    reason: str | None  # the node's own (never a SAS); None when the result is silent about it


def settle_unit(result: UnitResult | None, relpaths: Sequence[str]) -> list[RenderedFile | FailedFile]:
    """Each input of a unit (by position) as its result blob tells it; no blob: every input failed.

    An entry must name the input at its position (a result of another unit, or a damaged one, is
    not taken for this one's); the `_OUTPUT` text is rendered exactly as the node renders it.
    """
    entries = {entry.index: entry for entry in result.files} if result is not None else {}
    settled: list[RenderedFile | FailedFile] = []
    for position, relpath in enumerate(relpaths):
        entry = entries.get(position)
        if result is None or entry is None or entry.relpath != relpath:
            settled.append(FailedFile(position, None))
        elif entry.status != STATUS_OK:
            reason = entry.error_message or f"the node could not read it ({entry.error_kind})"
            settled.append(FailedFile(position, reason))
        else:
            text = render_output(entry.counts, result.top, result.identity)
            counts = FileCounts(entry.words, entry.distinct, entry.invalid_bytes, entry.counts)
            settled.append(
                RenderedFile(
                    position,
                    naming.output_name(relpath),
                    text.encode("utf-8"),
                    counts,
                    etag=entry.etag,
                    size_bytes=entry.size,
                )
            )
    return settled


def outcome_record(
    *, succeeded: bool, exit_code: int | None, failure_code: str | None, message: str | None
) -> Mapping[str, object]:
    """A task's outcome as the journal keeps it."""
    return {
        "status": "succeeded" if succeeded else "failed",
        "exit_code": exit_code,
        "failure_code": failure_code,
        "message": message,
    }


def changed_blob_note(
    listed_etag: str, read_etag: str | None, listed_size: int, read_size: int | None
) -> str | None:
    """What to say of an input read where it lives whose blob changed between listing and reading, or None.

    The node counts whatever version it reads (a whole blob is read without a condition); the run
    keeps that count and says so.
    """
    if read_etag is None or read_etag.strip('"') == listed_etag.strip('"'):
        return None
    sizes = (
        "" if read_size is None or read_size == listed_size else f", size {listed_size} -> {read_size} bytes"
    )
    return (
        f"the blob changed between listing and reading (ETag {listed_etag} -> {read_etag}{sizes}); "
        "counted as read"
    )
