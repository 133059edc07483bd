"""`node.pyz unit`, run as a process against Azurite: inputs read with a read-only SAS, results written
with a write-only SAS, one result blob per unit whose entries render the node's `_OUTPUT` byte for byte,
and a file split into ranges over several units that merges to the one-process count."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.storage.blob import (
    BlobSasPermissions,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)
from azure.storage.blob.aio import BlobServiceClient

from node.counting import count_file
from node.manifest import UnitInput, UnitManifest, encode_manifest, split_ranges
from node.pack import build_zipapp
from node.report import default_output_name, output_text
from node.result import decode_result_blob, merge_ranges, render_output
from node.tokenizers import TOKENIZERS, Tokenizer
from tests.conftest import StorageEndpoint
from tests.secret_scan import find_secrets
from tests.unit.node.edge_files import EDGE_FILES
from tests.unit.node.test_ranges_and_merge import EDGE_TEXT

IDENTITY = {"AZ_BATCH_NODE_ID": "tvm-7", "AZ_BATCH_TASK_ID": "t000003", "AZ_BATCH_JOB_ID": "topn-job"}
READ_ONLY = ContainerSasPermissions(read=True)
WRITE_ONLY = ContainerSasPermissions(create=True, write=True)


@pytest.fixture(scope="module")
def node_pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_zipapp(tmp_path_factory.mktemp("pyz") / "node.pyz")


def _expiry() -> datetime:
    return datetime.now(timezone.utc) + timedelta(hours=1)  # noqa: UP017 (node code targets 3.10)


def _container_url(azurite: StorageEndpoint, container: str, permission: ContainerSasPermissions) -> str:
    sas = generate_container_sas(
        azurite.account_name,
        container,
        account_key=azurite.account_key,
        permission=permission,
        expiry=_expiry(),
    )
    return f"{azurite.endpoint}/{container}?{sas}"


async def _new_container(
    azurite: StorageEndpoint, blobs: Mapping[str, bytes] = {}
) -> tuple[str, dict[str, str]]:
    """A fresh container holding `blobs`; their ETags."""
    name = f"unit-{uuid.uuid4().hex[:12]}"
    etags: dict[str, str] = {}
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        container = await service.create_container(name)
        for blob_name, data in blobs.items():
            blob = await container.upload_blob(blob_name, data)
            etags[blob_name] = (await blob.get_blob_properties()).etag
    return name, etags


async def _download(azurite: StorageEndpoint, container: str, name: str) -> bytes:
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        data: bytes = await (await service.get_blob_client(container, name).download_blob()).readall()
        return data


async def _list(azurite: StorageEndpoint, container: str) -> list[str]:
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        return sorted([blob.name async for blob in service.get_container_client(container).list_blobs()])


async def _run_unit(
    pyz: Path, manifest: str, output_url: str, cwd: Path, extra: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **IDENTITY, "TOPN_OUTPUT_SAS_URL": output_url}
    environment.pop("AZ_BATCH_POOL_ID", None)  # an unset id reads `local`
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(pyz), "unit", "--manifest", manifest, *extra],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _no_secrets(completed: subprocess.CompletedProcess[str], azurite: StorageEndpoint) -> None:
    leaks = find_secrets([("stdout", completed.stdout), ("stderr", completed.stderr)], [azurite.account_key])
    assert not leaks, leaks


def _manifest(
    unit: str, tokenizer: Tokenizer, sources: Sequence[str], inputs: Sequence[UnitInput], top: int = 4
) -> UnitManifest:
    return UnitManifest(unit, tokenizer, top, f"results/{unit}.json.gz", tuple(sources), tuple(inputs))


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
async def test_a_unit_of_many_small_blobs_writes_outputs_and_one_result_blob_that_renders_them(
    azurite: StorageEndpoint, node_pyz: Path, tmp_path: Path, tokenizer: Tokenizer
) -> None:
    # The edge cases plus 150 small generated files, under a prefix as a run's staged inputs are.
    files = dict(EDGE_FILES)
    files.update(
        {f"gen/{index:04d}.txt": f"w{index % 7} x{index % 3} w{index % 5}\n".encode() for index in range(150)}
    )
    inputs_container, etags = await _new_container(
        azurite, {f"runs/r1/{name}": data for name, data in files.items()}
    )
    output_container, _ = await _new_container(azurite)
    names = sorted(files)
    unit_inputs = [
        UnitInput(name, 0, f"runs/r1/{name}", default_output_name(name), etag=etags[f"runs/r1/{name}"])
        for name in names
    ]
    manifest = _manifest(
        "t000003", tokenizer, [_container_url(azurite, inputs_container, READ_ONLY)], unit_inputs
    )
    manifest_path = tmp_path / "unit.json"
    manifest_path.write_bytes(encode_manifest(manifest))

    completed = await _run_unit(
        node_pyz,
        str(manifest_path),
        _container_url(azurite, output_container, WRITE_ONLY),
        tmp_path,
        ["--concurrency", "6"],
    )
    assert completed.returncode == 0, completed.stderr
    _no_secrets(completed, azurite)
    assert await _list(azurite, output_container) == sorted(
        [manifest.result_name, *(default_output_name(name) for name in names)]
    )
    result = decode_result_blob(await _download(azurite, output_container, manifest.result_name))
    assert (result.unit, result.tokenizer, result.top, result.identity) == ("t000003", tokenizer, 4, IDENTITY)
    assert [entry.relpath for entry in result.files] == names
    for name, entry in zip(names, result.files, strict=True):
        local = tmp_path / "local" / name
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(files[name])
        expected = count_file(local, tokenizer)  # the one-process count of the same bytes
        assert entry.status == "ok" and entry.output_uploaded, name
        assert entry.counts == list(expected.counts.items()), name
        assert (entry.words, entry.invalid_bytes) == (expected.words, expected.invalid_bytes), name
        assert (entry.size, entry.counted, entry.etag) == (
            len(files[name]),
            (0, len(files[name])),
            etags[f"runs/r1/{name}"],
        )
        uploaded = await _download(azurite, output_container, default_output_name(name))
        # What the orchestrator will do: render from the result blob alone; byte-identical.
        rendered = render_output(entry.counts, result.top, result.identity).encode("utf-8")
        assert rendered == uploaded, name
        assert uploaded.decode("utf-8").endswith("Node: tvm-7\nTask: t000003\nJob:  topn-job\nPool: local\n")


@pytest.mark.parametrize(
    ("repeats", "chunk_bytes"),
    [
        # Ranges over many GET requests of 512 bytes, each counted on the event loop.
        (41, 512),
        # Ranges of ~13 KB read in one GET of the rest of the blob (over 64 KiB), counted in a thread.
        (481, 4 << 20),
        # The same over 4 KiB GETs, downloaded ahead while counted, stopped once the range is done.
        (481, 4096),
    ],
)
async def test_a_file_split_into_8_ranges_over_three_units_merges_to_the_one_process_count(
    azurite: StorageEndpoint, node_pyz: Path, tmp_path: Path, repeats: int, chunk_bytes: int
) -> None:
    # EDGE_TEXT has a BOM and multi-byte characters; with these repeats the 8 nominal boundaries
    # fall inside multi-byte characters and inside words (checked below).
    data = EDGE_TEXT * repeats
    inputs_container, etags = await _new_container(azurite, {"logs/big.log": data})
    output_container, _ = await _new_container(azurite)
    source = _container_url(azurite, inputs_container, READ_ONLY)
    output_url = _container_url(azurite, output_container, WRITE_ONLY)
    local = tmp_path / "big.log"
    local.write_bytes(data)
    nominal = split_ranges(len(data), 8)
    # Boundaries inside a multi-byte character and inside an ASCII word.
    assert any(0x80 <= data[start] <= 0xBF for start, _ in nominal[1:])
    assert any(data[start - 1 : start + 1].isalnum() for start, _ in nominal[1:])
    for tokenizer in TOKENIZERS:
        groups = [nominal[0:3], nominal[3:5], nominal[5:8]]  # three tasks, as a scheduler might pack them
        results = []
        for number, group in enumerate(groups):
            unit_inputs = [
                UnitInput("logs/big.log", 0, "logs/big.log", None, span, etags["logs/big.log"], len(data))
                for span in group
            ]
            manifest = _manifest(f"{tokenizer}-{number}", tokenizer, [source], unit_inputs, top=6)
            path = tmp_path / f"{manifest.unit}.json"
            path.write_bytes(encode_manifest(manifest))
            completed = await _run_unit(
                node_pyz, str(path), output_url, tmp_path, ["--chunk-bytes", str(chunk_bytes)]
            )
            assert completed.returncode == 0, completed.stderr
            _no_secrets(completed, azurite)
            results.append(
                decode_result_blob(await _download(azurite, output_container, manifest.result_name))
            )
        parts = [entry for result in results for entry in result.files]
        assert len(parts) == 8 and all(part.output_uploaded is False for part in parts)
        merged = merge_ranges(parts)
        expected = count_file(local, tokenizer, workers=1)
        assert merged.counts == list(expected.counts.items())
        assert (merged.words, merged.invalid_bytes, merged.size) == (
            expected.words,
            expected.invalid_bytes,
            len(data),
        )
        # The merged _OUTPUT is the one the node writes for the whole file with that identity.
        assert render_output(merged.counts, 6, IDENTITY) == output_text(expected.top(6), IDENTITY)
    # A range never has an _OUTPUT of its own: only the result blobs were written.
    assert all(name.startswith("results/") for name in await _list(azurite, output_container))


async def test_unreadable_inputs_are_reported_per_input_and_the_rest_is_counted(
    azurite: StorageEndpoint, node_pyz: Path, tmp_path: Path
) -> None:
    inputs_container, _ = await _new_container(azurite, {"a.txt": b"one two two\n", "b.txt": b"b b b c\n"})
    output_container, _ = await _new_container(azurite)
    no_read = _container_url(azurite, inputs_container, ContainerSasPermissions(list=True))
    unit_inputs = [
        UnitInput("a.txt", 0, "a.txt", "a_OUTPUT.txt"),
        UnitInput("missing.txt", 0, "missing.txt", "missing_OUTPUT.txt"),
        UnitInput("b.txt", 1, "b.txt", "b_OUTPUT.txt"),
        # A range pinned to an ETag the blob no longer has.
        UnitInput("b.txt", 0, "b.txt", None, (0, 4), '"0x8DEADBEEF"', 8),
    ]
    sources = [_container_url(azurite, inputs_container, READ_ONLY), no_read]
    manifest = _manifest("t000009", "words", sources, unit_inputs)
    # The manifest itself comes from a blob URL with a read SAS for that one blob.
    manifest_container, _ = await _new_container(azurite, {"unit.json": encode_manifest(manifest)})
    blob_sas = generate_blob_sas(
        azurite.account_name,
        manifest_container,
        "unit.json",
        account_key=azurite.account_key,
        permission=BlobSasPermissions(read=True),
        expiry=_expiry(),
    )
    completed = await _run_unit(
        node_pyz,
        f"{azurite.endpoint}/{manifest_container}/unit.json?{blob_sas}",
        _container_url(azurite, output_container, WRITE_ONLY),
        tmp_path,
    )
    assert completed.returncode == 2, completed.stderr
    assert "3 of 4 inputs could not be read" in completed.stderr
    _no_secrets(completed, azurite)
    result = decode_result_blob(await _download(azurite, output_container, manifest.result_name))
    assert [(entry.relpath, entry.status, entry.error_kind) for entry in result.files] == [
        ("a.txt", "ok", None),
        ("missing.txt", "failed", "not_found"),
        ("b.txt", "failed", "forbidden"),
        ("b.txt", "failed", "changed"),
    ]
    assert result.files[0].counts == [("one", 1), ("two", 2)]
    assert all("sig=" not in (entry.error_message or "") for entry in result.files)
    assert await _list(azurite, output_container) == ["a_OUTPUT.txt", manifest.result_name]


async def test_a_read_only_output_sas_exits_3_and_a_bad_manifest_exits_2(
    azurite: StorageEndpoint, node_pyz: Path, tmp_path: Path
) -> None:
    inputs_container, _ = await _new_container(azurite, {"a.txt": b"one\n"})
    output_container, _ = await _new_container(azurite)
    source = _container_url(azurite, inputs_container, READ_ONLY)
    manifest = _manifest("t1", "words", [source], [UnitInput("a.txt", 0, "a.txt", "a_OUTPUT.txt")])
    path = tmp_path / "unit.json"
    path.write_bytes(encode_manifest(manifest))
    read_only_output = _container_url(azurite, output_container, READ_ONLY)
    completed = await _run_unit(node_pyz, str(path), read_only_output, tmp_path, ["--upload-retries", "0"])
    assert completed.returncode == 3, completed.stderr
    assert "HTTP 403" in completed.stderr and "a_OUTPUT.txt" in completed.stderr
    _no_secrets(completed, azurite)
    path.write_text('{"format": "topn.unit", "version": 3}', encoding="utf-8")
    completed = await _run_unit(node_pyz, str(path), read_only_output, tmp_path)
    assert completed.returncode == 2
    assert "unsupported topn.unit version 3" in completed.stderr


# Runs `node unit` from the zipapp and prints the process's own peak RSS (VmHWM, in KiB) last.
_PEAK_RSS_WRAPPER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv.pop(1))
from node.cli import main
code = main(sys.argv[1:])
status = Path("/proc/self/status").read_text().splitlines()
print(next(line for line in status if line.startswith("VmHWM:")).split()[1], file=sys.stderr)
sys.exit(code)
"""


async def _peak_rss_kib(pyz: Path, manifest: Path, output_url: str, cwd: Path) -> int:
    completed = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-c",
            _PEAK_RSS_WRAPPER,
            str(pyz),
            "unit",
            "--manifest",
            str(manifest),
            "--chunk-bytes",
            "1048576",
        ],
        cwd=cwd,
        env={**os.environ, "TOPN_OUTPUT_SAS_URL": output_url, "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    return int(completed.stderr.strip().splitlines()[-1])


async def test_a_blob_is_streamed_never_held_whole(
    azurite: StorageEndpoint, node_pyz: Path, tmp_path: Path
) -> None:
    # 48 MB of text: held whole (or even a quarter of it), it would show in the peak RSS.
    line = b" ".join(f"w{index}".encode() for index in range(1000)) + b"\n"
    big = line * (48_000_000 // len(line))
    inputs_container, _ = await _new_container(azurite, {"big.txt": big, "tiny.txt": b"tiny words\n"})
    output_container, _ = await _new_container(azurite)
    source = _container_url(azurite, inputs_container, READ_ONLY)
    output_url = _container_url(azurite, output_container, WRITE_ONLY)
    peaks = {}
    for name in ("tiny.txt", "big.txt"):
        manifest = _manifest(name[:-4], "words", [source], [UnitInput(name, 0, name, f"{name}_OUTPUT")])
        path = tmp_path / f"{name}.json"
        path.write_bytes(encode_manifest(manifest))
        peaks[name] = await _peak_rss_kib(node_pyz, path, output_url, tmp_path)
    result = decode_result_blob(await _download(azurite, output_container, "results/big.json.gz"))
    assert result.files[0].words == 1000 * (48_000_000 // len(line))
    # The same process reading a tiny blob is the baseline: the big one adds only chunks in flight
    # (1 MiB each here, two read ahead), the SDK's copies of them and the distinct words.
    assert peaks["big.txt"] - peaks["tiny.txt"] < 24_000, peaks
