"""Names pass from the orchestrator's command-line builder through `/bin/sh` to the node's parser intact.

The builder (`naming.task_command_line`) and the parser (`node.cli.plan_from_args`) are the two ends
of one contract: whatever an input is called (a leading `-`, `--`, `=`, quotes, `$`, backticks,
Unicode), the node must receive exactly the names it was given, as values and never as options.
A real `/bin/sh` runs the command line; a tiny script in place of the node prints the argv it got.
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

from node.cli import plan_from_args
from orchestrator import naming
from orchestrator.errors import InputError
from orchestrator.inputs import check_relpath

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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(_names.filter(_accepted_at_discovery), min_size=1, max_size=4, unique=True))
def test_the_node_receives_exactly_the_names_it_was_given(names: list[str], printer: Path) -> None:
    files = [(naming.node_input_path(index, name), name) for index, name in enumerate(names)]
    command = naming.task_command_line(
        files, top=7, tokenizer="words", python=sys.executable, script=str(printer)
    )
    argv = _argv_through_shell(command)
    plan = plan_from_args([*argv, "--json"], environ={})
    assert [job.filepath for job in plan.jobs] == [node_input for node_input, _ in files]
    assert [job.output_name for job in plan.jobs] == [naming.output_name(name) for name in names]
    assert [job.counts_name for job in plan.jobs] == [naming.counts_name(name) for name in names]
    assert plan.top == 7


def test_a_name_that_looks_like_an_option_is_a_value(printer: Path) -> None:
    names = ["-a.txt", "--", "--json"]
    files = [(naming.node_input_path(index, name), name) for index, name in enumerate(names)]
    command = naming.task_command_line(
        files, top=3, tokenizer="words", python=sys.executable, script=str(printer)
    )
    plan = plan_from_args(_argv_through_shell(command), environ={"TOPN_OUTPUT_SAS_URL": _SAS})
    assert [job.output_name for job in plan.jobs] == ["-a_OUTPUT.txt", "--_OUTPUT", "--json_OUTPUT"]
    assert plan.destination is not None  # `--json` as a name did not switch the node to printing


_SAS = (
    "http://127.0.0.1:10000/devstoreaccount1/out?sv=2023-11-03&sr=c&sp=cw&se=2099-01-01T00%3A00%3A00Z&sig=abc"
)
