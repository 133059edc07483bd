"""`topn run` given two folders holding the same relative names: every input keeps its own result."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.run_cli import output_rows, reference_top, run_topn, topn_environment

# Two roots, the same relative path in each; different words, so a swap or an overwrite shows.
FIRST_ROOT = {"notes/day.txt": "anchor anchor rope\n", "solo.txt": "kelp\n"}
SECOND_ROOT = {"notes/day.txt": "lantern lantern lantern wick\n"}


def write_tree(root: Path, texts: dict[str, str]) -> None:
    for relpath, text in texts.items():
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_text(text, encoding="utf-8")


def test_the_same_relative_name_under_two_roots_gets_two_results(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    write_tree(tmp_path / "monday", FIRST_ROOT)
    write_tree(tmp_path / "tuesday", SECOND_ROOT)
    env = topn_environment(batch_emulator, azurite, tmp_path / ".topn", TOPN_POOL_ID="e2e-same-names")
    result = run_topn(["run", "monday", "tuesday", "--out", "out"], tmp_path, env)  # the table
    assert result.exit_code == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    # docs: the first argument keeps the name; a later duplicate becomes `stem~2.ext`.
    expected = {
        "notes/day.txt": FIRST_ROOT["notes/day.txt"],
        "notes/day~2.txt": SECOND_ROOT["notes/day.txt"],
        "solo.txt": FIRST_ROOT["solo.txt"],
    }
    files = {entry["path"]: entry for entry in summary["files"]}
    assert sorted(files) == sorted(expected)
    for relpath, text in expected.items():
        assert files[relpath]["top"] == reference_top([text], "words", 10), relpath
        output = tmp_path / "out" / (relpath.removesuffix(".txt") + "_OUTPUT.txt")
        assert output_rows(output) == reference_top([text], "words", 10), relpath
    assert summary["top"] == reference_top([expected[relpath] for relpath in sorted(expected)], "words", 10)
    # The table says which file the renamed results stand for, and only for the renamed one.
    table = result.stdout.splitlines()
    assert "Inputs with the same name, renamed in the results (1):" in table
    assert [line for line in table if "<-" in line] == ["  notes/day~2.txt  <-  tuesday/notes/day.txt"]
    # Nothing of the user's was touched.
    for root, texts in (("monday", FIRST_ROOT), ("tuesday", SECOND_ROOT)):
        for relpath, text in texts.items():
            assert (tmp_path / root / relpath).read_text(encoding="utf-8") == text
