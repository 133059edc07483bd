"""The unit result blob (`topn.result`, version 1): every input's full counts and the task's identity.

Written by `node unit` as it goes (one entry per input, in the order inputs finish, each with its
manifest index), read back with `decode_result_blob`. `render_output` turns an entry into the
`_OUTPUT` text the node uploaded, byte for byte, and `merge_ranges` adds a split file's ranges into
exactly the one-process count. Pure and standard-library only; docs/contracts.md has the format.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, TypeGuard

from node.report import BATCH_ID_VARIABLES, output_text
from node.tokenizers import TOKENIZERS

RESULT_FORMAT = "topn.result"
RESULT_VERSION = 1
STATUS_OK = "ok"
STATUS_FAILED = "failed"
# Why an input failed: its blob is missing, the SAS does not allow reading it, it changed while a
# range was read (ranges read only the manifest's ETag), or any other read error.
ERROR_KINDS = ("not_found", "forbidden", "changed", "read_failed")


class ResultFormatError(ValueError):
    """A result blob that is not a valid `topn.result` version 1 document."""


class MergeError(ValueError):
    """Ranges that do not add up to one whole file (a gap, an overlap, two versions, a failure)."""


@dataclass(frozen=True)
class FileResult:
    """One entry of a result blob: an input (or one range of a split input) and its counts."""

    index: int  # the input's position in the unit's manifest
    relpath: str
    status: str  # "ok" or "failed"
    output_name: str | None
    byte_range: tuple[int, int] | None  # the nominal range of the manifest; None for a whole blob
    counted: tuple[int, int] | None = None  # the bytes really counted, [start, end)
    size: int | None = None  # the blob's size as read
    etag: str | None = None  # the ETag of the version read
    words: int = 0
    invalid_bytes: int = 0
    counts: list[tuple[str, int]] = field(default_factory=list)  # first-occurrence order
    output_uploaded: bool = False
    error_kind: str | None = None
    error_message: str | None = None

    @property
    def distinct(self) -> int:
        return len(self.counts)


@dataclass(frozen=True)
class UnitResult:
    unit: str
    tokenizer: str
    top: int
    identity: dict[str, str]  # the AZ_BATCH_* variables that were set on the node
    files: list[FileResult]  # sorted by manifest index


def batch_identity(environ: Mapping[str, str]) -> dict[str, str]:
    """The AZ_BATCH_* ids that `_OUTPUT` shows, as set in `environ` (unset ones left out)."""
    return {name: environ[name] for name in BATCH_ID_VARIABLES if name in environ}


def file_document(result: FileResult) -> dict[str, Any]:
    """One entry's JSON object: the counts blob's keys (`file`, `words`, ...) plus the unit's."""
    document: dict[str, Any] = {
        "index": result.index,
        "file": result.relpath,
        "status": result.status,
        "output_name": result.output_name,
        "range": None if result.byte_range is None else list(result.byte_range),
    }
    if result.status == STATUS_OK:
        document.update(
            counted=None if result.counted is None else list(result.counted),
            size=result.size,
            etag=result.etag,
            words=result.words,
            distinct=result.distinct,
            invalid_bytes=result.invalid_bytes,
            output_uploaded=result.output_uploaded,
            counts=[[word, count] for word, count in result.counts],
        )
    else:
        document["error"] = {"kind": result.error_kind, "message": result.error_message}
    return document


class ResultWriter:
    """Streams a result document as gzip JSON into a binary file, one entry at a time.

    Entries are written as they come (memory holds one), so the header goes first and `close`
    ends the `files` list. The gzip header carries no timestamp.
    """

    def __init__(
        self, target: IO[bytes], *, unit: str, tokenizer: str, top: int, identity: Mapping[str, str]
    ) -> None:
        self._gzip = gzip.GzipFile(fileobj=target, mode="wb", compresslevel=6, mtime=0)
        header = {
            "format": RESULT_FORMAT,
            "version": RESULT_VERSION,
            "unit": unit,
            "tokenizer": tokenizer,
            "top": top,
            "identity": dict(identity),
        }
        self._gzip.write(_dumps(header)[:-1].encode("utf-8") + b',"files":[')
        self._first = True

    def add(self, result: FileResult) -> None:
        self._gzip.write((b"" if self._first else b",") + _dumps(file_document(result)).encode("utf-8"))
        self._first = False

    def close(self) -> None:
        self._gzip.write(b"]}")
        self._gzip.close()


def _dumps(document: Mapping[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _pair(value: object, where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2 or not all(_is_int(bound) for bound in value):
        raise ResultFormatError(f"{where}: expected null or [start, end]")
    if not 0 <= value[0] <= value[1]:
        raise ResultFormatError(f"{where}: expected 0 <= start <= end")
    return (value[0], value[1])


def _optional(value: object, kind: type, where: str) -> Any:
    if value is None:
        return None
    # bool is an int to isinstance; JSON keeps them apart, so do we.
    if kind is bool:
        fits = isinstance(value, bool)
    else:
        fits = isinstance(value, kind) and not isinstance(value, bool)
    if not fits:
        raise ResultFormatError(f"{where}: expected null or {kind.__name__}")
    return value


def _parse_counts(raw: object, where: str) -> list[tuple[str, int]]:
    if not isinstance(raw, list):
        raise ResultFormatError(f"{where}.counts: expected a list")
    # Exact types (JSON gives no subclasses; bool is not a count), checked inline: a unit holds every
    # word of every file, and a call per pair was most of this function's time.
    for pair in raw:
        if not (type(pair) is list and len(pair) == 2 and type(pair[0]) is str and type(pair[1]) is int):
            raise ResultFormatError(f"{where}.counts: bad entry {pair!r}, expected [word, count]")
    return [(word, count) for word, count in raw]


def _parse_file(raw: object, position: int) -> FileResult:
    where = f"files[{position}]"
    if not isinstance(raw, dict):
        raise ResultFormatError(f"{where}: expected an object")
    index, relpath, status = raw.get("index"), raw.get("file"), raw.get("status")
    if not _is_int(index) or index < 0:
        raise ResultFormatError(f"{where}.index: expected a manifest position")
    if not isinstance(relpath, str) or not relpath:
        raise ResultFormatError(f"{where}.file: expected a non-empty string")
    output_name = _optional(raw.get("output_name"), str, f"{where}.output_name")
    byte_range = _pair(raw.get("range"), f"{where}.range")
    if status == STATUS_FAILED:
        error = raw.get("error")
        if not isinstance(error, dict) or error.get("kind") not in ERROR_KINDS:
            raise ResultFormatError(f"{where}.error: expected {{kind, message}} with kind in {ERROR_KINDS}")
        message = _optional(error.get("message"), str, f"{where}.error.message")
        return FileResult(
            index, relpath, status, output_name, byte_range, error_kind=error["kind"], error_message=message
        )
    if status != STATUS_OK:
        raise ResultFormatError(f"{where}.status: expected {STATUS_OK!r} or {STATUS_FAILED!r}")
    counts = _parse_counts(raw.get("counts"), where)
    words, invalid_bytes = raw.get("words"), raw.get("invalid_bytes")
    if not _is_int(words) or words != sum(count for _, count in counts):
        raise ResultFormatError(f"{where}.words: expected the sum of its counts")
    if not _is_int(invalid_bytes) or invalid_bytes < 0:
        raise ResultFormatError(f"{where}.invalid_bytes: expected a byte count")
    size = _optional(raw.get("size"), int, f"{where}.size")
    return FileResult(
        index,
        relpath,
        status,
        output_name,
        byte_range,
        counted=_pair(raw.get("counted"), f"{where}.counted"),
        size=size,
        etag=_optional(raw.get("etag"), str, f"{where}.etag"),
        words=words,
        invalid_bytes=invalid_bytes,
        counts=counts,
        output_uploaded=bool(_optional(raw.get("output_uploaded"), bool, f"{where}.output_uploaded")),
    )


def decode_result_blob(data: bytes) -> UnitResult:
    """Read a result blob back, checking its format and version; entries sorted by manifest index."""
    try:
        document = json.loads(gzip.decompress(data).decode("utf-8"))
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultFormatError(f"not gzip-compressed UTF-8 JSON: {error}") from None
    if not isinstance(document, dict) or document.get("format") != RESULT_FORMAT:
        raise ResultFormatError(f"not a {RESULT_FORMAT!r} blob")
    if document.get("version") != RESULT_VERSION:
        raise ResultFormatError(f"unsupported {RESULT_FORMAT} version {document.get('version')!r}")
    unit, tokenizer, top = document.get("unit"), document.get("tokenizer"), document.get("top")
    identity = document.get("identity")
    if not isinstance(unit, str) or tokenizer not in TOKENIZERS or not _is_int(top) or top < 0:
        raise ResultFormatError("bad 'unit', 'tokenizer' or 'top'")
    if not isinstance(identity, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in identity.items()
    ):
        raise ResultFormatError("'identity' must map variable names to strings")
    raw_files = document.get("files")
    if not isinstance(raw_files, list):
        raise ResultFormatError("'files' must be a list")
    files = [_parse_file(raw, position) for position, raw in enumerate(raw_files)]
    files.sort(key=lambda entry: entry.index)
    if len({entry.index for entry in files}) != len(files):
        raise ResultFormatError("two entries have the same index")
    return UnitResult(unit, str(tokenizer), top, identity, files)


def top_of(counts: Sequence[tuple[str, int]], top: int) -> list[tuple[str, int]]:
    """The `top` most frequent of first-occurrence-ordered counts, ties to the word seen first.

    A stable sort by count: the same order as `Counter.most_common` over the same insertion order.
    """
    return sorted(counts, key=lambda pair: -pair[1])[:top]


def render_output(counts: Sequence[tuple[str, int]], top: int, identity: Mapping[str, str]) -> str:
    """The `_OUTPUT` text of a file with these counts, as a node with this identity writes it."""
    return output_text(top_of(counts, top), identity)


@dataclass(frozen=True)
class MergedFile:
    """A split file's ranges added together: exactly the counts of one process over the whole file."""

    relpath: str
    size: int
    etag: str | None
    words: int
    invalid_bytes: int
    counts: list[tuple[str, int]]  # first-occurrence order over the whole file

    @property
    def distinct(self) -> int:
        return len(self.counts)


def merge_ranges(parts: Iterable[FileResult]) -> MergedFile:
    """Add a split file's range results (any order) into the whole file's; MergeError if they do not tile it.

    The ranges must all be `ok`, of one relpath and one blob version, and their counted bytes must
    follow each other from 0 to the blob's size with no gap or overlap.
    """
    ordered = sorted(parts, key=lambda part: (part.counted or (0, 0), part.byte_range or (0, 0)))
    if not ordered:
        raise MergeError("no ranges to merge")
    first = ordered[0]
    for part in ordered:
        if part.status != STATUS_OK or part.counted is None or part.size is None:
            raise MergeError(
                f"range {part.byte_range} of {part.relpath!r} was not counted ({part.error_kind})"
            )
        if part.relpath != first.relpath:
            raise MergeError(f"ranges of two files: {first.relpath!r} and {part.relpath!r}")
        if (part.etag, part.size) != (first.etag, first.size):
            raise MergeError(f"ranges of {first.relpath!r} read two versions of the blob")
    position = 0
    totals: dict[str, int] = {}
    current = totals.get
    words = invalid_bytes = 0
    for part in ordered:
        assert part.counted is not None  # checked above
        start, end = part.counted
        if start != position:
            raise MergeError(
                f"ranges of {first.relpath!r} leave bytes [{position}, {start}) uncounted or overlap"
            )
        position = end
        # Adding in file order inserts each word at its first occurrence in the whole file.
        for word, count in part.counts:
            totals[word] = current(word, 0) + count
        words += part.words
        invalid_bytes += part.invalid_bytes
    assert first.size is not None
    if position != first.size:
        raise MergeError(f"ranges of {first.relpath!r} end at byte {position}, the blob has {first.size}")
    return MergedFile(first.relpath, first.size, first.etag, words, invalid_bytes, list(totals.items()))
