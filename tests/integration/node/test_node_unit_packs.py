"""`node unit` over a pack blob against Azurite: inputs at exact extents of one blob, one streamed read."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.counting import count_file
from node.manifest import UnitInput, encode_manifest
from node.report import default_output_name
from node.result import decode_result_blob, render_output
from node.tokenizers import Tokenizer
from tests.conftest import StorageEndpoint
from tests.integration.node.test_node_unit_azurite import (
    READ_ONLY,
    WRITE_ONLY,
    _container_url,
    _download,
    _list,
    _manifest,
    _new_container,
    _no_secrets,
    _run_unit,
    node_pyz,
)
from tests.unit.node.edge_files import EDGE_FILES

__all__ = ["node_pyz"]  # the module fixture, shared


def _pack(files: dict[str, bytes]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    blob, extents = b"", {}
    for name, data in files.items():
        extents[name] = (len(blob), len(data))
        blob += data
    return blob, extents


@pytest.mark.parametrize(
    ("tokenizer", "chunk_bytes"),
    [("words", 4 << 20), ("tutorial", 4 << 20), ("words", 7), ("tutorial", 100_000)],
    ids=["words-one-get", "tutorial-one-get", "words-7-byte-chunks", "tutorial-100k-chunks"],
)
async def test_a_pack_of_edge_files_counts_each_file_exactly_as_alone(
    azurite: StorageEndpoint, node_pyz: Path, tmp_path: Path, tokenizer: Tokenizer, chunk_bytes: int
) -> None:
    files = dict(EDGE_FILES)
    # Each chunk is a GET of its own: with 7-byte chunks the long files are cut short, which still puts
    # hundreds of chunk ends inside words, characters and extents (the other cases read them whole).
    tiny_chunks = chunk_bytes < 1024
    if tiny_chunks:
        files["many-words.txt"] = files["many-words.txt"][:2000]
    files.update(
        {
            f"-gen/{index:03d}.txt": f"w{index % 7} x{index % 3}\n".encode()
            * (index % 4 if tiny_chunks else index)
            for index in range(60)
        }
    )
    pack, extents = _pack(files)
    # A whole blob beside the pack in the same unit: both paths in one run of the node.
    inputs_container, _ = await _new_container(
        azurite, {"packs/t000004": pack, "runs/r/alone.txt": b"a b b\n"}
    )
    output_container, _ = await _new_container(azurite)
    names = list(files)
    unit_inputs = [
        UnitInput(name, 0, "packs/t000004", default_output_name(name), extent=extents[name]) for name in names
    ]
    unit_inputs.insert(3, UnitInput("alone.txt", 0, "runs/r/alone.txt", default_output_name("alone.txt")))
    manifest = _manifest(
        "t000004", tokenizer, [_container_url(azurite, inputs_container, READ_ONLY)], unit_inputs
    )
    path = tmp_path / "unit.json"
    path.write_bytes(encode_manifest(manifest))
    completed = await _run_unit(
        node_pyz,
        str(path),
        _container_url(azurite, output_container, WRITE_ONLY),
        tmp_path,
        ["--concurrency", "3", "--chunk-bytes", str(chunk_bytes)],
    )
    assert completed.returncode == 0, completed.stderr
    _no_secrets(completed, azurite)
    assert await _list(azurite, output_container) == sorted(
        [
            manifest.result_name,
            default_output_name("alone.txt"),
            *(default_output_name(name) for name in names),
        ]
    )
    result = decode_result_blob(await _download(azurite, output_container, manifest.result_name))
    by_relpath = {entry.relpath: entry for entry in result.files}
    assert [entry.index for entry in sorted(result.files, key=lambda entry: entry.index)] == list(
        range(len(unit_inputs))
    )
    assert by_relpath["alone.txt"].counts == [("a", 1), ("b", 2)]
    for name in names:
        local = tmp_path / "local" / name.lstrip("-")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(files[name])
        expected = count_file(local, tokenizer)  # the one-process count of the same bytes, alone
        entry = by_relpath[name]
        assert entry.status == "ok" and entry.output_uploaded, name
        assert entry.counts == list(expected.counts.items()), name
        assert (entry.words, entry.invalid_bytes) == (expected.words, expected.invalid_bytes), name
        assert (entry.size, entry.counted) == (len(files[name]), (0, len(files[name]))), name
        uploaded = await _download(azurite, output_container, default_output_name(name))
        assert render_output(entry.counts, result.top, result.identity).encode("utf-8") == uploaded, name


async def test_a_missing_or_short_pack_fails_its_inputs_and_the_rest_is_counted(
    azurite: StorageEndpoint, node_pyz: Path, tmp_path: Path
) -> None:
    # The pack in Storage is shorter than its manifest says: the extents it holds are counted.
    inputs_container, _ = await _new_container(azurite, {"packs/t1": b"one two two\nthree"})
    output_container, _ = await _new_container(azurite)
    unit_inputs = [
        UnitInput("a.txt", 0, "packs/t1", "a_OUTPUT.txt", extent=(0, 12)),
        UnitInput("b.txt", 0, "packs/t1", "b_OUTPUT.txt", extent=(12, 9)),
        UnitInput("c.txt", 0, "packs/gone", "c_OUTPUT.txt", extent=(0, 3)),
    ]
    source = _container_url(azurite, inputs_container, READ_ONLY)
    path = tmp_path / "unit.json"
    manifest = _manifest("t000001", "words", [source], unit_inputs)
    path.write_bytes(encode_manifest(manifest))
    completed = await _run_unit(
        node_pyz, str(path), _container_url(azurite, output_container, WRITE_ONLY), tmp_path
    )
    assert completed.returncode == 2, completed.stderr
    assert "2 of 3 inputs could not be read" in completed.stderr
    _no_secrets(completed, azurite)
    result = decode_result_blob(await _download(azurite, output_container, manifest.result_name))
    assert sorted((entry.relpath, entry.status, entry.error_kind) for entry in result.files) == [
        ("a.txt", "ok", None),
        ("b.txt", "failed", "read_failed"),
        ("c.txt", "failed", "not_found"),
    ]
    assert next(entry for entry in result.files if entry.relpath == "a.txt").counts == [
        ("one", 1),
        ("two", 2),
    ]
    assert await _list(azurite, output_container) == ["a_OUTPUT.txt", manifest.result_name]
