"""summary.json written in pieces: the same JSON as one dump, secrets redacted, one line per file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.results import (
    SummaryEntries,
    build_summary,
    entry_line,
    file_entry,
    summary_text,
    write_summary,
)
from orchestrator.run.context import FileResult
from orchestrator.secrets import redact_value

# A made-up signature, assembled here so that no file holds anything shaped like a real one.
FAKE_SIGNATURE = "AbCdEfGh" + "x" * 32 + "%3D"
SIGNED = f"https://acct.blob.core.windows.net/c/b?sv=2024-01-01&sp=r&sig={FAKE_SIGNATURE}"
names = st.text(
    alphabet=st.sampled_from(["a", "Z", " ", "é", "語", '"', "\\", "\n", "/"]), min_size=1, max_size=20
)


@st.composite
def entries(draw: st.DrawFn) -> list[dict[str, Any]]:
    paths = draw(st.lists(names, min_size=0, max_size=8, unique=True))
    made: list[dict[str, Any]] = []
    for number, path in enumerate(paths):
        if draw(st.booleans()):
            top = draw(st.lists(st.tuples(names, st.integers(1, 10**9)), max_size=4))
            made.append(
                file_entry(
                    path, task_id=f"t{number}", succeeded=True, top=top, words=7, invalid_bytes=0, output=path
                )
            )
        else:
            error = {"message": draw(st.sampled_from(["boom", f"GET {SIGNED} failed"])), "exit_code": 3}
            made.append(file_entry(path, task_id=f"t{number}", succeeded=False, error=error))
    return made


@given(files=entries())
def test_the_pieces_are_the_redacted_summary_with_each_entry_on_its_own_line(
    files: list[dict[str, Any]],
) -> None:
    summary = build_summary(
        "r1", "FAILED", [("the", 3)], files, {"files": len(files), "stages_s": {"running": 1.5}}
    )
    text = "".join(summary_text(summary))
    # The reference: the standard library's one dump of the whole redacted summary.
    assert json.loads(text) == json.loads(json.dumps(redact_value(summary)))
    assert "AbCdEfGh" not in text
    lines = text.splitlines()
    for entry in sorted(files, key=lambda entry: entry["path"]):
        assert sum(1 for line in lines if line.strip().rstrip(",") == entry_line(entry)) == 1


@given(files=entries())
def test_entries_kept_as_lines_read_back_and_write_as_the_dicts_do(files: list[dict[str, Any]]) -> None:
    ordered = sorted(files, key=lambda entry: entry["path"])
    kept = SummaryEntries([FileResult.of(entry).line for entry in ordered])
    assert kept == json.loads(json.dumps(redact_value(ordered)))  # each item decodes to the entry
    assert len(kept) == len(files) and kept[1:] == [json.loads(entry_line(entry)) for entry in ordered[1:]]
    as_dicts = build_summary("r1", "SUCCEEDED", [], files, {})
    as_lines = build_summary("r1", "SUCCEEDED", [], kept, {})
    assert "".join(summary_text(as_lines)) == "".join(summary_text(as_dicts))


def test_a_failed_files_totals_come_from_the_entry_not_from_its_null_words() -> None:
    ok = FileResult.of(file_entry("a", task_id="t", succeeded=True, words=5, invalid_bytes=2))
    failed = FileResult.of(file_entry("b", task_id="t", succeeded=False, error={"message": "x"}))
    assert (ok.succeeded, ok.words, ok.invalid_bytes) == (True, 5, 2)
    assert (failed.succeeded, failed.words, failed.invalid_bytes) == (False, 0, 0)


def test_summary_json_on_disk_is_what_the_pieces_say(tmp_path: Path) -> None:
    files = [file_entry("b.txt", task_id="t1", succeeded=False, error={"message": SIGNED})]
    summary = build_summary("r1", "FAILED", [], files, {"files": 1})
    written = write_summary(tmp_path, summary)
    assert written.read_text(encoding="utf-8") == "".join(summary_text(summary))
    assert "sig=REDACTED" in written.read_text(encoding="utf-8")
