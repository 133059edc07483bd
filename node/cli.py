"""`python -m node` / `python3 node.pyz`: count the words of each input and upload (or print) the result."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from node.counting import FileCounts, available_cpus, count_file
from node.report import (
    COUNTS_SUFFIX,
    counts_document,
    default_output_name,
    encode_counts_blob,
    json_line,
    output_text,
)
from node.tokenizers import TOKENIZERS, Tokenizer, check_tokenizer
from node.upload import (
    UPLOAD_RETRIES,
    Blob,
    Destination,
    Uploader,
    UploadFailure,
    check_container_url,
    redact,
    seed_container_url,
)

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UPLOAD_FAILED = 3
DEFAULT_TOP = 10
BLOB_ENDPOINT_VARIABLE = "TOPN_BLOB_ENDPOINT"
# Read when no destination flag is given, so the SAS need not appear in the process's argv.
OUTPUT_URL_VARIABLE = "TOPN_OUTPUT_SAS_URL"
EXIT_INTERNAL_ERROR = 1


class UsageError(Exception):
    """Bad flags: exit 2 with the message."""


@dataclass(frozen=True)
class Job:
    """One input and where its results go."""

    filepath: str
    output_name: str
    counts_name: str


@dataclass(frozen=True)
class Plan:
    jobs: list[Job]
    top: int
    tokenizer: Tokenizer
    workers: int
    destination: Destination | None  # None: --json
    upload_retries: int


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="node",
        description="Count the words of text files; upload the top N and the full counts to a container.",
    )
    parser.add_argument(
        "--filepath", action="append", required=True, help="input file; repeat for several inputs"
    )
    parser.add_argument("--numwords", type=non_negative_int, help="how many top words to report (seed flag)")
    parser.add_argument("--top", type=non_negative_int, help=f"same as --numwords (default {DEFAULT_TOP})")
    parser.add_argument("--tokenizer", choices=TOKENIZERS, default="words", help="how words are found")
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="processes for a large file (default: the CPUs available to this process)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per input; upload nothing")
    destination = parser.add_argument_group("output destination")
    destination.add_argument(
        "--output-container-url", help=f"container URL with a write SAS (default: ${OUTPUT_URL_VARIABLE})"
    )
    destination.add_argument("--storageaccount", help="storage account name (seed form)")
    destination.add_argument("--storagecontainer", help="container name (seed form)")
    destination.add_argument("--sastoken", help="container SAS token (seed form)")
    destination.add_argument(
        "--blob-endpoint",
        help=f"blob endpoint for the seed form (default: ${BLOB_ENDPOINT_VARIABLE}, else the public cloud's)",
    )
    destination.add_argument(
        "--output-name", action="append", help="the _OUTPUT blob's name, one per --filepath"
    )
    destination.add_argument(
        "--counts-name", action="append", help="the counts blob's name, one per --filepath"
    )
    destination.add_argument(
        "--upload-retries", type=non_negative_int, default=UPLOAD_RETRIES, help="retries per blob upload"
    )
    return parser


def _choose_top(args: argparse.Namespace) -> int:
    if args.numwords is not None and args.top is not None and args.numwords != args.top:
        raise UsageError(f"--numwords {args.numwords} and --top {args.top} disagree; pass only one")
    chosen = args.numwords if args.numwords is not None else args.top
    return DEFAULT_TOP if chosen is None else int(chosen)


def _choose_destination(args: argparse.Namespace, environ: Mapping[str, str]) -> Destination | None:
    seed_flags = {
        "--storageaccount": args.storageaccount,
        "--storagecontainer": args.storagecontainer,
        "--sastoken": args.sastoken,
    }
    given = [flag for flag, value in seed_flags.items() if value]
    if args.json:
        return None
    if args.output_container_url and given:
        raise UsageError(
            f"pass either --output-container-url or the seed flags ({', '.join(given)}), not both"
        )
    try:
        if args.output_container_url:
            return check_container_url(args.output_container_url)
        if given:
            missing = [flag for flag, value in seed_flags.items() if not value]
            if missing:
                raise UsageError(f"the seed form also needs {', '.join(missing)}")
            endpoint = (
                args.blob_endpoint
                or environ.get(BLOB_ENDPOINT_VARIABLE)
                or f"https://{args.storageaccount}.blob.core.windows.net"
            )
            return seed_container_url(endpoint, args.storagecontainer, args.sastoken)
    except ValueError as error:
        raise UsageError(str(error)) from error
    from_environment = environ.get(OUTPUT_URL_VARIABLE)
    if from_environment:
        try:
            return check_container_url(from_environment)
        except ValueError as error:
            raise UsageError(f"${OUTPUT_URL_VARIABLE}: {error}") from error
    raise UsageError(
        "no output destination: pass --output-container-url URL (a container SAS URL), "
        f"or --storageaccount/--storagecontainer/--sastoken, or set ${OUTPUT_URL_VARIABLE}, "
        "or pass --json to print the result"
    )


def _names(flag: str, names: list[str] | None, count: int) -> list[str] | None:
    if names is None:
        return None
    if len(names) != count:
        raise UsageError(f"{flag} was given {len(names)} times for {count} --filepath; give one per input")
    for name in names:
        if not name or name.startswith("/") or len(name) > 1024:
            raise UsageError(
                f"{flag} {name!r} is not a usable blob name (non-empty, relative, ≤ 1024 characters)"
            )
    return names


def plan_from_args(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Plan:
    """Parse and check the command line (argparse exits 2 itself on malformed flags)."""
    args = build_parser().parse_args(argv)
    filepaths: list[str] = args.filepath
    top = _choose_top(args)
    destination = _choose_destination(args, environ)
    output_names = _names("--output-name", args.output_name, len(filepaths)) or [
        default_output_name(path) for path in filepaths
    ]
    counts_names = _names("--counts-name", args.counts_name, len(filepaths)) or [
        name + COUNTS_SUFFIX for name in output_names
    ]
    all_names = output_names + counts_names
    duplicates = sorted({name for name in all_names if all_names.count(name) > 1})
    if duplicates and destination is not None:
        raise UsageError(
            f"two inputs would write the same blob {duplicates[0]!r}; "
            "give each input its own --output-name and --counts-name"
        )
    jobs = [
        Job(path, out, counts)
        for path, out, counts in zip(filepaths, output_names, counts_names, strict=True)
    ]
    workers = args.workers if args.workers is not None else available_cpus()
    return Plan(jobs, top, check_tokenizer(args.tokenizer), workers, destination, args.upload_retries)


def _say(message: str) -> None:
    """One line on stderr, with anything that looks like a SAS removed."""
    print(f"node: {redact(message)}", file=sys.stderr, flush=True)


def _print_stdout(line: str) -> None:
    # Bytes, so a non-UTF-8 locale cannot turn a word into an encoding error.
    sys.stdout.buffer.write(line.encode("utf-8") + b"\n")
    sys.stdout.buffer.flush()


def _count(job: Job, plan: Plan) -> FileCounts | None:
    try:
        return count_file(job.filepath, plan.tokenizer, workers=plan.workers)
    except IsADirectoryError:
        _say(f"cannot read input {job.filepath!r}: it is a folder, not a file")
    except OSError as error:
        _say(f"cannot read input {job.filepath!r}: {error.strerror or error}")
    return None


async def run(plan: Plan, environ: Mapping[str, str]) -> int:
    """Count every input (each in a thread, so earlier uploads proceed) and upload as results arrive."""
    if plan.destination is None:
        return await _count_all(plan, environ, None)
    async with Uploader(plan.destination, retries=plan.upload_retries) as uploader:
        return await _count_all(plan, environ, uploader)


async def _count_all(plan: Plan, environ: Mapping[str, str], uploader: Uploader | None) -> int:
    status = EXIT_OK
    uploads: list[asyncio.Task[list[UploadFailure]]] = []
    for job in plan.jobs:
        result = await asyncio.to_thread(_count, job, plan)
        if result is None:
            status = max(status, EXIT_USAGE)
            continue
        if uploader is None:
            _print_stdout(json_line(job.filepath, plan.tokenizer, result, plan.top))
            continue
        blobs = [
            Blob(
                job.output_name,
                output_text(result.top(plan.top), environ).encode("utf-8"),
                "text/plain; charset=utf-8",
            ),
            Blob(
                job.counts_name,
                encode_counts_blob(counts_document(job.filepath, plan.tokenizer, result)),
                "application/json",
            ),
        ]
        # Started now, awaited at the end: the next input is counted while these upload (the
        # uploader bounds how many requests are in flight, however many inputs there are).
        uploads.append(asyncio.create_task(uploader.upload(blobs)))
    for failures in await asyncio.gather(*uploads):
        for failure in failures:
            _say(failure.message)
            status = max(status, EXIT_UPLOAD_FAILED)
    return status


def _quiet_azure_logging() -> None:
    # Our own messages say what failed; the SDK's warnings would only repeat it (and add noise).
    azure_logger = logging.getLogger("azure")
    azure_logger.addHandler(logging.NullHandler())
    azure_logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 usage or unreadable input, 3 upload failed, 1 bug)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["unit"]:  # `node unit --manifest ...`: a whole work unit read from Blob Storage
        from node.unit import main as unit_main

        return unit_main(arguments[1:])
    environ = os.environ
    try:
        plan = plan_from_args(arguments, environ)
    except UsageError as error:
        _say(str(error))
        return EXIT_USAGE
    _quiet_azure_logging()
    try:
        return asyncio.run(run(plan, environ))
    except Exception:
        # A bug or an unforeseen failure: show where, but never a SAS that an error message carried.
        print(redact(traceback.format_exc()), file=sys.stderr, end="", flush=True)
        return EXIT_INTERNAL_ERROR
