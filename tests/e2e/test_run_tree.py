"""`topn run` on a 300-file tree: equal base names in different folders, awkward characters in names."""

from __future__ import annotations

import random
from pathlib import Path

from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.run_cli import ONE_NODE_POOL, output_rows, reference_top, run_topn, topn_environment

FOLDERS = ["a", "a/deeper", "b c", "d#1", "e%20f", "ünïcødé", "日本", "x y/z#%"]
NAMES = ["notes.txt", "same.txt", "with space.txt", "hash#tag.txt", "per%cent.txt", "çà.txt", "数据.txt"]
VOCABULARY = ["river", "stone", "Light", "light", "ŒUVRE", "œuvre", "naïve", "über", "42", "x_y", "don't"]


def make_tree(root: Path, count: int) -> dict[str, str]:
    """`count` tiny files whose relative paths repeat base names across folders."""
    chooser = random.Random(20261122)
    texts: dict[str, str] = {}
    number = 0
    while len(texts) < count:
        folder = FOLDERS[number % len(FOLDERS)]
        name = NAMES[(number // len(FOLDERS)) % len(NAMES)]
        relpath = f"{folder}/{name}" if number < len(FOLDERS) * len(NAMES) else f"{folder}/{number} {name}"
        number += 1
        words = chooser.choices(VOCABULARY, k=chooser.randint(0, 12))
        texts[relpath] = " ".join(words) + "\n"
    for relpath, text in texts.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return texts


def test_a_300_file_tree_keeps_every_file_apart(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    texts = make_tree(tmp_path / "tree", 300)
    assert len({relpath.rsplit("/", 1)[1] for relpath in texts}) < len(texts)  # base names repeat
    env = topn_environment(batch_emulator, azurite, tmp_path / ".topn", **ONE_NODE_POOL)
    result = run_topn(["run", "tree", "--out", "out", "--top", "5", "--json"], tmp_path, env)
    assert result.exit_code == 0, result.stderr[-3000:]
    summary = result.summary()
    assert summary["state"] == "SUCCEEDED"
    assert sorted(entry["path"] for entry in summary["files"]) == sorted(texts)
    assert summary["top"] == reference_top([texts[relpath] for relpath in sorted(texts)], "words", 5)
    outputs = sorted(
        str(path.relative_to(tmp_path / "out")) for path in (tmp_path / "out").rglob("*_OUTPUT.txt")
    )
    assert outputs == sorted(relpath[: -len(".txt")] + "_OUTPUT.txt" for relpath in texts)
    for relpath in ["b c/with space.txt", "d#1/hash#tag.txt", "e%20f/per%cent.txt", "日本/数据.txt"]:
        rows = output_rows(tmp_path / "out" / (relpath[: -len(".txt")] + "_OUTPUT.txt"))
        assert rows == reference_top([texts[relpath]], "words", 5)
