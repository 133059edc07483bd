"""`topn run` on awkward input, as a user runs it: each case ends with a clear message or a correct
result, and nothing is lost or overwritten (issue 5, point 6).

Expected values come from the spec (DESIGN §4, docs/node.md), computed here, never from topn itself.
"""

from __future__ import annotations

import codecs
import gzip
import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient

from orchestrator import naming
from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.run_cli import (
    SHARED_POOL_ID,
    CliResult,
    output_rows,
    reference_top,
    run_topn,
    topn_environment,
    words_tokens,
)
from tests.secret_scan import find_secrets, texts_under

TOP = 5
# docs/node.md: a run of letters longer than 1 MiB is cut into pieces of at most 1 MiB.
RUN_LIMIT_BYTES = 1024 * 1024
# Past the size topn reads into memory for an upload (8 MiB: this one is streamed up), and three of the
# node's 4 MiB reads, the run going on across their ends: a bigger file only costs time.
NO_WHITESPACE_BYTES = 9 * RUN_LIMIT_BYTES

# Awkward but legal names: every character a URL, a shell or a SAS query could misread.
AWKWARD_TEXTS = {
    "with space.txt": "tide tide gull\n",
    "hash#tag.txt": "net net net rope\n",
    "question?mark.txt": "keel mast keel\n",
    "per%25cent%.txt": "fog fog bell\n",
    "single'quote.txt": "salt quay salt salt\n",
    'double"quote.txt': "sail storm sail\n",
    "ünïcødé/日本 語.txt": "Œuvre œuvre naïve\n",
    "a&b=c;d+e.txt": "mill wheel mill\n",
    # Names an option parser could take for options (issue 10, point 1).
    "-a.txt": "dash dash line\n",
    "--": "double double dash\n",
    "--top=1": "flag flag like\n",
    # 255-byte names, the most a file name may hold: their `_OUTPUT` names must be shortened (point 2).
    "a" * 251 + ".txt": "long long name\n",
    "é" * 125 + ".text": "lång lång namn\n",
    "語" * 83 + "a.docx": "長 長 名\n",
    # A path as long as a blob name allows (960 characters under the run's prefix).
    "/".join(["d" * 200] * 4) + "/" + "f" * 152 + ".txt": "deep deep path\n",
}


def count_replaced_bytes(data: bytes) -> tuple[str, int]:
    """UTF-8 text with each invalid byte replaced by U+FFFD, and how many bytes were replaced."""
    replaced = 0

    def handler(error: UnicodeError) -> tuple[str, int]:
        nonlocal replaced
        assert isinstance(error, UnicodeDecodeError)
        replaced += error.end - error.start
        return "\ufffd" * (error.end - error.start), error.end

    name = f"topn-test-count-{id(handler)}"
    codecs.register_error(name, handler)
    return data.decode("utf-8", errors=name), replaced


def binary_bytes(size: int) -> bytes:
    """Random bytes with plenty of NULs and invalid UTF-8, not starting with a BOM."""
    chooser = random.Random(20261122)
    data = bytearray(chooser.randbytes(size))
    for position in range(0, size, 7):
        data[position] = 0
    data[0] = 0
    return bytes(data)


def result_entry(storage: StorageEndpoint, run_id: str, relpath: str) -> dict[str, Any]:
    """The node's entry for one input in its unit's result blob, read back from the run's output container."""
    with BlobServiceClient.from_connection_string(storage.connection_string) as service:
        container = service.get_container_client(naming.output_container("topn", run_id))
        for blob in container.list_blobs(name_starts_with="results/"):
            document = json.loads(gzip.decompress(container.download_blob(blob.name).readall()))
            for entry in document["files"]:
                if entry["file"] == relpath:
                    found: dict[str, Any] = entry
                    return found
    raise AssertionError(f"no result blob of run {run_id} mentions {relpath!r}")


def all_files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def assert_refused(result: CliResult, *fragments: str) -> str:
    """Exit 2 with one `command.failed` event whose message names every fragment."""
    assert result.exit_code == 2, result.stderr[-3000:]
    failed = [event for event in result.events() if event["event"] == "command.failed"]
    assert len(failed) == 1, result.stderr[-3000:]
    message = str(failed[0]["error"])
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture
def env_for(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> Iterator[dict[str, str]]:
    yield topn_environment(batch_emulator, azurite, tmp_path / ".topn", TOPN_POOL_ID=SHARED_POOL_ID)


def test_awkward_files_and_names_give_correct_results_and_are_never_overwritten(
    env_for: dict[str, str], azurite: StorageEndpoint, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    texts: dict[str, bytes] = {relpath: text.encode("utf-8") for relpath, text in AWKWARD_TEXTS.items()}
    texts["empty.txt"] = b""
    texts["binary.bin"] = binary_bytes(64 * 1024)
    texts["no whitespace.txt"] = b"a" * NO_WHITESPACE_BYTES
    for relpath, data in texts.items():
        (inputs / relpath).parent.mkdir(parents=True, exist_ok=True)
        (inputs / relpath).write_bytes(data)

    result = run_topn(["run", "in", "--out", "out", "--top", str(TOP), "--json"], tmp_path, env_for)
    assert result.exit_code == 0, result.stderr[-3000:]
    summary = result.summary()
    assert summary["state"] == "SUCCEEDED"
    files = {entry["path"]: entry for entry in summary["files"]}
    assert sorted(files) == sorted(texts)
    assert all(entry["status"] == "succeeded" for entry in files.values()), files

    decoded = {relpath: count_replaced_bytes(data) for relpath, data in texts.items()}
    small = {relpath: text for relpath, (text, _) in decoded.items() if relpath != "no whitespace.txt"}
    for relpath, text in small.items():
        expected = reference_top([text], "words", TOP)
        assert files[relpath]["top"] == expected, relpath
        # The result file sits where summary.json says, in the input's folder, named after the input
        # (spelled exactly as the input's, no %-escapes) and within the filesystem's name limit.
        output = PurePosixPath(files[relpath]["output"])
        assert output.parent == PurePosixPath(relpath).parent, relpath
        assert output.name.startswith(PurePosixPath(relpath).stem[:40]), relpath
        assert "_OUTPUT" in output.name and len(output.name.encode()) <= 255, relpath
        assert output_rows(tmp_path / "out" / output) == expected, relpath

    # The empty file: listed, succeeded, zero words.
    assert files["empty.txt"]["words"] == 0 and files["empty.txt"]["top"] == []
    # The binary file: counted like text, its invalid bytes counted (read back from the node's blob).
    binary_text, binary_replaced = decoded["binary.bin"]
    binary_counts = result_entry(azurite, summary["run_id"], "binary.bin")
    assert binary_replaced > 0 and binary_counts["invalid_bytes"] == binary_replaced
    assert files["binary.bin"]["words"] == len(words_tokens(binary_text))
    # 9 MiB without whitespace: cut into 1 MiB pieces, so memory stays bounded on the node.
    piece = "a" * RUN_LIMIT_BYTES
    assert files["no whitespace.txt"]["words"] == NO_WHITESPACE_BYTES // RUN_LIMIT_BYTES
    assert files["no whitespace.txt"]["top"] == [[piece, NO_WHITESPACE_BYTES // RUN_LIMIT_BYTES]]

    # The run's top: a Counter over every file's tokens in sorted input order, with the long run as
    # the node documents it (1 MiB pieces), then most_common (ties by first occurrence).
    run_counts: Counter[str] = Counter()
    for relpath in sorted(texts):
        is_long_run = relpath == "no whitespace.txt"
        tokens = (
            [piece] * (NO_WHITESPACE_BYTES // RUN_LIMIT_BYTES)
            if is_long_run
            else words_tokens(decoded[relpath][0])
        )
        run_counts.update(tokens)
    assert summary["top"] == [[word, count] for word, count in run_counts.most_common(TOP)]
    keys = [env_for["TOPN_BATCH_ACCOUNT_KEY"], env_for["TOPN_STORAGE_ACCOUNT_KEY"]]
    printed = [("stdout", result.stdout), ("stderr", result.stderr)]
    assert find_secrets([*printed, *texts_under(tmp_path / "out")], keys) == []

    # The same results folder again: refused before anything is touched, the first run's files intact.
    before = all_files(tmp_path / "out")
    again = run_topn(["run", "in", "--out", "out", "--json"], tmp_path, env_for)
    assert_refused(again, str(summary["run_id"]), "--out")
    assert all_files(tmp_path / "out") == before


def test_a_symlink_loop_is_refused_with_its_path(env_for: dict[str, str], tmp_path: Path) -> None:
    inner = tmp_path / "in" / "inner"
    inner.mkdir(parents=True)
    (inner / "one.txt").write_text("red green red\n", encoding="utf-8")
    (inner / "back").symlink_to(tmp_path / "in", target_is_directory=True)
    result = run_topn(["run", "in", "--out", "out"], tmp_path, env_for)
    assert_refused(result, "symbolic link loop", "back")
    assert not (tmp_path / "out").exists()


def test_a_dangling_symlink_is_refused_with_its_path(env_for: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "one.txt").write_text("red green red\n", encoding="utf-8")
    (tmp_path / "in" / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    result = run_topn(["run", "in", "--out", "out"], tmp_path, env_for)
    assert_refused(result, "broken symbolic link", "gone.txt")
    assert not (tmp_path / "out").exists()
