"""A unit's manifest as the node reads it, and its result blob sorted into each input's outcome."""

from __future__ import annotations

import io

from node.manifest import parse_manifest
from node.result import FileResult, ResultWriter, decode_result_blob
from orchestrator import naming
from orchestrator.run.units import FailedFile, RenderedFile, UnitEntry, build_manifest, settle_unit

SOURCE = "http://127.0.0.1:10000/devstoreaccount1/topn-in-r?sv=2023-11-03&sr=c&sp=r&sig=abc"
IDENTITY = {"AZ_BATCH_NODE_ID": "node-7", "AZ_BATCH_TASK_ID": "t000001", "AZ_BATCH_JOB_ID": "topn-r"}


def result_blob(entries: list[FileResult], top: int = 2) -> bytes:
    """A result blob as the node writes it (node/result.py's writer)."""
    target = io.BytesIO()
    writer = ResultWriter(target, unit="t000001", tokenizer="words", top=top, identity=IDENTITY)
    for entry in entries:
        writer.add(entry)
    writer.close()
    return target.getvalue()


def ok(index: int, relpath: str, counts: list[tuple[str, int]]) -> FileResult:
    return FileResult(
        index,
        relpath,
        "ok",
        naming.output_name(relpath),
        None,
        counted=(0, 9),
        size=9,
        words=sum(count for _, count in counts),
        invalid_bytes=1,
        counts=counts,
    )


def test_the_manifest_names_every_input_with_its_blob_output_and_the_result() -> None:
    data = build_manifest(
        "t000001",
        tokenizer="tutorial",
        top=4,
        source_url=SOURCE,
        entries=[UnitEntry("a b.txt", "runs/r/a b.txt", 3), UnitEntry("-x", "runs/r/-x", 0)],
    )
    manifest = parse_manifest(data)
    assert (manifest.unit, manifest.tokenizer, manifest.top) == ("t000001", "tutorial", 4)
    assert manifest.result_name == "results/t000001.json.gz" and manifest.sources == (SOURCE,)
    assert [(item.relpath, item.blob, item.output_name, item.size) for item in manifest.inputs] == [
        ("a b.txt", "runs/r/a b.txt", "a b_OUTPUT.txt", 3),
        ("-x", "runs/r/-x", "-x_OUTPUT", 0),
    ]
    assert all(item.byte_range is None and item.source == 0 for item in manifest.inputs)


def test_a_result_gives_each_input_its_rendered_output_or_its_failure() -> None:
    relpaths = ["a.txt", "b.txt", "c.txt", "d.txt"]
    failed = FileResult(1, "b.txt", "failed", "b_OUTPUT.txt", None, error_kind="not_found", error_message="x")
    # Entries arrive in the order inputs finished; one names another unit's file; one is missing.
    blob = result_blob(
        [ok(2, "elsewhere.txt", [("x", 1)]), failed, ok(0, "a.txt", [("b", 1), ("a", 2), ("c", 2)])]
    )
    settled = settle_unit(decode_result_blob(blob), relpaths)
    assert [type(item) for item in settled] == [RenderedFile, FailedFile, FailedFile, FailedFile]
    first = settled[0]
    assert isinstance(first, RenderedFile) and first.output_name == "a_OUTPUT.txt"
    assert first.counts.counts == [("b", 1), ("a", 2), ("c", 2)] and first.counts.invalid_bytes == 1
    # The top 2, ties by first occurrence, then the node's ids (the seed's `_OUTPUT` layout).
    assert first.text.decode() == (
        "Word\tCount\n" + "-" * 30 + "\na:\t2\nc:\t2\n" + "-" * 30 + "\n"
        "Node: node-7\nTask: t000001\nJob:  topn-r\nPool: local\n"
    )
    assert settled[1] == FailedFile(1, "x")
    assert settled[2] == FailedFile(2, None) and settled[3] == FailedFile(3, None)


def test_no_result_blob_fails_every_input_without_a_reason_of_its_own() -> None:
    assert settle_unit(None, ["a", "b"]) == [FailedFile(0, None), FailedFile(1, None)]
