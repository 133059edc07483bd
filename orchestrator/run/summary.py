"""summary.json for a run: built from what the run did, or read back when a resume only cleans up."""

from __future__ import annotations

import time
from typing import Any

from orchestrator.errors import RunFailedError
from orchestrator.inputs import renamed_inputs
from orchestrator.results import build_summary, read_summary, skipped_entries, summary_path
from orchestrator.run.context import RunContext, RunLedger


def run_summary(run: RunContext, ledger: RunLedger, final_state: str) -> dict[str, Any]:
    """summary.json's content (DESIGN §4) for a run that ends in `final_state`."""
    # In relpath order, as the inputs of a run without blob pages are (those come after its local inputs).
    ordered = sorted(ledger.results.items(), key=lambda pair: run.inputs[pair[0]].relpath)
    files = [_with_source(run, index, result.entry) for index, result in ordered]
    succeeded = [result for result in ledger.results.values() if result.succeeded]
    totals: dict[str, Any] = {
        "files": len(run.inputs),
        "succeeded": len(succeeded),
        "failed": len(ledger.results) - len(succeeded),
        "words": sum(int(result.entry["words"] or 0) for result in succeeded),
        "invalid_bytes": sum(int(result.entry.get("invalid_bytes") or 0) for result in succeeded),
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


def _with_source(run: RunContext, index: int, entry: dict[str, Any]) -> dict[str, Any]:
    """A renamed duplicate's entry (`notes~2.txt`) also names the file it stands for (`source`)."""
    item = run.inputs[index]
    if not renamed_inputs([item]):
        return entry
    return {**entry, "source": item.shown}


def written_summary(run: RunContext) -> dict[str, Any]:
    """The summary.json a run wrote before CLEANING (a resume from CLEANING only finishes clean-up)."""
    try:
        return read_summary(run.out_dir)
    except (OSError, ValueError) as error:
        raise RunFailedError(
            f"run {run.run_id} was cleaning up but its summary {summary_path(run.out_dir)} "
            f"cannot be read ({error}); its results are in that folder"
        ) from None
