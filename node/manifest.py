"""The unit manifest (`topn.unit`, v1 and v2): what one task counts, where each input lives, where results go.

Pure and standard-library only, so whoever builds units (the orchestrator) can build, check and
read manifests with exactly the node's rules. docs/contracts.md describes the format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from node.tokenizers import TOKENIZERS, Tokenizer

MANIFEST_FORMAT = "topn.unit"
MANIFEST_VERSION = 1
# Version 2 adds an input's `extent`: the input is exactly those bytes of its blob (a unit's pack of
# small files). A manifest without extents is written as version 1, so older nodes still read it.
EXTENT_MANIFEST_VERSION = 2
READABLE_VERSIONS = (MANIFEST_VERSION, EXTENT_MANIFEST_VERSION)
MAX_BLOB_NAME_CHARS = 1024


class ManifestError(ValueError):
    """A manifest that is not a valid `topn.unit` document; the message says where and why."""


@dataclass(frozen=True)
class UnitInput:
    """One input of a unit: a whole blob, or the byte range [start, end) of one (a split file's part)."""

    relpath: str  # the input's name in results (a relative path), not necessarily the blob's name
    source: int  # index into the manifest's `sources` (container URLs)
    blob: str  # the blob's name in that container
    output_name: str | None  # the `_OUTPUT` blob's name; None for a range (the merge renders it)
    byte_range: tuple[int, int] | None = None  # nominal [start, end); the node moves both to word ends
    etag: str | None = None  # the ETag seen when the unit was planned; ranges read only that version
    size: int | None = None  # the blob's size when planned (informational; ranges need no size)
    # (offset, length): the input is exactly these bytes of the blob (a pack of a unit's small files);
    # unlike a range, no boundary moves: the extent is the whole file. None: the whole blob.
    extent: tuple[int, int] | None = None


@dataclass(frozen=True)
class UnitManifest:
    """A parsed, checked manifest."""

    unit: str
    tokenizer: Tokenizer
    top: int
    result_name: str
    sources: tuple[str, ...]  # container URLs, each with a read SAS in its query (or public)
    inputs: tuple[UnitInput, ...]


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def check_blob_name(name: object, where: str) -> str:
    """A usable blob name (non-empty, relative, at most 1,024 characters), or ManifestError."""
    if not isinstance(name, str) or not name or name.startswith("/") or len(name) > MAX_BLOB_NAME_CHARS:
        raise ManifestError(
            f"{where}: {name!r} is not a usable blob name (non-empty, relative, ≤ 1024 characters)"
        )
    return name


def _check_source(url: object, where: str) -> str:
    if not isinstance(url, str):
        raise ManifestError(f"{where}: expected a container URL string")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or not parts.path.strip("/"):
        # Never echo the URL: its query may be a SAS.
        raise ManifestError(f"{where}: not an http(s) container URL")
    return url


def _check_range(value: object, where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(_is_int(bound) for bound in value)
        or not 0 <= value[0] < value[1]
    ):
        raise ManifestError(f"{where}: 'range' must be null or [start, end] with 0 <= start < end")
    return (value[0], value[1])


def _check_extent(value: object, where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(_is_int(number) for number in value)
        or value[0] < 0
        or value[1] < 0
    ):
        raise ManifestError(f"{where}: 'extent' must be null or [offset, length] with both >= 0")
    return (value[0], value[1])


def _parse_input(raw: object, index: int, source_count: int, version: int) -> UnitInput:
    where = f"inputs[{index}]"
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: expected an object")
    relpath = raw.get("relpath")
    if not isinstance(relpath, str) or not relpath:
        raise ManifestError(f"{where}: 'relpath' must be a non-empty string")
    source = raw.get("source")
    if not _is_int(source) or not 0 <= source < source_count:
        raise ManifestError(f"{where}: 'source' must index 'sources' (0..{source_count - 1})")
    blob = check_blob_name(raw.get("blob"), f"{where}.blob")
    byte_range = _check_range(raw.get("range"), where)
    output_name = raw.get("output_name")
    if byte_range is not None and output_name is not None:
        raise ManifestError(f"{where}: a range has no _OUTPUT of its own; 'output_name' must be null")
    if byte_range is None:
        output_name = check_blob_name(output_name, f"{where}.output_name")
    etag = raw.get("etag")
    if etag is not None and (not isinstance(etag, str) or not etag):
        raise ManifestError(f"{where}: 'etag' must be null or a non-empty string")
    size = raw.get("size")
    if size is not None and (not _is_int(size) or size < 0):
        raise ManifestError(f"{where}: 'size' must be null or a byte count")
    extent = _check_extent(raw.get("extent"), where)
    if extent is not None:
        if version < EXTENT_MANIFEST_VERSION:
            raise ManifestError(f"{where}: 'extent' needs manifest version {EXTENT_MANIFEST_VERSION}")
        if byte_range is not None:
            raise ManifestError(f"{where}: an input has a 'range' or an 'extent', not both")
    return UnitInput(relpath, source, blob, output_name, byte_range, etag, size, extent)


def parse_manifest(data: bytes | str) -> UnitManifest:
    """Read and check a manifest; ManifestError names the first problem (never a SAS)."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"not UTF-8 JSON: {error}") from None
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"not a {MANIFEST_FORMAT!r} manifest")
    version = document.get("version")
    if not _is_int(version) or version not in READABLE_VERSIONS:
        raise ManifestError(
            f"unsupported {MANIFEST_FORMAT} version {version!r} "
            f"(this node reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )
    unit = document.get("unit")
    if not isinstance(unit, str) or not unit:
        raise ManifestError("'unit' must be a non-empty string")
    tokenizer = document.get("tokenizer")
    if tokenizer not in TOKENIZERS:
        raise ManifestError(f"'tokenizer' must be one of {', '.join(TOKENIZERS)}")
    top = document.get("top")
    if not _is_int(top) or top < 0:
        raise ManifestError("'top' must be an integer, 0 or more")
    result_name = check_blob_name(document.get("result_name"), "result_name")
    raw_sources = document.get("sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        raise ManifestError("'sources' must be a non-empty list of container URLs")
    sources = tuple(_check_source(url, f"sources[{index}]") for index, url in enumerate(raw_sources))
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ManifestError("'inputs' must be a non-empty list")
    inputs = tuple(_parse_input(raw, index, len(sources), version) for index, raw in enumerate(raw_inputs))
    _check_unique(inputs, result_name)
    checked_tokenizer: Tokenizer = "words" if tokenizer == "words" else "tutorial"
    return UnitManifest(unit, checked_tokenizer, top, result_name, sources, inputs)


def _check_unique(inputs: Sequence[UnitInput], result_name: str) -> None:
    seen_outputs = {result_name}
    seen_parts: set[tuple[str, tuple[int, int] | None]] = set()
    for index, unit_input in enumerate(inputs):
        part = (unit_input.relpath, unit_input.byte_range)
        if part in seen_parts:
            raise ManifestError(
                f"inputs[{index}]: relpath {unit_input.relpath!r} with this range appears twice"
            )
        seen_parts.add(part)
        if unit_input.output_name is not None:
            if unit_input.output_name in seen_outputs:
                raise ManifestError(
                    f"inputs[{index}]: output_name {unit_input.output_name!r} is already written by this unit"
                )
            seen_outputs.add(unit_input.output_name)


def manifest_document(manifest: UnitManifest) -> dict[str, Any]:
    """The manifest's JSON object (for `encode_manifest`)."""
    return {
        "format": MANIFEST_FORMAT,
        "version": manifest_version(manifest),
        "unit": manifest.unit,
        "tokenizer": manifest.tokenizer,
        "top": manifest.top,
        "result_name": manifest.result_name,
        "sources": list(manifest.sources),
        "inputs": [_input_document(unit_input) for unit_input in manifest.inputs],
    }


def manifest_version(manifest: UnitManifest) -> int:
    """The oldest version that can say what the manifest says (2 only when an input has an extent)."""
    if any(unit_input.extent is not None for unit_input in manifest.inputs):
        return EXTENT_MANIFEST_VERSION
    return MANIFEST_VERSION


def _input_document(unit_input: UnitInput) -> Mapping[str, Any]:
    document: dict[str, Any] = {
        "relpath": unit_input.relpath,
        "source": unit_input.source,
        "blob": unit_input.blob,
        "output_name": unit_input.output_name,
        "range": None if unit_input.byte_range is None else list(unit_input.byte_range),
        "etag": unit_input.etag,
        "size": unit_input.size,
    }
    if unit_input.extent is not None:
        document["extent"] = list(unit_input.extent)
    return document


def encode_manifest(manifest: UnitManifest) -> bytes:
    """Compact UTF-8 JSON, checked: what `parse_manifest` accepts, or ManifestError."""
    data = json.dumps(manifest_document(manifest), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if parse_manifest(data) != manifest:
        raise ManifestError("the manifest does not read back as written")  # e.g. a list where a tuple was
    return data


def split_ranges(size: int, parts: int) -> list[tuple[int, int]]:
    """Nominal byte ranges of a blob of `size` bytes in `parts` near-equal pieces (the node aligns them)."""
    if size < 1 or parts < 1:
        raise ValueError("size and parts must be at least 1")
    parts = min(parts, size)
    bounds = [size * index // parts for index in range(parts + 1)]
    return [(bounds[index], bounds[index + 1]) for index in range(parts)]
