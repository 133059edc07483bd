"""Small local inputs packed into one blob per unit (`[run] pack_max_bytes`): same results, fewer requests.

The same inputs are run twice on the same emulator and Azurite, with packing off and on. Every
`_OUTPUT` file and every summary entry must be the same; what may differ is only the identity the
node writes under the counts (its node and job ids). The packed run must send one input upload per
unit with a pack instead of one per packed input (the run's own request count, summary.json totals).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.run_cli import ONE_NODE_POOL, run_topn, topn_environment
from tests.e2e.test_rendered_outputs import INPUTS, binary_bytes

PACK_MAX_BYTES = 4096
IDENTITY_LINE = re.compile(rb"^(Node|Task|Job|Pool): .*$", re.MULTILINE)


def _write_inputs(folder: Path) -> dict[str, bytes]:
    texts: dict[str, bytes] = {**INPUTS, "binary-small.bin": binary_bytes(1500)}
    # A file over the pack limit keeps a blob of its own, in a unit whose other inputs are packed.
    texts["big.bin"] = binary_bytes(3 * PACK_MAX_BYTES)
    texts.update(
        {f"gen/{index:02d} é.txt": f"w{index % 5} x w{index % 3}\n".encode() * index for index in range(20)}
    )
    for relpath, data in texts.items():
        path = folder / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return texts


def _run(
    tmp_path: Path,
    name: str,
    tokenizer: str,
    pack_max_bytes: int,
    batch: BatchEndpoint,
    storage: StorageEndpoint,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    env = topn_environment(
        batch,
        storage,
        tmp_path / name / ".topn",
        TOPN_RUN_TOKENIZER=tokenizer,
        TOPN_RUN_MAX_FILES_PER_TASK="7",
        TOPN_RUN_PACK_MAX_BYTES=str(pack_max_bytes),
        **ONE_NODE_POOL,
    )
    result = run_topn(
        ["run", str(tmp_path / "in"), "--out", "out", "--top", "3", "--json"], tmp_path / name, env
    )
    assert result.exit_code == 0, result.stderr[-3000:]
    summary = result.summary()
    outputs = {
        entry["output"]: (tmp_path / name / "out" / entry["output"]).read_bytes()
        for entry in summary["files"]
    }
    return summary, outputs


@pytest.mark.parametrize("tokenizer", ["words", "tutorial"])
def test_a_packed_run_gives_the_unpacked_runs_results_with_one_upload_per_pack(
    tokenizer: str, batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    texts = _write_inputs(tmp_path / "in")
    (tmp_path / "off").mkdir()
    (tmp_path / "on").mkdir()
    unpacked, unpacked_outputs = _run(tmp_path, "off", tokenizer, 0, batch_emulator, azurite)
    packed, packed_outputs = _run(tmp_path, "on", tokenizer, PACK_MAX_BYTES, batch_emulator, azurite)

    assert packed["files"] == unpacked["files"]  # counts, top words, task ids, output names, statuses
    assert packed["top"] == unpacked["top"]
    assert sorted(packed_outputs) == sorted(unpacked_outputs)
    for name, data in unpacked_outputs.items():
        assert IDENTITY_LINE.sub(b"", packed_outputs[name]) == IDENTITY_LINE.sub(b"", data), name
    assert b"w1:\t" in packed_outputs["gen/06 é_OUTPUT.txt"]  # not vacuous: real counts

    # The units that have a pack: two or more inputs of at most PACK_MAX_BYTES.
    small: dict[str, int] = {}
    for entry in packed["files"]:
        if len(texts[entry["path"]]) <= PACK_MAX_BYTES:
            small[entry["task_id"]] = small.get(entry["task_id"], 0) + 1
    packs = sum(1 for count in small.values() if count >= 2)
    packed_inputs = sum(count for count in small.values() if count >= 2)
    assert packs >= 3 and packed_inputs >= 20
    uploads_off = unpacked["totals"]["requests"]["storage"]["upload_blob"]
    uploads_on = packed["totals"]["requests"]["storage"]["upload_blob"]
    # Each packed input's own upload is replaced by its unit's one pack upload.
    assert uploads_on == uploads_off - packed_inputs + packs, (uploads_off, uploads_on, packs, packed_inputs)
