"""`topn run` on a clean text, a text with bad UTF-8 and a binary file: the replaced bytes are shown."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.run_cli import run_topn, topn_environment
from tests.e2e.test_crash_resume import crash_environment, load_record, run_id_in, run_until

CLEAN = "The river and the stone, the river again.\nnaïve über straße 42\n".encode()
# Hand-counted: \xe9 (1), \xff\xfe (2), \xc3 before "(" (1), an encoded surrogate \xed\xa0\x80 (3),
# a cut-off emoji \xf0\x9f\x98 (3), three lone continuation bytes (3) = 13; the last é is valid.
BROKEN = b"caf\xe9 au lait \xff\xfe word \xc3( end \xed\xa0\x80 \xf0\x9f\x98 ok \x80\x80\x80 caf\xc3\xa9\n"
BROKEN_BY_HAND = 13


def binary_bytes() -> bytes:
    return random.Random(20261122).randbytes(3000) + bytes(range(256))


def write_inputs(folder: Path) -> dict[str, bytes]:
    inputs = {"clean.txt": CLEAN, "broken.txt": BROKEN, "binary.bin": binary_bytes()}
    folder.mkdir(parents=True)
    for name, data in inputs.items():
        (folder / name).write_bytes(data)
    return inputs


def undecodable_bytes(data: bytes) -> int:
    """Reference count, from the spec (bytes that are not UTF-8), not node/: surrogateescape marks each."""
    return sum(1 for char in data.decode("utf-8", "surrogateescape") if "\udc80" <= char <= "\udcff")


def test_the_reference_count_agrees_with_a_hand_count() -> None:
    assert undecodable_bytes(BROKEN) == BROKEN_BY_HAND
    assert undecodable_bytes(CLEAN) == 0


def assert_invalid_bytes(summary: dict[str, Any], inputs: dict[str, bytes]) -> None:
    expected = {name: undecodable_bytes(data) for name, data in inputs.items()}
    assert expected["binary.bin"] > 0 and expected["broken.txt"] == BROKEN_BY_HAND
    assert {entry["path"]: entry["status"] for entry in summary["files"]} == dict.fromkeys(
        inputs, "succeeded"
    )
    assert {entry["path"]: entry["invalid_bytes"] for entry in summary["files"]} == expected
    assert summary["totals"]["invalid_bytes"] == sum(expected.values())


def test_a_run_shows_the_undecodable_bytes_of_each_file_and_in_total(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    inputs = write_inputs(tmp_path / "in")
    env = topn_environment(batch_emulator, azurite, tmp_path / ".topn", TOPN_POOL_ID="e2e-undecodable")
    result = run_topn(["run", "in", "--out", "out"], tmp_path, env)
    assert result.exit_code == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert summary["state"] == "SUCCEEDED"
    assert_invalid_bytes(summary, inputs)

    replaced = undecodable_bytes(inputs["binary.bin"]) + BROKEN_BY_HAND
    expected_line = (
        f"2 files had undecodable bytes ({replaced:,} bytes replaced by U+FFFD): binary.bin, broken.txt"
    )
    assert expected_line in result.stdout.splitlines(), result.stdout
    assert "clean.txt" not in result.stdout

    downloaded = {
        event["file"]: event["invalid_bytes"]
        for event in result.events()
        if event["event"] == "output.downloaded"
    }
    assert downloaded == {name: undecodable_bytes(data) for name, data in inputs.items()}


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.timeout(180)
async def test_a_resumed_run_keeps_the_undecodable_bytes_of_outputs_saved_before_the_crash(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    inputs = write_inputs(tmp_path / "in")
    env = crash_environment(batch_emulator, azurite, tmp_path, TOPN_POOL_ID="e2e-undecodable-resume")

    def binary_saved(event: dict[str, Any]) -> bool:
        return event["event"] == "output.downloaded" and event["file"] == "binary.bin"

    first, killed = await run_until(["run", "in", "--out", "out", "--json"], tmp_path, env, binary_saved)
    assert killed and first.exit_code == -9, first.stderr[-3000:]
    run_id = run_id_in(first)
    record = await load_record(tmp_path / ".topn", run_id)
    # The binary file's result was saved before the crash: the resumed run must take it from there.
    assert "binary.bin" in record.downloads and not record.is_finished

    second, _ = await run_until(["resume", run_id, "--json"], tmp_path, env, None)
    assert second.exit_code == 0, second.stderr[-3000:]
    resumed = second.summary()
    assert_invalid_bytes(resumed, inputs)
