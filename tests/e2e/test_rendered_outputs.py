"""Each `_OUTPUT` file topn renders from a unit's result blob is byte for byte the node's (issue 13, point 3).

The real node uploads each input's `_OUTPUT` to the run's output container; topn downloads one result
blob per task and writes each `_OUTPUT` itself. Both are compared here, for both tokenizers and the
awkward inputs other tests use: empty, binary, a BOM, undecodable bytes, a 255-byte name, names an
option parser could misread, a path deeper than a blob name's 254 segments. The expected bytes are
the node's upload, not anything topn computed.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from orchestrator import naming
from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.run_cli import SHARED_POOL_ID, run_topn, topn_environment

DEEP = "/".join(["d"] * 300) + "/leaf.txt"
INPUTS: dict[str, bytes] = {
    "plain.txt": b"The cat and the hat. The end!\n",
    "empty.txt": b"",
    "bom.txt": b"\xef\xbb\xbfbom first word, Bom BOM bom\n",
    "undecodable.txt": b"caf\xe9 caf\xe9 \xff\xfe ok ok ok \xc3\n",
    "-a.txt": "dash dash line ünï\n".encode(),
    "--top=1": b"flag flag like\n",
    "--": b"double double dash\n",
    "a" * 251 + ".txt": b"long long name\n",
    "dir/日本 語.txt": "日本 語 日本 Œuvre œuvre\n".encode(),
    "ties.txt": b"b a c b a c d\n",
    # Deeper than a blob name's 254 path segments (Azurite would take it; Azure answers 400).
    DEEP: b"deep down below\n",
}


def binary_bytes(size: int) -> bytes:
    chooser = random.Random(20261206)
    data = bytearray(chooser.randbytes(size))
    data[0] = 0
    return bytes(data)


def node_outputs(storage: StorageEndpoint, run_id: str) -> dict[str, bytes]:
    """Every `_OUTPUT` blob the nodes uploaded to the run's output container, by blob name."""
    with BlobServiceClient.from_connection_string(storage.connection_string) as service:
        container = service.get_container_client(naming.output_container("topn", run_id))
        return {
            blob.name: container.download_blob(blob.name).readall()
            for blob in container.list_blobs()
            if not blob.name.startswith("results/")
        }


@pytest.mark.parametrize("tokenizer", ["words", "tutorial"])
def test_each_locally_rendered_output_equals_the_nodes_upload_byte_for_byte(
    tokenizer: str, batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    texts = {**INPUTS, "binary.bin": binary_bytes(16 * 1024)}
    for relpath, data in texts.items():
        path = tmp_path / "in" / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    # Several files per task: the identity of each unit's node goes into its files' `_OUTPUT`.
    env = topn_environment(
        batch_emulator,
        azurite,
        tmp_path / ".topn",
        TOPN_POOL_ID=SHARED_POOL_ID,
        TOPN_RUN_TOKENIZER=tokenizer,
        TOPN_RUN_MAX_FILES_PER_TASK="4",
    )
    result = run_topn(["run", "in", "--out", "out", "--top", "3", "--json"], tmp_path, env)
    assert result.exit_code == 0, result.stderr[-3000:]
    summary = result.summary()
    assert len({entry["task_id"] for entry in summary["files"]}) > 1  # several units, several nodes' ids
    uploaded = node_outputs(azurite, summary["run_id"])
    local = {entry["output"]: (tmp_path / "out" / entry["output"]).read_bytes() for entry in summary["files"]}
    assert sorted(local) == sorted(uploaded)
    for name, data in uploaded.items():
        assert local[name] == data, name
    # Not vacuous: real counts and the node's ids are in them.
    assert b"cat:\t1" in local["plain_OUTPUT.txt"] or b"the:\t3" in local["plain_OUTPUT.txt"]
    assert b"Task: t00000" in local["plain_OUTPUT.txt"]
    # The deep input's result has a shortened name (its first folders, a hash) both as a blob and here.
    (deep_output,) = [entry["output"] for entry in summary["files"] if entry["path"] == DEEP]
    assert len(deep_output.split("/")) == 254 and deep_output.endswith("_OUTPUT.txt"), deep_output
    assert max(len(name.split("/")) for name in uploaded) <= 254
