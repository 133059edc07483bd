"""CPU per file of collecting finished units, stage by stage, with the run's own functions.

    .venv/bin/python -m bench.collect_cost --units 10 --files 300 [--held-objects 4500000]

Builds result blobs as a node writes them (node.result.ResultWriter; small files of 30-120 words
over a 120-word vocabulary), then times what the orchestrator does with each finished unit: decode
the blob, settle (render every `_OUTPUT` text), save the files under a temporary results folder
(collect.save_outputs: writes and the filesystem sync), the ledger's work (run-level merge, the
file's top, its summary line) and the two per-file events, rendered as JSON to /dev/null.
`--held-objects` keeps that many objects alive meanwhile, as a big run does (its inputs and
results), which is what makes the garbage collector's work grow. `--gc-young` sets the collector's
young-generation threshold (default: the one `topn run` sets). Nothing is asserted: it reports.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import random
import resource
import tempfile
from pathlib import Path

import structlog

from node.result import FileResult, ResultWriter, decode_result_blob
from orchestrator import naming
from orchestrator.azure import collect
from orchestrator.cli import RUN_GC_YOUNG_THRESHOLD
from orchestrator.events import configure_events
from orchestrator.results import RunCounts, entry_line, file_entry, top_of
from orchestrator.run import units

IDENTITY = {
    "AZ_BATCH_NODE_ID": "tvm-1",
    "AZ_BATCH_TASK_ID": "t000001",
    "AZ_BATCH_JOB_ID": "topn-job",
    "AZ_BATCH_POOL_ID": "topn-pool",
}
STAGES = ("decode", "settle", "save", "ledger", "events")


def relpaths_of(unit: int, files: int) -> list[str]:
    return [f"part{position % 10}/doc{unit:04d}-{position:05d}.txt" for position in range(files)]


def unit_blob(relpaths: list[str], chooser: random.Random) -> bytes:
    """A unit's result blob as the node writes it: every file's full counts."""
    vocabulary = [f"word{number}" for number in range(120)]
    target = io.BytesIO()
    writer = ResultWriter(target, unit="t000001", tokenizer="words", top=10, identity=IDENTITY)
    for position, relpath in enumerate(relpaths):
        counts: dict[str, int] = {}
        for _ in range(chooser.randint(30, 120)):
            word = chooser.choice(vocabulary)
            counts[word] = counts.get(word, 0) + 1
        writer.add(
            FileResult(
                position,
                relpath,
                "ok",
                naming.output_name(relpath),
                None,
                counted=(0, 600),
                size=600,
                etag='"0x8DD0000000000"',
                words=sum(counts.values()),
                invalid_bytes=0,
                counts=list(counts.items()),
                output_uploaded=True,
            )
        )
    writer.close()
    return target.getvalue()


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(unit_count: int, files: int, out_dir: Path) -> dict[str, float]:
    """CPU seconds per stage over `unit_count` units of `files` files each."""
    chooser = random.Random(8)
    relpaths = [relpaths_of(unit, files) for unit in range(unit_count)]
    blobs = [unit_blob(names, chooser) for names in relpaths]
    log = structlog.get_logger()
    spent = dict.fromkeys(STAGES, 0.0)
    run_counts = RunCounts()
    lines: list[str] = []
    for names, blob in zip(relpaths, blobs, strict=True):
        started = cpu_s()
        result = decode_result_blob(blob)
        decoded = cpu_s()
        settled = [item for item in units.settle_unit(result, names) if isinstance(item, units.RenderedFile)]
        rendered = cpu_s()
        collect.save_outputs(out_dir, [(item.output_name, item.text) for item in settled])
        saved = cpu_s()
        for item in settled:
            relpath = names[item.position]
            run_counts.add(relpath, item.counts.counts)
            entry = file_entry(
                relpath,
                task_id="t000001",
                succeeded=True,
                top=top_of(item.counts.counts, 10),
                words=item.counts.words,
                invalid_bytes=item.counts.invalid_bytes,
                output=item.output_name,
            )
            lines.append(entry_line(entry))
        ledgered = cpu_s()
        for item in settled:
            relpath = names[item.position]
            log.info("task.completed", task_id="t000001", file=relpath, exit_code=0, duration_s=1.0)
            size = len(item.text)
            log.info("output.downloaded", task_id="t000001", file=relpath, bytes=size, invalid_bytes=0)
        reported = cpu_s()
        marks = [started, decoded, rendered, saved, ledgered, reported]
        for stage, start, end in zip(STAGES, marks, marks[1:], strict=False):
            spent[stage] += end - start
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=10)
    parser.add_argument("--files", type=int, default=300, help="files per unit")
    parser.add_argument("--held-objects", type=int, default=0, help="objects kept alive meanwhile")
    parser.add_argument("--gc-young", type=int, default=RUN_GC_YOUNG_THRESHOLD)
    args = parser.parse_args()
    gc.set_threshold(args.gc_young, *gc.get_threshold()[1:])
    held = [{"position": number} for number in range(args.held_objects)]
    with Path(os.devnull).open("w", encoding="utf-8") as sink, tempfile.TemporaryDirectory() as folder:
        configure_events("json", sink, "info")
        spent = measure(args.units, args.files, Path(folder))
    total_files = args.units * args.files
    shown = "  ".join(f"{stage} {spent[stage] * 1000 / total_files:.3f}" for stage in STAGES)
    print(
        f"{total_files} files, {len(held):,} objects held, GC young threshold {args.gc_young}: "
        f"{shown}  total {sum(spent.values()) * 1000 / total_files:.3f} ms/file"
    )


if __name__ == "__main__":
    main()
