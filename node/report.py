"""What the node writes: the tutorial's `_OUTPUT` text, the counts blob and the `--json` line."""

from __future__ import annotations

import gzip
import json
import posixpath
from collections.abc import Mapping
from typing import Any

from node.counting import FileCounts
from node.tokenizers import Tokenizer

COUNTS_FORMAT = "topn.counts"
COUNTS_VERSION = 1
COUNTS_SUFFIX = ".counts.json.gz"
DASHES = "-" * 30
_BATCH_IDS = (("Node: ", "AZ_BATCH_NODE_ID"), ("Task: ", "AZ_BATCH_TASK_ID"), ("Job:  ", "AZ_BATCH_JOB_ID"))
_POOL_ID = ("Pool: ", "AZ_BATCH_POOL_ID")
# The variables `_OUTPUT` shows, which a unit's result blob keeps so `_OUTPUT` can be rendered anywhere.
BATCH_ID_VARIABLES = tuple(variable for _, variable in (*_BATCH_IDS, _POOL_ID))


def output_text(top: list[tuple[str, int]], environ: Mapping[str, str]) -> str:
    """The seed's result file, byte for byte; ids it cannot find read `local`."""
    lines = ["Word\tCount", DASHES]
    lines += [f"{word}:\t{count}" for word, count in top]
    lines.append(DASHES)
    for label, variable in (*_BATCH_IDS, _POOL_ID):
        lines.append(label + (environ.get(variable) or "local"))
    return "\n".join(lines) + "\n"


def counts_document(file: str, tokenizer: Tokenizer, result: FileCounts) -> dict[str, Any]:
    """The counts blob's JSON object (docs/contracts.md): every word once, in first-occurrence order."""
    return {
        "format": COUNTS_FORMAT,
        "version": COUNTS_VERSION,
        "file": file,
        "tokenizer": tokenizer,
        "words": result.words,
        "distinct": result.distinct,
        "invalid_bytes": result.invalid_bytes,
        "counts": [[word, count] for word, count in result.counts.items()],
    }


def encode_counts_blob(document: Mapping[str, Any]) -> bytes:
    """Compact gzip JSON; mtime 0 so the same counts always give the same bytes."""
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    # surrogatepass is never needed: undecodable bytes were replaced by U+FFFD before counting.
    return gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)


def decode_counts_blob(blob: bytes) -> dict[str, Any]:
    """Read a counts blob back, checking its format and version."""
    document = json.loads(gzip.decompress(blob).decode("utf-8"))
    if not isinstance(document, dict) or document.get("format") != COUNTS_FORMAT:
        raise ValueError(f"not a {COUNTS_FORMAT} blob")
    if document.get("version") != COUNTS_VERSION:
        raise ValueError(f"unsupported {COUNTS_FORMAT} version {document.get('version')!r}")
    return document


def json_line(file: str, tokenizer: Tokenizer, result: FileCounts, top: int) -> str:
    """The `--json` result: one compact JSON object."""
    return json.dumps(
        {
            "file": file,
            "tokenizer": tokenizer,
            "top": [[word, count] for word, count in result.top(top)],
            "words": result.words,
            "distinct": result.distinct,
            "invalid_bytes": result.invalid_bytes,
        },
        ensure_ascii=False,
    )


def default_output_name(filepath: str) -> str:
    """`<path without extension>_OUTPUT<ext>` of the input as given, kept relative when it is.

    Keeping the relative folder (as the seed did) means `a/x.txt` and `b/x.txt` never collide; an
    absolute or escaping path falls back to its base name.
    """
    path = posixpath.normpath(filepath.replace("\\", "/"))
    if path.startswith("/") or path == ".." or path.startswith("../"):
        path = posixpath.basename(path)
    stem, ext = posixpath.splitext(path)
    return f"{stem}_OUTPUT{ext}"
