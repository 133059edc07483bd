"""What a terminal shows: the result table, `topn status` views, and the event stream on stderr."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.events import TextSink
from orchestrator.inputs import InputFile, renamed_inputs
from orchestrator.results import summary_text, undecodable_notice
from orchestrator.secrets import redact_text

STDERR_TAIL_LINES = 5


class EventStream:
    """Event lines to stderr; once stderr cannot take them (EPIPE, ENOSPC, closed), they are dropped.

    `topn run DIR 2>&1 | head` closes the pipe after a few lines. Events are a view of the run, not
    its record (that is the journal, the results and summary.json), so losing the reader must not
    fail a run that is otherwise fine.
    """

    def __init__(self, target: TextSink) -> None:
        self._target = target
        self.reader_gone = False

    def write(self, text: str, /) -> int:
        if not self.reader_gone:
            try:
                return self._target.write(text)
            except (OSError, ValueError):  # EPIPE, a full disk (`2>/dev/full`), a closed file
                self._drop_stderr()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._target.flush()
            except (OSError, ValueError):
                self._drop_stderr()

    def isatty(self) -> bool:
        return not self.reader_gone and bool(getattr(self._target, "isatty", lambda: False)())

    def _drop_stderr(self) -> None:
        self.reader_gone = True
        # Later direct writes (an error line, the interpreter's flush at exit) would raise again.
        sys.stderr = Path(os.devnull).open("w", encoding="utf-8")  # noqa: SIM115 - kept open until exit


# A word is never cut shorter than this, however narrow the terminal.
MIN_WORD_COLUMNS = 12


def shorten_word(word: str, columns: int) -> str:
    """`word` cut to `columns` characters with `…` and its length, when longer (the table only)."""
    if len(word) <= columns:
        return word
    note = f"… ({len(word):,} chars)"
    return word[: max(1, columns - len(note))] + note


def render_table(
    summary: Mapping[str, Any],
    out_dir: Path,
    renamed: Sequence[tuple[str, Path | str]] = (),
    columns: int | None = None,
) -> str:
    """The readable result for stdout: run line, top words, failed files, inputs given another name.

    `renamed` pairs a run name with the file it stands for, so a user can tell which of two
    `notes.txt` became `notes~2.txt` (and which results are whose). A word longer than the terminal
    (`columns`, default its width) allows is shortened here; summary.json and the `_OUTPUT` files keep
    it whole.
    """
    if columns is None:
        columns = shutil.get_terminal_size((100, 24)).columns
    totals = summary.get("totals", {})
    lines = [
        f"Run {summary.get('run_id')}: {summary.get('state')} - {totals.get('files', 0)} files, "
        f"{totals.get('succeeded', 0)} succeeded, {totals.get('failed', 0)} failed, "
        f"{totals.get('words', 0)} words in {totals.get('duration_s', 0)} s",
    ]
    undecodable = undecodable_notice(summary.get("files", []))
    if undecodable is not None:
        lines.append(undecodable)
    lines.append("")
    top = summary.get("top", [])
    if top:
        count_width = max(len("count"), *(len(str(count)) for _, count in top))
        word_columns = max(MIN_WORD_COLUMNS, columns - 3 - 2 - 2 - count_width)
        top = [(shorten_word(str(word), word_columns), count) for word, count in top]
        width = max(len("word"), *(len(word) for word, _ in top))
        lines.append(f"{'#':>3}  {'word':<{width}}  {'count':>{count_width}}")
        for rank, (word, count) in enumerate(top, start=1):
            lines.append(f"{rank:>3}  {word:<{width}}  {count:>{count_width}}")
    else:
        lines.append("No words counted.")
    failed = [entry for entry in summary.get("files", []) if entry.get("status") != "succeeded"]
    if failed:
        lines += ["", f"Failed files ({len(failed)}):"]
        for entry in failed:
            error = entry.get("error") or {}
            lines.append(
                f"  {entry.get('path')}: exit code {error.get('exit_code')}, "
                f"failure {error.get('failure_code') or '-'}: {error.get('message') or ''}".rstrip()
            )
            tail = str(error.get("stderr_tail") or "").strip().splitlines()[-STDERR_TAIL_LINES:]
            lines += [f"    | {line}" for line in tail]
    if renamed:
        lines += ["", f"Inputs with the same name, renamed in the results ({len(renamed)}):"]
        lines += [f"  {relpath}  <-  {path}" for relpath, path in renamed]
    lines += ["", f"Results: {out_dir}"]
    return redact_text("\n".join(lines)) + "\n"


def render_runs(runs: Sequence[Mapping[str, Any]]) -> str:
    """`topn status`: one line per recent run, oldest first."""
    if not runs:
        return "No runs in the journal yet (start one with `topn run PATH`).\n"
    header = f"{'RUN':<34} {'STATE':<11} {'CREATED':<20} {'FILES':>6} {'OK':>6} {'FAILED':>6}  RESULTS"
    lines = [header]
    for run in runs:
        lines.append(
            f"{run['run_id']:<34} {run['state']:<11} {str(run['created_at'])[:19]:<20} {run['files']:>6} "
            f"{run['files_succeeded']:>6} {run['files_failed']:>6}  {run.get('out_dir') or '-'}"
        )
    unfinished = [run["run_id"] for run in runs if not run["finished"]]
    if unfinished:
        lines += ["", f"Unfinished: continue one with `topn resume {unfinished[-1]}`."]
    return "\n".join(lines) + "\n"


def render_run(run: Mapping[str, Any]) -> str:
    """`topn status RUN_ID`: the journal's view of one run, then the live job's."""
    lines = [
        f"Run {run['run_id']}: {run['state']}{'' if run['finished'] else ' (unfinished)'}",
        f"  created {run['created_at']}, updated {run['updated_at']}",
        f"  results {run.get('out_dir') or '-'}",
        f"  {run['files']} files ({run['bytes']} bytes) in {run['tasks']} tasks: "
        f"{run['files_succeeded']} files succeeded, {run['files_failed']} failed, "
        f"{run['tasks_in_flight']} tasks in flight",
    ]
    for stage, counts in run.get("stages", {}).items():
        lines.append(f"  {stage:<11} {counts['done']}/{counts['total']}")
    job = run.get("job") or {}
    if job.get("exists"):
        tasks = job.get("tasks", {})
        lines.append(
            f"  job {job['job_id']}: {job.get('state')} - {tasks.get('active', 0)} active, "
            f"{tasks.get('running', 0)} running, {tasks.get('completed', 0)} completed "
            f"({tasks.get('succeeded', 0)} succeeded, {tasks.get('failed', 0)} failed)"
        )
    elif job.get("reachable"):
        lines.append(f"  job {job.get('job_id')}: gone")
    else:
        lines.append(f"  job {job.get('job_id')}: not reachable ({job.get('note', '')})")
    failures = run.get("failures", [])
    if failures:
        lines += ["", f"Failed files ({len(failures)}):"]
        for failure in failures:
            lines.append(
                f"  {failure.get('file')}: exit code {failure.get('exit_code')}, "
                f"failure {failure.get('failure_code') or '-'}: {failure.get('message') or ''}".rstrip()
            )
    error = run.get("last_error")
    if error:
        lines += [
            "",
            f"Stopped in {error.get('state')} at {error.get('at')}: {error.get('error_type')}",
            f"  {error.get('message')}",
            f"Next: {error.get('next_step')}",
        ]
    elif not run["finished"]:
        lines += ["", f"Continue it with `topn resume {run['run_id']}`."]
    return "\n".join(lines) + "\n"


def print_summary(
    summary: Mapping[str, Any], out_dir: Path, *, as_json: bool, inputs: Sequence[InputFile] = ()
) -> None:
    if as_json:
        pieces: Iterable[str] = summary_text(summary)  # redacted, in pieces: never the whole text at once
    else:
        renamed = [(item.relpath, item.shown) for item in renamed_inputs(inputs)]
        shown = {relpath for relpath, _ in renamed}
        # Blob inputs listed while the run went on: their renamed entries name their source.
        renamed += [
            (entry["path"], entry["source"])
            for entry in summary.get("files", ())
            if "source" in entry and entry["path"] not in shown
        ]
        pieces = [redact_text(render_table(summary, out_dir, renamed))]
    try:
        sys.stdout.writelines(pieces)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (`topn run … | head`): the results and summary.json are on disk already.
        sys.stdout = Path(os.devnull).open("w", encoding="utf-8")  # noqa: SIM115 - kept open until exit


def ensure_standard_streams() -> None:
    """Give a closed stdin, stdout or stderr (`>&-`, `2>&-`) /dev/null before anything opens a file.

    Otherwise the next file or socket opened would take the free descriptor 1 or 2, and a printed
    table or an event line would land inside it (the journal, a child service's log), and Python's
    `sys.stdout` / `sys.stderr` would be None. Output to a closed stream is dropped; the run goes on.
    """
    for descriptor in (0, 1, 2):
        try:
            os.fstat(descriptor)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != descriptor:
                os.dup2(null, descriptor)
                os.close(null)
    if sys.stdout is None:
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115 - lives as long as the process
    if sys.stderr is None:
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115 - lives as long as the process
