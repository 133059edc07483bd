"""A SAS URL and an account key fed through every path that prints or stores text come out redacted.

Paths: the console error line, the internal-error traceback, events (JSON and console), the printed
summary and summary.json, and the journal (a file's error and the error that ended a run). The
scanner is tests/secret_scan.py, independent of orchestrator/secrets.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

from orchestrator import cli, console
from orchestrator.errors import RunFailedError
from orchestrator.events import configure_events
from orchestrator.journal import Journal, JournalInput
from orchestrator.results import build_summary, file_entry, write_summary
from orchestrator.secrets import register_secrets
from tests.secret_scan import find_secrets

# A made-up account key (base64 of 64 bytes, like a real one) and a SAS URL signed with nothing real.
ACCOUNT_KEY = "UHJldGVuZC1rZXktZm9yLXJlZGFjdGlvbi10ZXN0cy1vbmx5LW5vdC1hLXJlYWwtb25lLTAxMjM0NTY3OA=="
SAS_URL = (
    "https://acct.blob.core.windows.net/topn-input/runs/a.txt"
    "?sv=2023-11-03&se=2099-01-01T00%3A00%3A00Z&sr=b&sp=r&sig=QmFkU2lnbmF0%3D%3D"
)
SECRET_TEXT = f"request to {SAS_URL} failed with key {ACCOUNT_KEY}"


@pytest.fixture(autouse=True)
def registered_key() -> None:
    register_secrets([ACCOUNT_KEY])  # as the CLI does with the configuration's keys


def leaks(*texts: tuple[str, str]) -> list[str]:
    return find_secrets(list(texts), [ACCOUNT_KEY])


def test_the_console_error_line_is_redacted() -> None:
    for log_format in ("console", "json"):
        stream = io.StringIO()
        configure_events(log_format, stream, "info")  # type: ignore[arg-type]
        cli._report(RunFailedError(SECRET_TEXT), log_format, stream)
        assert stream.getvalue().strip(), log_format
        assert leaks((log_format, stream.getvalue())) == []


def test_the_internal_error_traceback_is_redacted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def crash(*_: Any) -> int:
        raise RuntimeError(SECRET_TEXT)  # a bug whose message carries a SAS and a key

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOPN_LOCAL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(cli, "_status_command", crash)
    for log_format in ("console", "json"):
        assert cli.main(["status", "--log-format", log_format]) == 1
        captured = capsys.readouterr()
        assert "internal error" in captured.err and "RuntimeError" in captured.err
        assert leaks(("stderr", captured.err), ("stdout", captured.out)) == []


def test_events_are_redacted_in_both_formats() -> None:
    for log_format in ("json", "console"):
        stream = io.StringIO()
        configure_events(log_format, stream, "info")  # type: ignore[arg-type]
        structlog.get_logger().error("run.failed", error=SECRET_TEXT, url=SAS_URL)
        assert "run.failed" in stream.getvalue()
        assert leaks((log_format, stream.getvalue())) == []


def test_the_summary_printed_and_written_is_redacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = file_entry(
        "a.txt",
        task_id="t000000",
        succeeded=False,
        error={"exit_code": 1, "failure_code": None, "message": SECRET_TEXT, "stderr_tail": SAS_URL},
    )
    summary = build_summary("20261206t010203z-abcdef", "FAILED", [], [failed], {"files": 1, "failed": 1})
    for as_json in (True, False):
        console.print_summary(summary, tmp_path, as_json=as_json)
        assert leaks(("stdout", capsys.readouterr().out)) == []
    (tmp_path / "out").mkdir()
    written = write_summary(tmp_path / "out", summary)
    assert leaks(("summary.json", written.read_text(encoding="utf-8"))) == []


def test_the_journal_stores_errors_redacted(tmp_path: Path) -> None:
    run_id = "20261206t010203z-abcdef"
    item = JournalInput(0, "a.txt", str(tmp_path / "a.txt"), 1, 0, None, f"runs/{run_id}/a.txt", "t000000")

    async def record() -> None:
        async with await Journal.open(tmp_path / "journal.sqlite3") as journal:
            await journal.create_run(run_id, {"note": SECRET_TEXT}, [item], out_dir=tmp_path / "out")
            await journal.record_file_failed(run_id, "a.txt", {"message": SECRET_TEXT})
            await journal.record_run_error(
                run_id, error_type="RunFailedError", message=SECRET_TEXT, resumable=True, state="RUNNING"
            )

    anyio.run(record)
    stored = (tmp_path / "journal.sqlite3").read_bytes().decode("utf-8", errors="replace")
    for wal in tmp_path.glob("journal.sqlite3-*"):
        stored += wal.read_bytes().decode("utf-8", errors="replace")
    assert "a.txt" in stored
    assert leaks(("journal", stored)) == []
    assert json.dumps(SECRET_TEXT)  # the fixture text itself does carry both secrets:
    assert len(leaks(("fixture", SECRET_TEXT))) == 2
