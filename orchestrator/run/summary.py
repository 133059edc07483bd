"""summary.json for a run: built from what the run did, or read back when a resume only cleans up."""

from __future__ import annotations

import time
from typing import Any

from orchestrator.errors import RunFailedError
from orchestrator.inputs import renamed_inputs
from orchestrator.results import (
    SummaryEntries,
    build_summary,
    entry_line,
    read_summary,
    skipped_entries,
    summary_path,
)
from orchestrator.run.context import FileResult, RunContext, RunLedger


def run_summary(run: RunContext, ledger: RunLedger, final_state: str) -> dict[str, Any]:
    """summary.json's content (DESIGN §4) for a run that ends in `final_state`."""
    # In path order (an entry's path is its input's relpath); lines, never all entries as dicts.
    in_order = sorted(ledger.results, key=lambda index: run.inputs[index].relpath)
    files = SummaryEntries([_with_source(run, index, ledger.results[index]) for index in in_order])
    succeeded = [result for result in ledger.results.values() if result.succeeded]
    totals: dict[str, Any] = {
        "files": len(run.inputs),
        "succeeded": len(succeeded),
        "failed": len(ledger.results) - len(succeeded),
        "words": sum(result.words for result in succeeded),
        "invalid_bytes": sum(result.invalid_bytes for result in succeeded),
        "distinct_words": len(ledger.counts.totals),
        "bytes": sum(item.size_bytes for item in ledger.current_inputs(run.inputs)),
        "duration_s": round(time.monotonic() - run.started, 3),
        "stages_s": dict(ledger.stage_s),
        "requests": run.requests.snapshot(),
        "job_id": run.job_id,
        "pool_id": run.settings.pool.id,
    }
    summary = build_summary(run.run_id, final_state, ledger.counts.top(run.settings.run.top), files, totals)
    if run.skipped:  # --skip-unreadable: what discovery left out (a resumed run's from the journal)
        summary["skipped"] = skipped_entries(run.skipped)
    return summary


def _with_source(run: RunContext, index: int, result: FileResult) -> str:
    """A file's summary line; a renamed duplicate's (`notes~2.txt`) also names the file it stands for."""
    item = run.inputs[index]
    if not renamed_inputs([item]):
        return result.line
    return entry_line({**result.entry, "source": item.shown})


def written_summary(run: RunContext) -> dict[str, Any]:
    """The summary.json a run wrote before CLEANING (a resume from CLEANING only finishes clean-up)."""
    try:
        return read_summary(run.out_dir)
    except (OSError, ValueError) as error:
        raise RunFailedError(
            f"run {run.run_id} was cleaning up but its summary {summary_path(run.out_dir)} "
            f"cannot be read ({error}); its results are in that folder"
        ) from None
