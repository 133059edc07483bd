"""`topn`: parse the command line, load settings, start local services if needed, run, report.

stdout carries only results (a table, or the summary JSON with --json); events go to stderr.
Exit status: 0 every file succeeded, 1 some failed (or the run failed), 2 usage or configuration
error (nothing created), 128+N when stopped by signal N (Ctrl-C: 130).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, TextIO

import anyio
import structlog

from orchestrator.errors import ConfigError, TopnError, UsageError
from orchestrator.events import (
    LEVELS,
    TextSink,
    bound_context,
    configure_events,
    default_log_format,
)
from orchestrator.inputs import InputFile, renamed_inputs
from orchestrator.local import services as localmode
from orchestrator.local.processes import project_root
from orchestrator.progress import CurrentStderr, NullProgress, RichProgress
from orchestrator.results import read_summary, summary_path, undecodable_notice
from orchestrator.secrets import redact_text, register_secrets
from orchestrator.settings import Settings, load_settings, secret_values

log = structlog.get_logger()

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CLEANUP_TIMEOUT_S = 60.0
STDERR_TAIL_LINES = 5
STATUS_RECENT_RUNS = 20
STATUS_LIVE_TIMEOUT_S = 5.0


def default_config_path(cwd: Path) -> Path:
    """`config/local.toml` of the working directory if there is one, else the one shipped with topn."""
    here = cwd / "config" / "local.toml"
    return here if here.is_file() else project_root() / "config" / "local.toml"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="topn",
        description="Count the top N words of text files on Azure Batch (or its local emulator).",
        epilog="Exit status: 0 all files succeeded, 1 some failed, 2 usage or configuration error.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=None,
        help="settings file (default: config/local.toml, local mode); TOPN_<SECTION>_<KEY> overrides it",
    )
    common.add_argument(
        "--log-format",
        choices=("json", "console"),
        default=None,
        help="events on stderr: JSON lines (default off a terminal) or readable lines (default on one)",
    )
    common.add_argument("--log-level", choices=LEVELS, default="info", help="lowest event level shown")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", parents=[common], help="process files and folders (recursively)")
    run.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="text files or folders")
    run.add_argument("--top", type=_positive_int, default=None, help="how many words to report (default 10)")
    run.add_argument("--tokenizer", choices=("words", "tutorial"), default=None, help="how words are split")
    run.add_argument("--out", type=Path, default=None, help="results folder (default results/<run_id>/)")
    run.add_argument("--json", action="store_true", help="print summary.json to stdout instead of a table")

    resume = commands.add_parser(
        "resume", parents=[common], help="continue an unfinished run from its journal (see `topn status`)"
    )
    resume.add_argument("run_id", metavar="RUN_ID", help="the run to continue")
    resume.add_argument("--json", action="store_true", help="print summary.json to stdout instead of a table")

    status = commands.add_parser("status", parents=[common], help="recent runs, or one run in detail")
    status.add_argument("run_id", nargs="?", default=None, metavar="RUN_ID", help="the run to describe")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")

    local_parser = commands.add_parser("local", help="the local emulators (Azurite and the Batch emulator)")
    local_commands = local_parser.add_subparsers(dest="local_command", metavar="ACTION", required=True)
    local_commands.add_parser("up", parents=[common], help="start them and keep them running across runs")
    local_commands.add_parser("down", parents=[common], help="stop what `topn local up` started")
    local_commands.add_parser("status", parents=[common], help="show what `topn local up` started")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    log_format: Literal["json", "console"] = args.log_format or default_log_format(sys.stderr)
    # Events follow sys.stderr at write time, so a live progress bar can route them above itself.
    configure_events(log_format, EventStream(CurrentStderr()), args.log_level)
    try:
        settings = _load(args, os.environ)
        if args.command == "run":
            return _run_command(args, settings, log_format)
        if args.command == "resume":
            return _resume_command(args, settings, log_format)
        if args.command == "status":
            return _status_command(args, settings)
        return _local_command(args, settings)
    except TopnError as error:
        return _report(error, log_format)
    except KeyboardInterrupt:  # Ctrl-C before the run's own signal handling was installed
        return 128 + int(signal.SIGINT)
    except Exception as error:  # a bug: show where, but never a secret that was in a message
        log.error(
            "command.failed", error_type=type(error).__name__, error=str(error)[:500], exit_code=EXIT_FAILED
        )
        trace = "".join(traceback.format_exception(error))
        print(redact_text(f"topn: internal error (please report it):\n{trace}"), file=sys.stderr)
        return EXIT_FAILED


class EventStream:
    """Event lines to stderr; once nobody reads stderr any more (EPIPE), they are dropped.

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
            except BrokenPipeError:
                self._drop_stderr()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._target.flush()
            except BrokenPipeError:
                self._drop_stderr()

    def isatty(self) -> bool:
        return not self.reader_gone and bool(getattr(self._target, "isatty", lambda: False)())

    def _drop_stderr(self) -> None:
        self.reader_gone = True
        # Later direct writes (an error line, the interpreter's flush at exit) would raise again.
        sys.stderr = Path(os.devnull).open("w", encoding="utf-8")  # noqa: SIM115 - kept open until exit


def _load(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    path = args.config if args.config is not None else default_config_path(Path.cwd())
    settings = load_settings(path, environ)
    register_secrets(secret_values(settings))
    overrides: dict[str, Any] = {}
    if getattr(args, "top", None) is not None:
        overrides["top"] = args.top
    if getattr(args, "tokenizer", None) is not None:
        overrides["tokenizer"] = args.tokenizer
    if overrides:
        settings = replace(settings, run=replace(settings.run, **overrides))
    # Relative state folders are relative to where topn was started, resolved once here.
    return replace(settings, local=replace(settings.local, state_dir=settings.local.state_dir.resolve()))


def _report(error: TopnError, log_format: str, stream: TextIO | None = None) -> int:
    """Say what went wrong on stderr, in the event format; secrets are redacted on the way out."""
    message = redact_text(str(error))
    # A run that stopped has already said so in its own `run.failed` event; usage errors never start one.
    reported_by_run = "run_id" in bound_context() and not isinstance(error, UsageError)
    if log_format == "json":
        if not reported_by_run:
            log.error(
                "command.failed", error_type=type(error).__name__, error=message, exit_code=error.exit_code
            )
    else:
        print(f"topn: error: {message}", file=stream or sys.stderr)
    return error.exit_code


def _run_command(args: argparse.Namespace, settings: Settings, log_format: str) -> int:
    # Imported here so `topn local` and `--help` stay quick and independent of the run machinery.
    from orchestrator import naming
    from orchestrator.inputs import discover_inputs
    from orchestrator.results import check_results_folder_creatable, claim_results_folder

    if not args.paths:
        raise UsageError("give at least one file or folder to process, e.g. `topn run examples/texts`")
    inputs = discover_inputs(args.paths)  # InputError (exit 2) before anything is started
    run_id = naming.new_run_id()
    out_dir = args.out if args.out is not None else Path("results") / run_id
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        # Refuse an occupied results folder now, before services start; for such a folder the
        # pipeline's own check only raises (it writes nothing), so its message is reused here.
        claim_results_folder(out_dir, run_id)
    check_results_folder_creatable(out_dir)  # e.g. --out under a file: refused before services start
    show_progress = log_format == "console" and sys.stderr.isatty()
    progress: RichProgress | NullProgress = RichProgress() if show_progress else NullProgress()

    async def body() -> int:
        from orchestrator.run.pipeline import run_pipeline, summary_exit_status

        summary = await _with_services(
            settings,
            lambda resolved, clients, journal: run_pipeline(
                resolved,
                inputs,
                clients,
                out_dir,
                run_id=run_id,
                journal=journal,
                progress=progress,
            ),
        )
        progress.close()
        _print_summary(summary, out_dir, as_json=args.json, inputs=inputs)
        return summary_exit_status(summary)

    with progress:
        return run_until_signalled(body, log_format)


def _resume_command(args: argparse.Namespace, settings: Settings, log_format: str) -> int:
    from orchestrator.journal import journal_path
    from orchestrator.run.pipeline import summary_exit_status
    from orchestrator.run.resume import resumed_inputs, resumed_out_dir, resumed_settings, unknown_run

    journal_file = journal_path(settings.local.state_dir)
    record = anyio.run(_load_record, journal_file, args.run_id)
    if record is None:
        raise unknown_run(args.run_id, journal_file)
    out_dir = resumed_out_dir(record)
    if record.is_finished:  # nothing to do: show what it ended with
        summary = _read_summary(out_dir, record.run_id)
        _print_summary(summary, out_dir, as_json=args.json, inputs=resumed_inputs(record))
        return summary_exit_status(summary)
    run_settings = resumed_settings(settings, record.settings_snapshot)
    inputs = resumed_inputs(record)
    show_progress = log_format == "console" and sys.stderr.isatty()
    progress: RichProgress | NullProgress = RichProgress() if show_progress else NullProgress()

    async def body() -> int:
        from orchestrator.run.pipeline import run_pipeline

        async def work(resolved: Settings, clients: Any, journal: Any) -> dict[str, Any]:
            latest = await journal.load_run(record.run_id)  # what the journal holds now
            return await run_pipeline(
                resolved, inputs, clients, out_dir, journal=journal, progress=progress, resume=latest
            )

        summary = await _with_services(run_settings, work)
        progress.close()
        _print_summary(summary, out_dir, as_json=args.json, inputs=inputs)
        return summary_exit_status(summary)

    with progress:
        return run_until_signalled(body, log_format)


async def _load_record(journal_file: Path, run_id: str) -> Any:
    """The run's RunRecord, or None (also when there is no journal yet: nothing is created)."""
    from orchestrator.journal import Journal

    if not await anyio.Path(journal_file).is_file():
        return None
    async with await Journal.open(journal_file) as journal:
        return await journal.load_run(run_id)


def _read_summary(out_dir: Path, run_id: str) -> dict[str, Any]:
    try:
        return read_summary(out_dir)
    except (OSError, ValueError) as error:
        raise UsageError(
            f"run {run_id} has finished but its summary {summary_path(out_dir)} cannot be read ({error}); "
            "its results folder was moved or deleted"
        ) from None


def _status_command(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.journal import journal_path
    from orchestrator.run.resume import unknown_run
    from orchestrator.service.status import describe_run, recent_runs_in

    journal_file = journal_path(settings.local.state_dir)
    if args.run_id is None:
        runs = anyio.run(recent_runs_in, journal_file, STATUS_RECENT_RUNS, args.json)
        text = json.dumps(runs, ensure_ascii=False, indent=2) + "\n" if args.json else render_runs(runs)
    else:
        record = anyio.run(_load_record, journal_file, args.run_id)
        if record is None:
            raise unknown_run(args.run_id, journal_file)
        described = describe_run(record)
        described["job"] = anyio.run(_live_job, settings, record.run_id)
        text = (
            json.dumps(described, ensure_ascii=False, indent=2) + "\n" if args.json else render_run(described)
        )
    sys.stdout.write(redact_text(text))
    sys.stdout.flush()
    return EXIT_OK


async def _live_job(settings: Settings, run_id: str) -> dict[str, Any]:
    """The live job's state and task counts, or why they could not be read (never starts a service)."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    from orchestrator import naming
    from orchestrator.azure.clients import open_clients

    job_id = naming.job_id(run_id)
    if settings.local.enabled and localmode.endpoint_port(settings.batch.endpoint) == 0:
        recorded = localmode.read_recorded(settings).get(localmode.EMULATOR)
        if recorded is None:
            return {"job_id": job_id, "reachable": False, "note": "no local services (run `topn local up`)"}
        endpoint = localmode.with_port(settings.batch.endpoint, recorded.endpoint)
        settings = replace(settings, batch=replace(settings.batch, endpoint=endpoint))
    try:
        with anyio.fail_after(STATUS_LIVE_TIMEOUT_S):
            async with AsyncExitStack() as stack:
                clients = await open_clients(settings, stack)
                job = await clients.batch.get_job(job_id)
                counts = (await clients.batch.get_job_task_counts(job_id)).task_counts
    except ResourceNotFoundError:
        return {"job_id": job_id, "reachable": True, "exists": False}
    except (HttpResponseError, TimeoutError, OSError, TopnError) as error:
        return {"job_id": job_id, "reachable": False, "note": redact_text(str(error).splitlines()[0][:200])}
    return {
        "job_id": job_id,
        "reachable": True,
        "exists": True,
        "state": str(getattr(job.state, "value", job.state)),
        "tasks": {
            "active": counts.active,
            "running": counts.running,
            "completed": counts.completed,
            "succeeded": counts.succeeded,
            "failed": counts.failed,
        },
    }


async def _with_services(
    settings: Settings, work: Callable[[Settings, Any, Any], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Local services, clients, credential check and journal around `work`; all closed, shielded, after."""
    from orchestrator.azure.clients import check_credentials, open_clients
    from orchestrator.journal import Journal, journal_path

    stack = AsyncExitStack()
    try:
        resolved = await localmode.ensure_services(settings, stack)
        clients = await open_clients(resolved, stack)
        await check_credentials(clients, resolved)
        resolved.local.state_dir.mkdir(parents=True, exist_ok=True)
        journal = await Journal.open(journal_path(resolved.local.state_dir))
        stack.push_async_callback(journal.close)
        return await work(resolved, clients, journal)
    finally:
        # Clean-up runs even when the run is being cancelled (Ctrl-C), but never hangs forever.
        with anyio.move_on_after(CLEANUP_TIMEOUT_S, shield=True):
            await stack.aclose()


def run_until_signalled(body: Callable[[], Awaitable[int]], log_format: str) -> int:
    """Run `body` on an event loop; SIGINT/SIGTERM cancel it (shielded clean-up runs) and give 128+N.

    A second signal ends the process at once: the journal (WAL, one transaction per record) keeps
    everything committed before it, and `topn resume` continues from there.
    """
    signalled: list[int] = []
    outcome: list[int] = []

    async def supervise() -> None:
        work_scope = anyio.CancelScope()
        async with anyio.create_task_group() as group:

            async def watch_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for received in signals:
                        signalled.append(int(received))
                        if len(signalled) > 1:
                            name = signal.Signals(received).name
                            if log_format == "json":
                                log.warning("signal.repeated", signal=name, exit_code=128 + int(received))
                            else:
                                print(f"topn: {name} again: stopping now", file=sys.stderr)
                            sys.stderr.flush()
                            os._exit(128 + int(received))
                        work_scope.cancel()

            async def work() -> None:
                try:
                    with work_scope:
                        outcome.append(await body())
                except TopnError as error:
                    outcome.append(_report(error, log_format))
                finally:
                    group.cancel_scope.cancel()

            group.start_soon(watch_signals)
            group.start_soon(work)

    try:
        anyio.run(supervise)
    except BaseExceptionGroup as group_error:
        # One task failed with something that is not a TopnError: show the innermost cause.
        raise _first_leaf(group_error) from None
    if signalled:
        if log_format != "json":
            print(f"topn: stopped by {signal.Signals(signalled[0]).name}", file=sys.stderr)
        return 128 + signalled[0]
    return outcome[0] if outcome else EXIT_FAILED


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


# --------------------------------------------------------------------------- rendering


def render_table(summary: Mapping[str, Any], out_dir: Path, renamed: Sequence[tuple[str, Path]] = ()) -> str:
    """The readable result for stdout: run line, top words, failed files, inputs given another name.

    `renamed` pairs a run name with the file it stands for, so a user can tell which of two
    `notes.txt` became `notes~2.txt` (and which results are whose).
    """
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
        width = max(len("word"), *(len(str(word)) for word, _ in top))
        count_width = max(len("count"), *(len(str(count)) for _, count in top))
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
    if not run["finished"]:
        lines += ["", f"Continue it with `topn resume {run['run_id']}`."]
    return "\n".join(lines) + "\n"


def _print_summary(
    summary: Mapping[str, Any], out_dir: Path, *, as_json: bool, inputs: Sequence[InputFile] = ()
) -> None:
    if as_json:
        text = json.dumps(summary, ensure_ascii=False, indent=2) + "\n"
    else:
        renamed = [(item.relpath, item.path) for item in renamed_inputs(inputs)]
        text = render_table(summary, out_dir, renamed)
    sys.stdout.write(redact_text(text))
    sys.stdout.flush()


# --------------------------------------------------------------------------- local up / down


def _local_command(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.local.enabled:
        raise ConfigError(
            f"[local] enabled is false in {settings.source}: `topn local` manages the local emulators only. "
            "Use config/local.toml (the default)."
        )
    action = args.local_command
    if action == "up":
        services = anyio.run(localmode.local_up, settings)
        for service in services.values():
            print(f"{service.name:<9} {service.endpoint}  (pid {service.pid})")
        print(f"State: {localmode.services_file(settings)}  -  stop them with `topn local down`.")
    elif action == "down":
        stopped = anyio.run(localmode.local_down, settings)
        for service in stopped:
            print(f"stopped {service.name} (pid {service.pid})")
        if not stopped:
            print("nothing to stop")
    else:
        recorded = localmode.read_recorded(settings)
        for service in recorded.values():
            serving = anyio.run(localmode.is_serving, service.endpoint)
            print(f"{service.name:<9} {service.endpoint}  (pid {service.pid}, {'up' if serving else 'down'})")
        if not recorded:
            print("no local services recorded (start them with `topn local up`)")
    return EXIT_OK
