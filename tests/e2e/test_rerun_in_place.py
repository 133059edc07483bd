"""`topn run .` twice in a folder of texts: the second run counts the texts, not the first's results."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.run_cli import reference_top, run_topn, topn_environment

TEXT = "reef reef shoal\n"


def test_a_second_run_in_the_same_folder_leaves_the_first_runs_results_out(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    env = topn_environment(batch_emulator, azurite, tmp_path / ".topn", TOPN_POOL_ID="e2e-rerun")
    first = run_topn(["run", ".", "--json"], tmp_path, env)  # results go to ./results/<run_id>/
    assert first.exit_code == 0, first.stderr[-3000:]
    assert (tmp_path / "results" / first.summary()["run_id"] / "summary.json").is_file()

    second = run_topn(["run", ".", "--json"], tmp_path, env)
    assert second.exit_code == 0, second.stderr[-3000:]
    summary = second.summary()
    assert [entry["path"] for entry in summary["files"]] == ["a.txt"]
    assert summary["top"] == reference_top([TEXT], "words", 10)
