"""Unit manifest and result blob: round trips, every refusal, `_OUTPUT` rendered from a result entry."""

from __future__ import annotations

import gzip
import io
import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.counting import count_file
from node.manifest import (
    ManifestError,
    UnitInput,
    UnitManifest,
    encode_manifest,
    manifest_document,
    parse_manifest,
    split_ranges,
)
from node.report import output_text
from node.result import (
    STATUS_FAILED,
    STATUS_OK,
    FileResult,
    ResultFormatError,
    ResultWriter,
    batch_identity,
    decode_result_blob,
    render_output,
)
from node.tokenizers import TOKENIZERS, Tokenizer
from tests.unit.node.edge_files import EDGE_FILES

SOURCE = "https://acct.blob.core.windows.net/inputs?sv=2024&sp=r&sig=SECRETSIGNATURE"


def _manifest(**changes: Any) -> dict[str, Any]:
    document = manifest_document(
        UnitManifest(
            "t000001",
            "words",
            10,
            "results/t000001.json.gz",
            (SOURCE,),
            (
                UnitInput("a/b.txt", 0, "runs/r/a/b.txt", "a/b_OUTPUT.txt", etag='"0x1"', size=12),
                UnitInput("big.log", 0, "big.log", None, (0, 100), '"0x2"', 300),
            ),
        )
    )
    document.update(changes)
    return document


def _input(**changes: Any) -> dict[str, Any]:
    return {**_manifest()["inputs"][0], **changes}


# --- manifest -----------------------------------------------------------------------------------

relpaths = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)


@st.composite
def manifests(draw: st.DrawFn) -> UnitManifest:
    sources = tuple(
        f"https://a.blob.core.windows.net/c{index}?sig=x" for index in range(draw(st.integers(1, 3)))
    )
    inputs = []
    for index, relpath in enumerate(draw(st.lists(relpaths, min_size=1, max_size=8, unique=True))):
        extent: tuple[int, int] | None = None
        kind = draw(st.sampled_from(["whole", "range", "extent"]))
        if kind == "range":
            start = draw(st.integers(0, 1000))
            byte_range: tuple[int, int] | None = (start, start + draw(st.integers(1, 1000)))
            output_name = None
        else:
            byte_range, output_name = None, f"out/{index}_OUTPUT"
            if kind == "extent":
                extent = (draw(st.integers(0, 10**9)), draw(st.integers(0, 10**6)))
        inputs.append(
            UnitInput(
                relpath,
                draw(st.integers(0, len(sources) - 1)),
                "b/" + relpath.lstrip("/"),
                output_name,
                byte_range,
                draw(st.none() | st.just('"0xABC"')),
                draw(st.none() | st.integers(0, 10**12)),
                extent,
            )
        )
    return UnitManifest(
        draw(st.text(min_size=1, max_size=8)),
        draw(st.sampled_from(TOKENIZERS)),
        draw(st.integers(0, 1000)),
        "results/unit.json.gz",
        sources,
        tuple(inputs),
    )


@given(manifests())
def test_a_manifest_reads_back_as_written(manifest: UnitManifest) -> None:
    assert parse_manifest(encode_manifest(manifest)) == manifest


def test_a_manifest_is_version_2_exactly_when_an_input_has_an_extent() -> None:
    whole = UnitInput("a.txt", 0, "runs/r/a.txt", "a.txt_OUTPUT")
    packed = UnitInput("b.txt", 0, "packs/t000000", "b.txt_OUTPUT", extent=(0, 0))
    for inputs, version in (((whole,), 1), ((whole, packed), 2)):
        manifest = UnitManifest("t000000", "words", 3, "results/t.json.gz", (SOURCE,), inputs)
        assert json.loads(encode_manifest(manifest))["version"] == version
        assert parse_manifest(encode_manifest(manifest)) == manifest


def test_the_documented_example_parses() -> None:
    parsed = parse_manifest(json.dumps(_manifest()))
    assert parsed.inputs[1].byte_range == (0, 100) and parsed.inputs[1].output_name is None
    assert parsed.sources == (SOURCE,)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"format": "topn.counts", "version": 1}, "not a 'topn.unit' manifest"),
        (_manifest(version=3), "unsupported topn.unit version 3"),
        (_manifest(inputs=[_input(extent=[0, 5])]), "'extent' needs manifest version 2"),
        (
            _manifest(version=2, inputs=[_input(extent=[0, -1])]),
            r"'extent' must be null or \[offset, length\]",
        ),
        (_manifest(version=2, inputs=[_input(extent=[0, 5], range=[0, 5], output_name=None)]), "range"),
        (
            _manifest(version=2, inputs=[_input(extent=[0, 5], range=[0, 5])]),
            "a range has no _OUTPUT of its own",
        ),
        (_manifest(unit=""), "'unit'"),
        (_manifest(tokenizer="bigrams"), "'tokenizer' must be one of words, tutorial"),
        (_manifest(top=-1), "'top'"),
        (_manifest(top=True), "'top'"),
        (_manifest(result_name="/abs"), "result_name"),
        (_manifest(sources=[]), "'sources'"),
        (_manifest(sources=["ftp://x/c?sig=SECRETSIGNATURE"]), "sources\\[0\\]: not an http"),
        (_manifest(sources=["https://host/?sig=SECRETSIGNATURE"]), "sources\\[0\\]: not an http"),
        (_manifest(inputs=[]), "'inputs'"),
        (_manifest(inputs=[_input(source=1)]), "'source' must index"),
        (_manifest(inputs=[_input(relpath="")]), "'relpath'"),
        (_manifest(inputs=[_input(blob="")]), "inputs\\[0\\].blob"),
        (_manifest(inputs=[_input(output_name=None)]), "inputs\\[0\\].output_name"),
        (_manifest(inputs=[_input(range=[0, 5])]), "a range has no _OUTPUT"),
        (_manifest(inputs=[_input(range=[5, 5], output_name=None)]), "0 <= start < end"),
        (_manifest(inputs=[_input(range=[0, 5, 9], output_name=None)]), "0 <= start < end"),
        (_manifest(inputs=[_input(etag="")]), "'etag'"),
        (_manifest(inputs=[_input(size=-1)]), "'size'"),
        (_manifest(inputs=[_input(), _input(relpath="other")]), "already written by this unit"),
        (_manifest(inputs=[_input(output_name="results/t000001.json.gz")]), "already written by this unit"),
        (_manifest(inputs=[_input(), _input(output_name="x")]), "appears twice"),
    ],
)
def test_a_bad_manifest_is_refused_saying_where_and_never_showing_a_sas(document: Any, message: str) -> None:
    with pytest.raises(ManifestError, match=message) as raised:
        parse_manifest(json.dumps(document))
    assert "SECRETSIGNATURE" not in str(raised.value)


def test_a_manifest_that_is_not_json_is_refused() -> None:
    with pytest.raises(ManifestError, match="not UTF-8 JSON"):
        parse_manifest(b"\xff{")


@given(size=st.integers(1, 10**13), parts=st.integers(1, 64))
def test_split_ranges_tile_the_blob_in_near_equal_parts(size: int, parts: int) -> None:
    ranges = split_ranges(size, parts)
    assert len(ranges) == min(parts, size)
    assert ranges[0][0] == 0 and ranges[-1][1] == size
    assert all(left[1] == right[0] for left, right in itertools.pairwise(ranges))
    lengths = [end - start for start, end in ranges]
    assert min(lengths) >= 1 and max(lengths) - min(lengths) <= 1


# --- result blob --------------------------------------------------------------------------------


def _write(entries: list[FileResult], identity: dict[str, str], top: int = 3) -> bytes:
    buffer = io.BytesIO()
    writer = ResultWriter(buffer, unit="t7", tokenizer="words", top=top, identity=identity)
    for entry in entries:
        writer.add(entry)
    writer.close()
    return buffer.getvalue()


words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=6)


@st.composite
def ok_entries(draw: st.DrawFn, index: int) -> FileResult:
    counts = list(draw(st.dictionaries(words, st.integers(1, 10**9), max_size=20)).items())
    size = draw(st.integers(0, 10**9))
    return FileResult(
        index,
        f"f{index}.txt",
        STATUS_OK,
        f"f{index}_OUTPUT.txt",
        None,
        counted=(0, size),
        size=size,
        etag='"0x1"',
        words=sum(count for _, count in counts),
        invalid_bytes=draw(st.integers(0, 100)),
        counts=counts,
        output_uploaded=draw(st.booleans()),
    )


@given(st.data())
def test_a_result_blob_reads_back_with_entries_in_manifest_order(data: st.DataObject) -> None:
    count = data.draw(st.integers(0, 6))
    entries = [data.draw(ok_entries(index)) for index in range(count)]
    failed = FileResult(
        count,
        "gone.txt",
        STATUS_FAILED,
        "gone_OUTPUT.txt",
        None,
        error_kind="not_found",
        error_message="HTTP 404",
    )
    finishing_order = data.draw(st.permutations([*entries, failed]))
    blob = _write(list(finishing_order), {"AZ_BATCH_NODE_ID": "n1"})
    result = decode_result_blob(blob)
    assert result.files == [*entries, failed]
    assert (result.unit, result.tokenizer, result.top, result.identity) == (
        "t7",
        "words",
        3,
        {"AZ_BATCH_NODE_ID": "n1"},
    )
    assert blob == _write(list(finishing_order), {"AZ_BATCH_NODE_ID": "n1"})  # no timestamp inside


def _document(**changes: Any) -> bytes:
    entry = {
        "index": 0, "file": "a", "status": "ok", "output_name": "a_OUTPUT", "range": None, "counted": [0, 3],
        "size": 3, "etag": None, "words": 2, "distinct": 1, "invalid_bytes": 0, "output_uploaded": True,
        "counts": [["a", 2]],
    }  # fmt: skip
    document = {"format": "topn.result", "version": 1, "unit": "u", "tokenizer": "words", "top": 1,
                "identity": {}, "files": [entry]}  # fmt: skip
    files_changes = changes.pop("entry", {})
    entry.update(files_changes)
    document.update(changes)
    return gzip.compress(json.dumps(document).encode())


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"not gzip", "not gzip-compressed"),
        (_document(format="topn.counts"), "not a 'topn.result' blob"),
        (_document(version=2), "unsupported topn.result version 2"),
        (_document(tokenizer="x"), "'tokenizer'"),
        (_document(identity={"AZ_BATCH_NODE_ID": 1}), "'identity'"),
        (_document(files={}), "'files'"),
        (_document(entry={"index": -1}), "index"),
        (_document(entry={"status": "maybe"}), "status"),
        (_document(entry={"words": 3}), "sum of its counts"),
        (_document(entry={"counts": [["a", "2"]]}), "expected \\[word, count\\]"),
        (_document(entry={"counted": [3, 0]}), "start <= end"),
        (_document(entry={"size": True}), "size"),
        (_document(entry={"output_uploaded": 1}), "output_uploaded"),
        (_document(entry={"status": "failed", "error": {"kind": "oops"}}), "error"),
    ],
)
def test_a_bad_result_blob_is_refused(blob: bytes, message: str) -> None:
    with pytest.raises(ResultFormatError, match=message):
        decode_result_blob(blob)


def test_two_entries_with_one_index_are_refused() -> None:
    entry = FileResult(0, "a", STATUS_FAILED, None, (0, 1), error_kind="changed", error_message=None)
    with pytest.raises(ResultFormatError, match="same index"):
        decode_result_blob(_write([entry, entry], {}))


def test_batch_identity_keeps_only_the_ids_that_are_set() -> None:
    environ = {
        "AZ_BATCH_NODE_ID": "n",
        "AZ_BATCH_POOL_ID": "",
        "AZ_BATCH_TASK_WORKING_DIR": "/x",
        "HOME": "/h",
    }
    assert batch_identity(environ) == {"AZ_BATCH_NODE_ID": "n", "AZ_BATCH_POOL_ID": ""}


# --- _OUTPUT rendered from a result entry -------------------------------------------------------

NODE_ENVIRONMENTS = [
    {"AZ_BATCH_NODE_ID": "tvm-1_2-20261206t0900z", "AZ_BATCH_TASK_ID": "t000001", "AZ_BATCH_JOB_ID": "topn-j",
     "AZ_BATCH_POOL_ID": "topn-pool", "PATH": "/usr/bin"},
    {"AZ_BATCH_NODE_ID": "", "AZ_BATCH_TASK_ID": "t2"},
    {},
]  # fmt: skip


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
@pytest.mark.parametrize("name", sorted(EDGE_FILES))
def test_output_rendered_from_the_result_blob_is_byte_identical_to_the_nodes(
    tmp_path: Path, tokenizer: Tokenizer, name: str
) -> None:
    path = tmp_path / "input"
    path.write_bytes(EDGE_FILES[name])
    counted = count_file(path, tokenizer)
    entry = FileResult(
        0, name, STATUS_OK, "x_OUTPUT", None, counted=(0, 1), size=1, words=counted.words,
        invalid_bytes=counted.invalid_bytes, counts=list(counted.counts.items()),
    )  # fmt: skip
    for environ in NODE_ENVIRONMENTS:
        result = decode_result_blob(_write([entry], batch_identity(environ)))
        for top in (0, 1, 3, 10, 1000):
            # The node's own _OUTPUT (python -m node): Counter.most_common over the live environment.
            nodes = output_text(counted.top(top), environ).encode("utf-8")
            assert render_output(result.files[0].counts, top, result.identity).encode("utf-8") == nodes


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    counts=st.dictionaries(words, st.integers(1, 5), max_size=30),
    top=st.integers(0, 40),
)
def test_rendering_ranks_ties_as_counter_most_common_does(counts: dict[str, int], top: int) -> None:
    pairs = list(counts.items())
    assert render_output(pairs, top, {}) == output_text(Counter(counts).most_common(top), {})
