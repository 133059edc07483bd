"""The CLI's pure parts: argument parsing, settings overrides, the result table, and the exit-2 paths."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator import cli, console
from orchestrator.local.processes import project_root
from orchestrator.service.status import finished_summary

SUMMARY: dict[str, Any] = {
    "run_id": "20261122t010203z-abcdef",
    "state": "FAILED",
    "top": [["the", 12], ["harbour", 3], ["é", 1]],
    "files": [
        {"path": "a.txt", "status": "succeeded", "top": [["the", 12]], "words": 20, "error": None},
        {
            "path": "dir/b c.txt",
            "status": "failed",
            "top": [],
            "words": None,
            "error": {
                "exit_code": 42,
                "failure_code": "FailureExitCode",
                "message": "the task failed",
                "stderr_tail": "line 1\nline 2\nemulator: injected task failure\n",
            },
        },
    ],
    "totals": {"files": 2, "succeeded": 1, "failed": 1, "words": 20, "duration_s": 1.5},
}


def test_the_table_shows_the_run_the_ranked_words_and_each_failure() -> None:
    text = console.render_table(SUMMARY, Path("results/r"))
    lines = text.splitlines()
    assert lines[0] == (
        "Run 20261122t010203z-abcdef: FAILED - 2 files, 1 succeeded, 1 failed, 20 words in 1.5 s"
    )
    # Words padded to the longest ("harbour", 7), counts right-aligned under "count" (5).
    assert lines[2:6] == [
        "  #  word     count",
        "  1  the         12",
        "  2  harbour      3",
        "  3  é            1",
    ]
    assert "  dir/b c.txt: exit code 42, failure FailureExitCode: the task failed" in lines
    assert "    | emulator: injected task failure" in lines
    assert lines[-1] == "Results: results/r"


def test_the_table_never_prints_a_sas_signature() -> None:
    leaky = json.loads(json.dumps(SUMMARY))
    leaky["files"][1]["error"]["stderr_tail"] = "GET https://x/c/b?sv=1&sig=AbCdEf0123456789%3D failed"
    text = console.render_table(leaky, Path("out"))
    assert "AbCdEf0123456789" not in text and "sig=REDACTED" in text


def test_the_table_maps_renamed_inputs_to_their_files() -> None:
    renamed = [("notes~2.txt", Path("/data/tuesday/notes.txt"))]
    lines = console.render_table(SUMMARY, Path("out"), renamed).splitlines()
    at = lines.index("Inputs with the same name, renamed in the results (1):")
    assert lines[at + 1] == "  notes~2.txt  <-  /data/tuesday/notes.txt"
    assert "renamed" not in console.render_table(SUMMARY, Path("out"))  # said only when it happened


def test_an_empty_run_says_so() -> None:
    summary = {**SUMMARY, "top": [], "files": [], "state": "SUCCEEDED"}
    assert "No words counted." in console.render_table(summary, Path("out"))


def test_top_and_tokenizer_flags_override_the_config(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(
        [
            "run",
            "x",
            "--top",
            "3",
            "--tokenizer",
            "tutorial",
            "--config",
            str(project_root() / "config/local.toml"),
        ]
    )
    settings = cli._load(args, {})
    assert settings.run.top == 3 and settings.run.tokenizer == "tutorial"
    assert settings.local.state_dir.is_absolute()


@pytest.mark.parametrize("bad", [["run", "x", "--top", "0"], ["run", "x", "--top", "many"], ["local"], []])
def test_bad_arguments_exit_2(bad: list[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.build_parser().parse_args(bad)
    assert raised.value.code == 2


def test_the_default_config_prefers_the_working_folder(tmp_path: Path) -> None:
    assert cli.default_config_path(tmp_path) == project_root() / "config" / "local.toml"
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "local.toml").write_text("", encoding="utf-8")
    assert cli.default_config_path(tmp_path) == tmp_path / "config" / "local.toml"


def test_a_missing_input_exits_2_with_the_path_in_the_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    status = cli.main(["run", "absent.txt", "--log-format", "console"])
    assert status == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("topn: error: ") and "absent.txt" in captured.err
    assert list(tmp_path.iterdir()) == []


def test_a_config_error_exits_2_in_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.toml"
    config.write_text("[nonsense]\n", encoding="utf-8")
    status = cli.main(["run", ".", "--config", str(config), "--log-format", "json"])
    assert status == 2
    (event,) = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert event["event"] == "command.failed" and event["level"] == "error"
    assert "[nonsense]" in event["error"] and str(config) in event["error"]


def test_a_failed_run_is_not_reported_twice(capsys: pytest.CaptureFixture[str]) -> None:
    import io

    import structlog

    from orchestrator.errors import InputError, RunFailedError
    from orchestrator.events import configure_events

    stream = io.StringIO()
    configure_events("json", stream)
    structlog.contextvars.bind_contextvars(run_id="20261122t010203z-abcdef")
    reported = RunFailedError("the pool broke")
    reported.reported_by_run = True  # as run_pipeline marks what its `run.failed` event said
    try:
        assert cli._report(reported, "json") == 1
        assert stream.getvalue() == ""  # the run's own run.failed event already said it
        assert cli._report(InputError("results folder is not empty"), "json") == 2
        (event,) = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert event["event"] == "command.failed" and event["run_id"] == "20261122t010203z-abcdef"
    finally:
        structlog.contextvars.clear_contextvars()
    assert cli._report(RunFailedError("the pool broke"), "console") == 1
    assert capsys.readouterr().err == "topn: error: the pool broke\n"


class PipeClosedAfter:
    """A stderr whose reader leaves after `lines` writes."""

    def __init__(self, lines: int) -> None:
        self.lines = lines
        self.written: list[str] = []

    def write(self, text: str, /) -> int:
        if len(self.written) >= self.lines:
            raise BrokenPipeError(32, "Broken pipe")
        self.written.append(text)
        return len(text)

    def flush(self) -> None:
        if len(self.written) >= self.lines:
            raise BrokenPipeError(32, "Broken pipe")


def test_events_stop_quietly_once_the_stderr_reader_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # restored after the test
    target = PipeClosedAfter(lines=1)
    stream = console.EventStream(target)
    assert stream.write("first\n") == len("first\n") and not stream.reader_gone
    assert stream.write("second\n") == len("second\n")  # dropped, not raised
    assert stream.reader_gone and target.written == ["first\n"]
    stream.flush()
    assert stream.write("third\n") == len("third\n") and target.written == ["first\n"]
    # A later direct write to stderr (the `topn: error:` line) no longer meets the broken pipe.
    assert sys.stderr.name == os.devnull
    print("topn: error: after the reader left", file=sys.stderr)
    sys.stderr.close()  # the process would keep it; the test closes it before stderr is restored


def test_a_finished_run_whose_summary_is_unreadable_is_not_said_to_be_moved(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(cli.UsageError) as raised:
        finished_summary(tmp_path / "out", "20261122t010203z-abcdef")
    assert str(tmp_path / "out" / "summary.json") in str(raised.value)
    assert "moved or deleted" not in str(raised.value)
    with pytest.raises(cli.UsageError, match="moved or deleted") as raised:
        finished_summary(tmp_path / "gone", "20261122t010203z-abcdef")
    assert str(tmp_path / "gone") in str(raised.value)


def test_a_word_longer_than_the_terminal_is_shortened_in_the_table_only() -> None:
    long_word = "a" * 3_000_000  # a 3 MB single-word file's only word
    summary = {**SUMMARY, "top": [[long_word, 1], ["short", 1]], "files": []}
    text = console.render_table(summary, Path("results/r"), columns=80)
    assert len(text) < 2_000
    assert all(len(line) <= 80 for line in text.splitlines()[2:5])  # header and the two rows
    assert "… (3,000,000 chars)" in text and " short " in text
    assert summary["top"][0][0] == long_word  # summary.json's content is untouched


def test_help_lists_every_exit_status() -> None:
    text = cli.build_parser().format_help()
    for status in ("0 all files succeeded", "1 some failed", "2 usage", "130", "143"):
        assert status in " ".join(text.split()), status


@pytest.mark.parametrize(
    ("command", "young_threshold"), [("run", cli.RUN_GC_YOUNG_THRESHOLD), ("status", 700)]
)
def test_the_commands_that_hold_a_run_collect_young_garbage_less_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, young_threshold: int
) -> None:
    saved = gc.get_threshold()
    monkeypatch.chdir(tmp_path)
    try:
        gc.set_threshold(700, *saved[1:])
        cli.main([command, "absent.txt", "--log-format", "json"])  # refused: the setting is made first
        assert gc.get_threshold() == (young_threshold, *saved[1:])
    finally:
        gc.set_threshold(*saved)
