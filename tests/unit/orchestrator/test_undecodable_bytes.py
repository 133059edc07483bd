"""Undecodable bytes reach the user: counts blob -> summary entry and totals -> one line of the table."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.console import render_table
from orchestrator.results import file_entry, undecodable_notice
from orchestrator.run.context import FileResult, RunLedger
from orchestrator.run.summary import run_summary
from tests.unit.orchestrator.test_run_stages import context


def succeeded(path: str, invalid_bytes: int) -> dict[str, Any]:
    return file_entry(path, task_id="t000000", succeeded=True, words=1, invalid_bytes=invalid_bytes)


def failed(path: str) -> dict[str, Any]:
    return file_entry(path, task_id="t000000", succeeded=False, error={"message": "boom"})


def test_a_failed_file_has_null_invalid_bytes_and_a_clean_one_zero() -> None:
    assert failed("x.txt")["invalid_bytes"] is None
    assert succeeded("y.txt", 0)["invalid_bytes"] == 0


def test_totals_add_the_invalid_bytes_of_succeeded_files_only() -> None:
    run = context([10, 20, 30])
    ledger = RunLedger()
    ledger.results[0] = FileResult.of(succeeded("f0.txt", 5))
    ledger.results[1] = FileResult.of(succeeded("f1.txt", 0))
    ledger.results[2] = FileResult.of(failed("f2.txt"))
    summary = run_summary(run, ledger, "FAILED")
    assert summary["totals"]["invalid_bytes"] == 5
    assert [entry["invalid_bytes"] for entry in summary["files"]] == [5, 0, None]


def test_clean_and_failed_files_give_no_notice() -> None:
    assert undecodable_notice([succeeded("a.txt", 0), failed("b.txt")]) is None


def test_the_notice_names_the_files_and_the_bytes_replaced() -> None:
    files = [succeeded("b.txt", 1234), succeeded("clean.txt", 0), succeeded("a.bin", 1), failed("x")]
    notice = undecodable_notice(files)
    assert notice == "2 files had undecodable bytes (1,235 bytes replaced by U+FFFD): a.bin, b.txt"


def test_one_file_and_one_byte_read_as_singular() -> None:
    notice = undecodable_notice([succeeded("a.bin", 1)])
    assert notice == "1 file had undecodable bytes (1 byte replaced by U+FFFD): a.bin"


def test_a_long_list_of_files_is_capped() -> None:
    files = [succeeded(f"f{number:02d}.bin", 2) for number in range(8)]
    notice = undecodable_notice(files, names_shown=3)
    assert (
        notice
        == "8 files had undecodable bytes (16 bytes replaced by U+FFFD): f00.bin, f01.bin, f02.bin and 5 more"
    )


@given(
    st.dictionaries(
        st.text(alphabet="abcxyz./", min_size=1, max_size=8),
        st.one_of(st.none(), st.integers(min_value=0, max_value=10**9)),
        max_size=20,
    ),
    st.integers(min_value=1, max_value=6),
)
def test_the_notice_agrees_with_the_entries(invalid: dict[str, int | None], names_shown: int) -> None:
    files = [failed(path) if count is None else succeeded(path, count) for path, count in invalid.items()]
    affected = sorted(path for path, count in invalid.items() if count)
    notice = undecodable_notice(files, names_shown=names_shown)
    if not affected:
        assert notice is None
        return
    assert notice is not None
    match = re.fullmatch(
        r"(\d+) files? had undecodable bytes \(([\d,]+) bytes? replaced by U\+FFFD\): (.*)", notice
    )
    assert match is not None, notice
    assert int(match[1]) == len(affected)
    assert int(match[2].replace(",", "")) == sum(count or 0 for count in invalid.values())
    more = len(affected) - names_shown
    expected_names = ", ".join(affected[:names_shown]) + (f" and {more} more" if more > 0 else "")
    assert match[3] == expected_names


def table_summary(files: list[dict[str, Any]]) -> dict[str, Any]:
    totals = {"files": len(files), "succeeded": len(files), "failed": 0, "words": 1, "duration_s": 1.0}
    return {"run_id": "r1", "state": "SUCCEEDED", "top": [["a", 1]], "files": files, "totals": totals}


def test_the_table_says_it_under_the_run_line() -> None:
    table = render_table(table_summary([succeeded("a.bin", 40), succeeded("b.txt", 0)]), Path("out"))
    lines = table.splitlines()
    assert lines[0].startswith("Run r1: SUCCEEDED")
    assert lines[1] == "1 file had undecodable bytes (40 bytes replaced by U+FFFD): a.bin"


def test_the_table_of_clean_files_does_not_mention_them() -> None:
    table = render_table(table_summary([succeeded("b.txt", 0)]), Path("out"))
    assert "undecodable" not in table
