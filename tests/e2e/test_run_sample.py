"""`topn run` on three small texts, for both tokenizers, against Azurite and the emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.run_cli import output_rows, reference_top, run_topn, topn_environment
from tests.secret_scan import find_secrets, texts_under

SAMPLE = {
    "harbour.txt": (
        "The harbour woke early. Gulls argued over the nets, and the nets, heavy with the night's catch,\n"
        'argued back. "Early," said the harbour master — early, EARLY — and the gulls agreed.\n'
    ),
    "orchard.txt": (
        "In the orchard the apples fell; the wasps found them first. Apples, apples: the word\n"
        "rolled around the kitchen all week, while the jam pans steamed and the wasps waited.\n"
    ),
    "notes/straße.txt": (
        "Die Straße war nass. STRASSE, straße, Straße! Café au lait — café — at the end of the street,\n"
        "the street where the café stood; naïve tourists asked for the street twice.\n"
    ),
}


def write_sample(folder: Path) -> None:
    for relpath, text in SAMPLE.items():
        path = folder / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize("tokenizer", ["words", "tutorial"])
def test_sample_results_match_an_independent_reference(
    tokenizer: str, batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    write_sample(tmp_path / "texts")
    env = topn_environment(
        batch_emulator, azurite, tmp_path / ".topn", TOPN_POOL_ID=f"e2e-sample-{tokenizer}"
    )
    result = run_topn(
        ["run", "texts", "--out", "results", "--top", "4", "--tokenizer", tokenizer, "--json"], tmp_path, env
    )
    assert result.exit_code == 0, result.stderr[-3000:]
    summary = result.summary()
    assert summary["state"] == "SUCCEEDED"
    in_input_order = [SAMPLE[relpath] for relpath in sorted(SAMPLE)]
    assert summary["top"] == reference_top(in_input_order, tokenizer, 4)
    files = {entry["path"]: entry for entry in summary["files"]}
    assert set(files) == set(SAMPLE)
    for relpath, text in SAMPLE.items():
        expected = reference_top([text], tokenizer, 4)
        assert files[relpath]["status"] == "succeeded"
        assert files[relpath]["top"] == expected
        output = tmp_path / "results" / (relpath.rsplit(".", 1)[0] + "_OUTPUT.txt")
        assert output_rows(output) == expected
    # The file a user opens later holds what --json printed (not merely some file of that name).
    on_disk = json.loads((tmp_path / "results" / "summary.json").read_text(encoding="utf-8"))
    assert on_disk == summary

    events = result.events()
    names = [event["event"] for event in events]
    for required in ("run.started", "run.state_changed", "pool.ready", "tasks.submitted", "run.completed"):
        assert required in names
    run_events = [event for event in events if event["event"].startswith(("run.", "task", "output."))]
    assert {event.get("run_id") for event in run_events} == {summary["run_id"]}
    assert all({"timestamp", "level", "event"} <= event.keys() for event in events)

    leaks = find_secrets(
        [("stdout", result.stdout), ("stderr", result.stderr), *texts_under(tmp_path)],
        [batch_emulator.account_key, azurite.account_key],
    )
    assert leaks == []
