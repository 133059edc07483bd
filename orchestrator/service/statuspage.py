"""The daemon's status page: one server-rendered HTML document, no build step, refreshing itself."""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.service.daemon import DaemonState

REFRESH_S = 5

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin-top: 1.4em; }
table { border-collapse: collapse; }
td, th { padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: left; }
.ok { color: #176b1c; } .bad { color: #a11; } progress { width: 10em; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], table_id: str, empty: str) -> str:
    if not rows:
        return f'<p id="{table_id}" class="empty">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(name)}</th>" for name in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _top_words(top: Sequence[Sequence[Any]]) -> str:
    return ", ".join(f"{_e(word)} ({_e(count)})" for word, count in top) or "–"


def render_status_page(state: DaemonState, runs: Sequence[Mapping[str, Any]], now: float) -> str:
    """The page: backlog, runs in flight with progress, recent runs with top words, nodes, failures."""
    ready = '<span class="ok">ready</span>' if state.ready else '<span class="bad">not ready</span>'
    if state.draining:
        ready = '<span class="bad">draining</span>'
    in_flight = [
        [
            _e(progress.batch_id),
            _e(progress.stage),
            f'<progress max="{max(progress.total, 1)}" value="{progress.done}"></progress> '
            f"{progress.done}/{progress.total}",
            _e(f"{time.monotonic() - progress.started_at:.0f} s"),
        ]
        for progress in state.in_flight.values()
    ]
    finished = [run for run in runs if run.get("state") == "finished"]
    recent = [
        [
            _e(run["run_id"]),
            _e(run.get("outcome") or ""),
            _e(run.get("files", 0)),
            _top_words(run.get("top", [])),
        ]
        for run in finished
    ]
    nodes = [[_e(name), _e(count)] for name, count in sorted(state.pool_nodes.items())]
    failures = [
        [_e(item["path"]), _e(item["reason"]), _e(time.strftime("%H:%M:%S", time.gmtime(item["at"])))]
        for item in list(state.recent_failures)[:20]
    ]
    backlog = state.inbox_pending + state.unbatched
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_S}">
<title>topn daemon</title><style>{_STYLE}</style></head>
<body>
<h1>topn daemon <small>{_e(state.daemon_id)}</small> – {ready}</h1>
<p>Inbox <code>{_e(state.folders.inbox)}</code>:
 backlog <strong id="backlog">{backlog}</strong> file(s)
 (<span id="inbox-pending">{state.inbox_pending}</span> settling,
 <span id="unbatched">{state.unbatched}</span> claimed),
 <strong id="waiting">{len(state.waiting_batches)}</strong> batch(es) waiting.</p>
<h2>Runs in flight</h2>
{_table(["run", "stage", "progress", "age"], in_flight, "in-flight", "No run in flight.")}
<h2>Recent runs</h2>
{_table(["run", "outcome", "files", "top words"], recent, "recent-runs", "No finished run yet.")}
<h2>Pool nodes</h2>
{_table(["state", "nodes"], nodes, "pool-nodes", "No node (the pool may be at zero).")}
<h2>Recent failures</h2>
{_table(["file", "reason", "at (UTC)"], failures, "failures", "No failure.")}
<p><small>Rendered {_e(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)))} UTC;
 refreshes every {REFRESH_S} s.
 <a href="/metrics">metrics</a> · <a href="/v1/runs">runs (JSON)</a></small></p>
</body></html>
"""
