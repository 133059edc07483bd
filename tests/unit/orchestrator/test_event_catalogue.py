"""docs/events.md and the code agree: every event emitted is catalogued with exactly its fields and level,
and every catalogued event is emitted somewhere (read from the source with `ast`, not by running it)."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[3]
CATALOGUE = PROJECT / "docs" / "events.md"
SOURCES = sorted((PROJECT / "orchestrator").rglob("*.py"))
LEVEL_METHODS = {
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "error": "error",
    "exception": "error",
}
LOGGER_NAMES = {"log", "logger"}
EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
ROW = re.compile(r"^\|\s*`(?P<event>[^`]+)`\s*\|\s*(?P<level>\w+)\s*\|(?P<fields>[^|]*)\|")


@dataclass(frozen=True)
class Emission:
    where: str
    event: str
    level: str
    fields: frozenset[str]


@dataclass(frozen=True)
class Entry:
    level: str
    fields: frozenset[str]


def read_catalogue(text: str) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    for line in text.splitlines():
        match = ROW.match(line.strip())
        if match is None or match["event"] == "event":
            continue
        fields = frozenset(re.findall(r"`([^`]+)`", match["fields"]))
        assert match["event"] not in entries, f"{match['event']} is catalogued twice"
        entries[match["event"]] = Entry(match["level"], fields)
    return entries


def _is_logger(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in LOGGER_NAMES
    # structlog.get_logger().info(...)
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get_logger"
    )


def find_emissions(source: str, name: str) -> tuple[list[Emission], list[str]]:
    """Every `log.<level>("event", field=...)` call in `source`, and every call the test cannot read."""
    emissions: list[Emission] = []
    unreadable: list[str] = []
    tree = ast.parse(source, filename=name)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in LEVEL_METHODS or not _is_logger(node.func.value):
            continue
        where = f"{name}:{node.lineno}"
        first = node.args[0] if node.args else None
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)) or len(node.args) != 1:
            unreadable.append(f"{where}: the event name must be one literal string argument")
            continue
        if any(keyword.arg is None for keyword in node.keywords):
            unreadable.append(f"{where}: `**fields` hides the fields from the catalogue check")
            continue
        fields = frozenset(keyword.arg for keyword in node.keywords if keyword.arg is not None)
        emissions.append(Emission(where, first.value, LEVEL_METHODS[node.func.attr], fields))
    return emissions, unreadable


def all_emissions() -> tuple[list[Emission], list[str]]:
    emissions: list[Emission] = []
    unreadable: list[str] = []
    for path in SOURCES:
        found, bad = find_emissions(path.read_text(encoding="utf-8"), str(path.relative_to(PROJECT)))
        emissions += found
        unreadable += bad
    return emissions, unreadable


def test_the_catalogue_parses_and_names_events_well() -> None:
    catalogue = read_catalogue(CATALOGUE.read_text(encoding="utf-8"))
    assert "run.started" in catalogue and "run.failed" in catalogue
    for event, entry in catalogue.items():
        assert EVENT_NAME.match(event), f"{event}: names are dotted lowercase (noun.past_tense)"
        assert entry.level in {"debug", "info", "warning", "error"}, f"{event}: unknown level {entry.level}"
        assert "run_id" not in entry.fields, f"{event}: run_id is bound per run, not listed"


def test_every_logging_call_can_be_checked() -> None:
    _, unreadable = all_emissions()
    assert unreadable == []


def test_every_emitted_event_is_catalogued_with_its_level_and_exact_fields() -> None:
    catalogue = read_catalogue(CATALOGUE.read_text(encoding="utf-8"))
    emissions, _ = all_emissions()
    assert emissions, "no events found: the scanner is broken"
    problems = []
    for emission in emissions:
        entry = catalogue.get(emission.event)
        if entry is None:
            problems.append(f"{emission.where}: {emission.event} is not in docs/events.md")
            continue
        if emission.level != entry.level:
            problems.append(
                f"{emission.where}: {emission.event} is {emission.level}, catalogued {entry.level}"
            )
        if emission.fields != entry.fields:
            extra = sorted(emission.fields - entry.fields)
            missing = sorted(entry.fields - emission.fields)
            problems.append(
                f"{emission.where}: {emission.event} fields differ: extra {extra}, missing {missing}"
            )
    assert problems == []


def test_every_catalogued_event_is_emitted_somewhere() -> None:
    catalogue = read_catalogue(CATALOGUE.read_text(encoding="utf-8"))
    emitted = {emission.event for emission in all_emissions()[0]}
    assert sorted(set(catalogue) - emitted) == []


# --- the checker itself must catch what it claims to catch ----------------------------------------


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("log.info(name, a=1)\n", "one literal string"),
        ('log.info("x.done", **fields)\n', "**fields"),
        ('log.info("x." + "done")\n', "one literal string"),
    ],
)
def test_the_scanner_refuses_calls_it_cannot_read(source: str, problem: str) -> None:
    _, unreadable = find_emissions(source, "probe.py")
    assert len(unreadable) == 1 and problem in unreadable[0]


def test_the_scanner_reads_literal_calls_through_any_logger_form() -> None:
    source = 'log.warning("task.failed", task_id=1)\nstructlog.get_logger().debug("blob.uploaded", blob=2)\n'
    emissions, unreadable = find_emissions(source, "probe.py")
    assert unreadable == []
    assert [(e.event, e.level, e.fields) for e in emissions] == [
        ("task.failed", "warning", frozenset({"task_id"})),
        ("blob.uploaded", "debug", frozenset({"blob"})),
    ]


def test_the_catalogue_reader_reads_fields_and_levels() -> None:
    text = "| event | level | fields | meaning |\n|---|---|---|---|\n| `a.done` | info | `x`, `y_s` | m |\n"
    assert read_catalogue(text) == {"a.done": Entry("info", frozenset({"x", "y_s"}))}
