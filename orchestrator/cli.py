"""`topn`: parse the command line, load settings, start local services if needed, run, report.

stdout carries only results (a table, or the summary JSON with --json); events go to stderr.
Exit status: 0 every file succeeded, 1 some failed (or the run failed), 2 usage or configuration
error (nothing created), 128+N when stopped by signal N (Ctrl-C: 130).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, TextIO

import anyio
import structlog

from orchestrator.console import EventStream, ensure_standard_streams, print_summary, render_run, render_runs
from orchestrator.errors import TopnError, UsageError
from orchestrator.events import (
    LEVELS,
    configure_events,
    default_log_format,
)
from orchestrator.inputs import InputFile, SkippedInput
from orchestrator.local.processes import project_root
from orchestrator.progress import CurrentStderr, NullProgress, RichProgress
from orchestrator.secrets import redact_text, register_secrets
from orchestrator.settings import Settings, load_settings, secret_values

log = structlog.get_logger()

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
STATUS_RECENT_RUNS = 20

# Allocations between two young-generation collections for the commands that hold a run (Python's
# default is 700). A run keeps every input and file result for its whole length, and each result
# blob it decodes makes tens of thousands of short-lived lists: at 700, collections promoted them
# while they were alive, and the full collections that followed scanned the whole run's objects
# (a 10,000-blob run: 16 full collections, 2.0 s of its 9.5 s of CPU; at 20,000: one, 0.2 s).
# Garbage in cycles waits longer for a collection; the listing frees its own (blobinputs.py).
RUN_GC_YOUNG_THRESHOLD = 20_000


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
        epilog=(
            "Exit status: 0 all files succeeded, 1 some failed (or the run stopped; `topn status` says "
            "why), 2 usage or configuration error, 130 stopped by Ctrl-C (SIGINT), 143 stopped by SIGTERM."
        ),
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
    run.add_argument(
        "paths", nargs="*", metavar="PATH", help="text files or folders; az://CONTAINER/PREFIX for blobs"
    )
    run.add_argument("--top", type=_positive_int, default=None, help="how many words to report (default 10)")
    run.add_argument("--tokenizer", choices=("words", "tutorial"), default=None, help="how words are split")
    run.add_argument("--out", type=Path, default=None, help="results folder (default results/<run_id>/)")
    run.add_argument("--json", action="store_true", help="print summary.json to stdout instead of a table")
    run.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="leave out files and folders that cannot be read (a warning each; summary.json lists them)",
    )

    resume = commands.add_parser(
        "resume", parents=[common], help="continue an unfinished run from its journal (see `topn status`)"
    )
    resume.add_argument("run_id", metavar="RUN_ID", help="the run to continue")
    resume.add_argument("--json", action="store_true", help="print summary.json to stdout instead of a table")
    resume.add_argument("--retry-failed", action="store_true", help="also run again every failed file")

    status = commands.add_parser("status", parents=[common], help="recent runs, or one run in detail")
    status.add_argument("run_id", nargs="?", default=None, metavar="RUN_ID", help="the run to describe")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")

    daemon = commands.add_parser(
        "daemon", parents=[common], help="watch an inbox and turn arriving files into results (foreground)"
    )
    daemon.add_argument(
        "--inbox", type=Path, default=None, help="the folder to watch (or [daemon] inbox_dir)"
    )
    daemon.add_argument(
        "--listen",
        default=None,
        metavar="HOST:PORT",
        help="health server address (default [daemon] listen, 127.0.0.1:9464; port 0 picks one)",
    )

    pool_parser = commands.add_parser("pool", help="the kept pool (runs and the daemon never delete it)")
    pool_commands = pool_parser.add_subparsers(dest="pool_command", metavar="ACTION", required=True)
    pool_commands.add_parser(
        "delete", parents=[common], help="start deleting the configured pool ([pool] id)"
    )

    local_parser = commands.add_parser("local", help="the local emulators (Azurite and the Batch emulator)")
    local_commands = local_parser.add_subparsers(dest="local_command", metavar="ACTION", required=True)
    local_commands.add_parser("up", parents=[common], help="start them and keep them running across runs")
    down = local_commands.add_parser("down", parents=[common], help="stop what `topn local up` started")
    down.add_argument("--force", action="store_true", help="stop them even while a run is using them")
    local_commands.add_parser("status", parents=[common], help="show what `topn local up` started")
    prune = local_commands.add_parser(
        "prune", parents=[common], help="remove what finished runs left in the local services' data"
    )
    prune.add_argument("--force", action="store_true", help="prune even while a run is live (keeps its data)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console script; returns the exit status."""
    ensure_standard_streams()
    args = build_parser().parse_args(argv)
    log_format: Literal["json", "console"] = args.log_format or default_log_format(sys.stderr)
    if args.command == "daemon":
        # A daemon's events are its stdout (it prints nothing else): JSON lines for log shipping.
        log_format = args.log_format or "json"
        configure_events(log_format, EventStream(sys.stdout), args.log_level)
    else:
        # Events follow sys.stderr at write time, so a live progress bar can route them above itself.
        configure_events(log_format, EventStream(CurrentStderr()), args.log_level)
    if args.command in ("run", "resume", "daemon"):
        gc.set_threshold(RUN_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    try:
        settings = _load(args, os.environ)
        if args.command == "run":
            return _run_command(args, settings, log_format)
        if args.command == "resume":
            return _resume_command(args, settings, log_format)
        if args.command == "status":
            return _status_command(args, settings)
        if args.command == "daemon":
            from orchestrator.service.daemon import serve

            return serve(settings, args.inbox, args.listen)
        if args.command == "pool":
            return _pool_command(settings)
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


def _load(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    path = args.config if args.config is not None else default_config_path(_working_folder())
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


def _working_folder() -> Path:
    """The current folder; one that was deleted under the shell is exit 2 with the fix, not a crash."""
    try:
        return Path.cwd()
    except FileNotFoundError:
        raise UsageError(
            "the current folder no longer exists (it was deleted or moved); `cd` into an existing "
            "folder and run topn again"
        ) from None


def _report(error: TopnError, log_format: str, stream: TextIO | None = None) -> int:
    """Say what went wrong on stderr, in the event format; secrets are redacted on the way out."""
    message = redact_text(str(error))
    # A run that stopped has already said so in its own `run.failed` event; usage errors never start one.
    reported_by_run = error.reported_by_run and not isinstance(error, UsageError)
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
    from orchestrator.blobinputs import discover_arguments
    from orchestrator.journal import check_state_folder
    from orchestrator.results import (
        check_result_paths_fit,
        check_results_folder_creatable,
        claim_results_folder,
    )

    if not args.paths:
        raise UsageError("give at least one file or folder to process, e.g. `topn run examples/texts`")
    skipped: list[SkippedInput] | None = [] if args.skip_unreadable else None
    inputs, blobs = discover_arguments(args.paths, skipped)  # InputError (exit 2) before anything starts
    run_id = naming.new_run_id()
    out_dir = args.out if args.out is not None else Path("results") / run_id
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        # Refuse an occupied results folder now, before services start; for such a folder the
        # pipeline's own check only raises (it writes nothing), so its message is reused here.
        claim_results_folder(out_dir, run_id)
    check_results_folder_creatable(out_dir)  # e.g. --out under a file: refused before services start
    check_result_paths_fit(out_dir, [item.relpath for item in inputs])
    check_state_folder(settings.local.state_dir)  # last: it makes the folder when it is missing
    return _run_body(
        settings, inputs, out_dir, log_format, as_json=args.json, run_id=run_id, skipped=skipped, blobs=blobs
    )


def _resume_command(args: argparse.Namespace, settings: Settings, log_format: str) -> int:
    from orchestrator.journal import check_state_folder, journal_path
    from orchestrator.run.pipeline import summary_exit_status
    from orchestrator.run.resume import resumed_inputs, resumed_out_dir, resumed_settings, unknown_run
    from orchestrator.service.status import finished_summary, load_for_resume

    journal_file = journal_path(settings.local.state_dir)
    record = anyio.run(load_for_resume, journal_file, args.run_id, args.retry_failed)
    if record is None:
        raise unknown_run(args.run_id, journal_file)
    out_dir = resumed_out_dir(record)
    if not record.is_finished:
        check_state_folder(settings.local.state_dir)
    if record.is_finished:  # nothing to do: show what it ended with
        summary = finished_summary(out_dir, record.run_id)
        print_summary(summary, out_dir, as_json=args.json, inputs=resumed_inputs(record))
        return summary_exit_status(summary)
    return _run_body(
        resumed_settings(settings, record.settings_snapshot),
        resumed_inputs(record),
        out_dir,
        log_format,
        as_json=args.json,
        resume_run_id=record.run_id,
    )


def _run_body(
    settings: Settings,
    inputs: Sequence[InputFile],
    out_dir: Path,
    log_format: str,
    *,
    as_json: bool,
    run_id: str | None = None,
    resume_run_id: str | None = None,
    skipped: Sequence[SkippedInput] | None = None,
    blobs: Sequence[str] = (),
) -> int:
    """`topn run` and `topn resume`: one run in the process shell, under signals; print; exit status."""
    from orchestrator.run.pipeline import summary_exit_status
    from orchestrator.service.runlock import run_lock
    from orchestrator.service.shell import open_services, run_once, start_blob_listing
    from orchestrator.service.signals import run_supervised

    show_progress = log_format == "console" and sys.stderr.isatty()
    progress: RichProgress | NullProgress = RichProgress() if show_progress else NullProgress()

    async def body() -> dict[str, Any]:
        nonlocal inputs
        async with open_services(settings) as services:
            # Blobs are read where they live: each prefix's first page now (exit 2 before the run
            # is created), the rest while the run goes on.
            listing = await start_blob_listing(services, inputs, blobs, out_dir) if blobs else None
            inputs = listing.inputs if listing is not None else inputs
            # --skip-unreadable: what discovery left out is journalled with the run and listed in
            # summary.json (a resumed run's too).
            summary = await run_once(
                services,
                inputs,
                out_dir,
                run_id=run_id,
                resume_run_id=resume_run_id,
                progress=progress,
                skipped=skipped or (),
                listing=listing,
            )
        progress.close()
        print_summary(summary, out_dir, as_json=as_json, inputs=inputs)
        return summary

    locked_run_id = resume_run_id or run_id
    assert locked_run_id is not None, "a run body always has its run id"
    # One driver per run: a second `topn resume` of this run is exit 2 at once, naming our pid.
    with run_lock(settings.local.state_dir, locked_run_id), progress:
        outcome = run_supervised(body, lambda received: _exit_on_repeat(received, log_format))
    status = _report(outcome.error, log_format) if outcome.error is not None else EXIT_FAILED
    if outcome.signalled is not None:
        if log_format != "json":
            print(f"topn: stopped by {outcome.signalled.name}", file=sys.stderr)
        return 128 + int(outcome.signalled)
    return summary_exit_status(outcome.result) if outcome.result is not None else status


def _exit_on_repeat(received: signal.Signals, log_format: str) -> None:
    """A second signal ends the process at once.

    The journal (WAL, one transaction per record) keeps everything committed before it, and `topn
    resume` continues from there.
    """
    if log_format == "json":
        log.warning("signal.repeated", signal=received.name, exit_code=128 + int(received))
    else:
        print(f"topn: {received.name} again: stopping now", file=sys.stderr)
    sys.stderr.flush()
    os._exit(128 + int(received))


def _status_command(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.journal import journal_path
    from orchestrator.run.resume import unknown_run
    from orchestrator.service.shell import read_live_job
    from orchestrator.service.status import describe_run, load_record, pool_warnings, recent_runs_in

    journal_file = journal_path(settings.local.state_dir)
    for pool_id, message in pool_warnings(settings.local.state_dir).items():
        log.warning("pool.image_end_of_life", pool_id=pool_id, message=message)  # until the pool moves on
    if args.run_id is None:
        runs = anyio.run(recent_runs_in, journal_file, STATUS_RECENT_RUNS, args.json)
        text = json.dumps(runs, ensure_ascii=False, indent=2) + "\n" if args.json else render_runs(runs)
    else:
        record = anyio.run(load_record, journal_file, args.run_id)
        if record is None:
            raise unknown_run(args.run_id, journal_file)
        described = describe_run(record)
        described["job"] = anyio.run(read_live_job, settings, record.run_id, record.job_number)
        text = (
            json.dumps(described, ensure_ascii=False, indent=2) + "\n" if args.json else render_run(described)
        )
    sys.stdout.write(redact_text(text))
    sys.stdout.flush()
    return EXIT_OK


def _pool_command(settings: Settings) -> int:
    """`topn pool delete`: the explicit way to remove the kept pool (Batch finishes the deletion)."""
    from orchestrator.service.shell import open_services

    async def delete() -> None:
        async with open_services(settings) as services:
            await services.pool.delete()

    anyio.run(delete)
    print(f"deleting pool {settings.pool.id} (Batch finishes it in the background)")
    return EXIT_OK


# --------------------------------------------------------------------------- local up / down


def _local_command(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.service.localcommands import local_command

    return local_command(args.local_command, settings, force=getattr(args, "force", False))
