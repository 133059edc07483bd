"""The packed node.pyz, run as a process, uploads its two blobs to Azurite with a real container SAS."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from azure.storage.blob.aio import BlobServiceClient

from node.pack import build_zipapp
from node.report import decode_counts_blob
from tests.conftest import StorageEndpoint
from tests.secret_scan import find_secrets


@pytest.fixture(scope="module")
def node_pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_zipapp(tmp_path_factory.mktemp("pyz") / "node.pyz")


async def _new_container(azurite: StorageEndpoint) -> str:
    name = f"node-{uuid.uuid4().hex[:12]}"
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        await service.create_container(name)
    return name


def _sas(azurite: StorageEndpoint, container: str, permission: ContainerSasPermissions) -> str:
    return generate_container_sas(
        azurite.account_name,
        container,
        account_key=azurite.account_key,
        permission=permission,
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),  # noqa: UP017 (node code targets 3.10)
    )


async def _download(azurite: StorageEndpoint, container: str, name: str) -> tuple[bytes, str | None]:
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        blob = service.get_blob_client(container, name)
        data = await (await blob.download_blob()).readall()
        properties = await blob.get_blob_properties()
        return data, properties.content_settings.content_type


async def _list(azurite: StorageEndpoint, container: str) -> list[str]:
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        return sorted([blob.name async for blob in service.get_container_client(container).list_blobs()])


async def _run(
    pyz: Path, args: Sequence[str], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(pyz), *args]
    return await asyncio.to_thread(
        subprocess.run,
        command,
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _no_secrets(completed: subprocess.CompletedProcess[str], azurite: StorageEndpoint) -> None:
    leaks = find_secrets([("stdout", completed.stdout), ("stderr", completed.stderr)], [azurite.account_key])
    assert not leaks, leaks


async def test_seed_flags_upload_both_blobs_per_input_without_collisions(
    azurite: StorageEndpoint, node_pyz: Path, tmp_path: Path
) -> None:
    container = await _new_container(azurite)
    sas = _sas(azurite, container, ContainerSasPermissions(create=True, write=True))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.txt").write_text('"Ship," said Ship. ship ship!\n', encoding="utf-8")
    (tmp_path / "b" / "x.txt").write_text("Kůň kůň, KŮŇ; pes. kůň\n", encoding="utf-8")
    completed = await _run(
        node_pyz,
        # The seed's task command line, unchanged, with two inputs and the tutorial's tokenizer.
        [
            *("--filepath", "a/x.txt", "--filepath", "b/x.txt", "--numwords", "2", "--tokenizer", "tutorial"),
            *("--storageaccount", azurite.account_name, "--storagecontainer", container, "--sastoken", sas),
        ],
        cwd=tmp_path,
        env={"TOPN_BLOB_ENDPOINT": azurite.endpoint, "AZ_BATCH_NODE_ID": "tvm-7", "AZ_BATCH_JOB_ID": "job-1"},
    )
    assert completed.returncode == 0, completed.stderr
    _no_secrets(completed, azurite)
    assert await _list(azurite, container) == [
        "a/x_OUTPUT.txt",
        "a/x_OUTPUT.txt.counts.json.gz",
        "b/x_OUTPUT.txt",
        "b/x_OUTPUT.txt.counts.json.gz",
    ]
    text, content_type = await _download(azurite, container, "a/x_OUTPUT.txt")
    # "Ship" and "ship" tie at 2: the one seen first comes first.
    assert text.decode("utf-8") == (
        "Word\tCount\n------------------------------\nShip:\t2\nship:\t2\n------------------------------\n"
        "Node: tvm-7\nTask: local\nJob:  job-1\nPool: local\n"
    )
    assert content_type is not None and content_type.startswith("text/plain")
    counts_blob, content_type = await _download(azurite, container, "b/x_OUTPUT.txt.counts.json.gz")
    assert content_type == "application/json"
    document = decode_counts_blob(counts_blob)
    assert document["counts"] == [["Kůň", 1], ["kůň", 2], ["KŮŇ", 1], ["pes", 1]]
    assert (document["file"], document["tokenizer"], document["words"], document["distinct"]) == (
        "b/x.txt",
        "tutorial",
        5,
        4,
    )


async def test_large_file_counted_by_worker_processes_from_the_zipapp(
    azurite: StorageEndpoint, node_pyz: Path, tmp_path: Path
) -> None:
    container = await _new_container(azurite)
    sas_url = f"{azurite.endpoint}/{container}?" + _sas(
        azurite, container, ContainerSasPermissions(create=True, write=True)
    )
    # 1,400,000 lines of 25 bytes: large enough that two processes share it (each gets 16 MiB or more).
    repeats = 1_400_000
    big = tmp_path / "big.txt"
    with big.open("w", encoding="utf-8") as stream:
        for index in range(repeats):
            stream.write("alpha Beta gamma, delta.\n")
            if index == repeats - 10:
                stream.write("Omega omega\n")
    completed = await _run(
        node_pyz,
        [
            *("--filepath", str(big), "--top", "3", "--workers", "2"),
            *("--output-name", "runs/big_OUTPUT.txt", "--counts-name", "counts/runs/big.txt.counts.json.gz"),
        ],
        cwd=tmp_path,
        # The orchestrator's way: the SAS URL in the task's environment, never on the command line.
        env={"TOPN_OUTPUT_SAS_URL": sas_url},
    )
    assert completed.returncode == 0, completed.stderr
    _no_secrets(completed, azurite)
    document = decode_counts_blob(
        (await _download(azurite, container, "counts/runs/big.txt.counts.json.gz"))[0]
    )
    assert document["counts"] == [
        ["alpha", repeats],
        ["beta", repeats],
        ["gamma", repeats],
        ["delta", repeats],
        ["omega", 2],
    ]
    assert document["words"] == 4 * repeats + 2
    text = (await _download(azurite, container, "runs/big_OUTPUT.txt"))[0].decode("utf-8")
    assert f"alpha:\t{repeats}\nbeta:\t{repeats}\ngamma:\t{repeats}\n" in text


async def test_read_only_sas_exits_3_naming_container_and_status_without_the_signature(
    azurite: StorageEndpoint, node_pyz: Path, tmp_path: Path
) -> None:
    container = await _new_container(azurite)
    read_only = f"{azurite.endpoint}/{container}?" + _sas(
        azurite, container, ContainerSasPermissions(read=True)
    )
    (tmp_path / "in.txt").write_text("one two two\n", encoding="utf-8")
    completed = await _run(
        node_pyz,
        ["--filepath", "in.txt", "--output-container-url", read_only, "--upload-retries", "1"],
        cwd=tmp_path,
        env={},
    )
    assert completed.returncode == 3, completed.stderr
    assert f"container '{container}'" in completed.stderr
    assert "HTTP 403" in completed.stderr
    assert "in_OUTPUT.txt" in completed.stderr
    _no_secrets(completed, azurite)
    assert await _list(azurite, container) == []
