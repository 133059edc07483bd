"""A unit's task reaches the node intact: its command line through `/bin/sh`, its names through the manifest.

The builders (`naming.task_command_line`, `run.units.build_manifest`) and the node's readers
(`node.unit.plan_from_args`, `node.manifest.parse_manifest`) are the two ends of one contract:
whatever an input is called (a leading `-`, `--`, `=`, quotes, `$`, backticks, Unicode), the node
must receive exactly the names it was given, as data and never as options. A real `/bin/sh` runs
the command line; a tiny script in place of the node prints the argv it got.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.manifest import parse_manifest
from node.unit import plan_from_args as unit_plan_from_args
from orchestrator import naming
from orchestrator.errors import InputError
from orchestrator.inputs import check_relpath
from orchestrator.run.units import UnitEntry, build_manifest

ARGV_PRINTER = "import json, sys; sys.stdout.write(json.dumps(sys.argv[1:]))"

# Characters a shell or an option parser could misread, plus some Unicode.
_TRICKY = "-=' \"$`\\!*?#%&;|<>(){}[]~^ é漢🙂\t"
_part = st.text(
    alphabet=st.one_of(st.sampled_from(_TRICKY), st.characters(blacklist_categories=["Cs"])),
    min_size=1,
    max_size=14,
)
_names = st.one_of(
    st.sampled_from(["-a.txt", "--", "-", "--help", "-h", "--top=3", "--json", "-x=y", "--output-name"]),
    st.lists(_part, min_size=1, max_size=3).map("/".join),
)


def _accepted_at_discovery(relpath: str) -> bool:
    """Whether `topn run` would take an input of this name (newlines and the like are refused there)."""
    if re.match(r"[A-Za-z]:", relpath):
        return False
    try:
        check_relpath(relpath, Path(relpath))
    except InputError:
        return False
    return True


def _argv_through_shell(command: str) -> list[str]:
    completed = subprocess.run(
        shlex.split(command),  # `/bin/sh -c '…'`, as the Batch node runs it
        capture_output=True,
        check=True,
        timeout=30,
    )
    argv: list[str] = json.loads(completed.stdout)  # what the node's argv would be after its script
    return argv


@pytest.fixture(scope="module")
def printer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("node") / "node.py"
    path.write_text(ARGV_PRINTER)
    return path


def _manifest_names(names: list[str]) -> list[tuple[str, str | None]]:
    """The (relpath, output name) pairs the node reads from the manifest built for these inputs."""
    data = build_manifest(
        "t000003",
        tokenizer="words",
        top=7,
        source_url=_SOURCE,
        entries=[UnitEntry(name, naming.input_blob_name("r", name), 1) for name in names],
    )
    manifest = parse_manifest(data)
    assert manifest.top == 7 and manifest.result_name == naming.unit_result_name("t000003")
    blobs = [naming.input_blob_name("r", name) for name in names]
    assert [unit_input.blob for unit_input in manifest.inputs] == blobs
    return [(unit_input.relpath, unit_input.output_name) for unit_input in manifest.inputs]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(_names.filter(_accepted_at_discovery), min_size=1, max_size=4, unique=True))
def test_the_node_receives_exactly_the_names_it_was_given(names: list[str], printer: Path) -> None:
    command = naming.task_command_line("t000003", python=sys.executable, script=str(printer))
    argv = _argv_through_shell(command)
    assert argv[0] == "unit"
    plan = unit_plan_from_args(argv[1:], environ={"TOPN_OUTPUT_SAS_URL": _SAS})
    assert plan.manifest_location == naming.unit_manifest_file("t000003")
    assert _manifest_names(names) == [(name, naming.output_name(name)) for name in names]


def test_a_name_that_looks_like_an_option_is_a_value() -> None:
    names = ["-a.txt", "--", "--json"]
    assert _manifest_names(names) == [
        ("-a.txt", "-a_OUTPUT.txt"),
        ("--", "--_OUTPUT"),
        ("--json", "--json_OUTPUT"),
    ]


_SOURCE = (
    "http://127.0.0.1:10000/devstoreaccount1/in?sv=2023-11-03&sr=c&sp=r&se=2099-01-01T00%3A00%3A00Z&sig=abc"
)
_SAS = (
    "http://127.0.0.1:10000/devstoreaccount1/out?sv=2023-11-03&sr=c&sp=cw&se=2099-01-01T00%3A00%3A00Z&sig=abc"
)
