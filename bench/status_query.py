"""How long `topn status` takes to list runs: run summaries counted in SQL vs every run loaded whole.

Generates a journal of many varied runs (tests/journal_factory.py: written through the Journal API,
then cloned), then times, side by side and alternating, on the same open journal:

* light: `recent_runs(journal, 20, whole=False)`, what `topn status` does now
  (`Journal.list_run_summaries`: a fixed number of aggregate queries);
* whole: every run loaded with `Journal.list_runs()` and described, the last 20 kept, what
  `topn status` did before (a few queries per run).

    python -m bench.status_query [--runs 1000] [--repeats 7]

Prints the median of each, their ratio and the SQL statements each executes, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from orchestrator.journal import JOURNAL_FILENAME, Journal
from orchestrator.service.status import describe_run, recent_runs
from tests.journal_factory import varied_journal

STATUS_RECENT_RUNS = 20


async def _timed(work: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


async def _statements(journal: Journal, work: Callable[[], Awaitable[Any]]) -> int:
    executed: list[str] = []
    connection = journal._connection
    assert connection is not None
    connection.set_trace_callback(executed.append)
    try:
        await work()
    finally:
        connection.set_trace_callback(None)
    return len(executed)


async def measure(runs: int, repeats: int, folder: Path) -> dict[str, Any]:
    """Median seconds of both ways of listing the latest runs, and their SQL statement counts."""
    path = folder / JOURNAL_FILENAME
    started = time.perf_counter()
    await varied_journal(path, runs)
    generated_s = time.perf_counter() - started
    async with await Journal.open(path) as journal:

        async def light() -> list[dict[str, Any]]:
            return await recent_runs(journal, STATUS_RECENT_RUNS, False)

        async def whole() -> list[dict[str, Any]]:
            return [describe_run(record) for record in await journal.list_runs()][-STATUS_RECENT_RUNS:]

        # Same runs listed both ways (checked, so the timing compares like with like).
        keys = (await light())[0].keys()
        assert [{key: row[key] for key in keys} for row in await whole()] == await light()
        light_s: list[float] = []
        whole_s: list[float] = []
        for repeat in range(repeats):
            # Alternate which goes first, so neither always finds the page cache warmed by the other.
            if repeat % 2:
                whole_s.append(await _timed(whole))
                light_s.append(await _timed(light))
            else:
                light_s.append(await _timed(light))
                whole_s.append(await _timed(whole))
        light_statements = await _statements(journal, light)
        whole_statements = await _statements(journal, whole)
    light_median, whole_median = statistics.median(light_s), statistics.median(whole_s)
    return {
        "runs": runs,
        "repeats": repeats,
        "generate_s": round(generated_s, 3),
        "light_median_s": round(light_median, 6),
        "whole_median_s": round(whole_median, 6),
        "whole_over_light": round(whole_median / light_median, 1),
        "light_statements": light_statements,
        "whole_statements": whole_statements,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs in the generated journal")
    parser.add_argument("--repeats", type=int, default=7, help="timings of each way (median reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="topn-status-bench-") as folder:
        result = anyio.run(measure, args.runs, args.repeats, Path(folder))
    print(
        f"topn status over {result['runs']} runs (median of {result['repeats']}): "
        f"summaries {result['light_median_s'] * 1000:.1f} ms ({result['light_statements']} SQL statements), "
        f"whole records {result['whole_median_s'] * 1000:.1f} ms ({result['whole_statements']} statements): "
        f"{result['whole_over_light']}x"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
