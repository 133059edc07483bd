"""The node's outputs (the seed's text file, the counts blob, `--json`) and its command line."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from node import cli
from node.counting import FileCounts
from node.pack import build_zipapp
from node.report import (
    counts_document,
    decode_counts_blob,
    default_output_name,
    encode_counts_blob,
    output_text,
)
from node.upload import check_container_url, redact, seed_container_url

SIGNATURE = "sig=AbCdEf0123456789%2Bsecret%3D"


@pytest.fixture(autouse=True)
def _no_node_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line tests must not see a destination from the environment they run in."""
    monkeypatch.delenv("TOPN_OUTPUT_SAS_URL", raising=False)
    monkeypatch.delenv("TOPN_BLOB_ENDPOINT", raising=False)


SAS_URL = f"https://acct.blob.core.windows.net/results?sv=2025-01-05&sp=cw&{SIGNATURE}"


def test_output_text_is_the_seed_format() -> None:
    environ = {"AZ_BATCH_NODE_ID": "tvm-1", "AZ_BATCH_TASK_ID": "t000001", "AZ_BATCH_POOL_ID": "pool"}
    text = output_text([("the", 7), ("žluťoučký", 2)], environ)
    assert text == (
        "Word\tCount\n"
        "------------------------------\n"
        "the:\t7\n"
        "žluťoučký:\t2\n"
        "------------------------------\n"
        "Node: tvm-1\n"
        "Task: t000001\n"
        "Job:  local\n"
        "Pool: pool\n"
    )


def test_counts_blob_is_gzip_json_in_first_occurrence_order_and_reproducible() -> None:
    counts = FileCounts(Counter({"zeta": 1, "alpha": 3}), invalid_bytes=2)
    blob = encode_counts_blob(counts_document("a/b.txt", "words", counts))
    assert blob == encode_counts_blob(counts_document("a/b.txt", "words", counts))
    assert json.loads(gzip.decompress(blob)) == {
        "format": "topn.counts",
        "version": 1,
        "file": "a/b.txt",
        "tokenizer": "words",
        "words": 4,
        "distinct": 2,
        "invalid_bytes": 2,
        "counts": [["zeta", 1], ["alpha", 3]],
    }
    assert decode_counts_blob(blob)["counts"] == [["zeta", 1], ["alpha", 3]]


def test_counts_blob_reader_rejects_other_versions() -> None:
    blob = gzip.compress(json.dumps({"format": "topn.counts", "version": 2}).encode())
    with pytest.raises(ValueError, match="version 2"):
        decode_counts_blob(blob)


@pytest.mark.parametrize(
    ("filepath", "expected"),
    [
        ("taskdata0.txt", "taskdata0_OUTPUT.txt"),
        ("./a/b/notes.md", "a/b/notes_OUTPUT.md"),
        ("README", "README_OUTPUT"),
        ("/mnt/batch/tasks/wd/in.txt", "in_OUTPUT.txt"),
        ("../outside.txt", "outside_OUTPUT.txt"),
        ("archive.tar.gz", "archive.tar_OUTPUT.gz"),
    ],
)
def test_default_output_name_keeps_the_relative_path(filepath: str, expected: str) -> None:
    assert default_output_name(filepath) == expected


def test_redact_removes_sas_queries_and_signatures() -> None:
    text = f"failed: {SAS_URL} and also ?{SIGNATURE}"
    cleaned = redact(text)
    assert "AbCdEf0123456789" not in cleaned
    assert "https://acct.blob.core.windows.net/results" in cleaned


def test_container_url_checks_name_the_problem_without_the_signature() -> None:
    assert check_container_url(SAS_URL).container == "results"
    assert check_container_url(SAS_URL).safe_url == "https://acct.blob.core.windows.net/results"
    for bad, problem in [
        ("ftp://host/c?sig=x", r"http\(s\) container URL"),
        ("https://acct.blob.core.windows.net/?" + SIGNATURE, "names no container"),
        ("https://acct.blob.core.windows.net/results", "carries no SAS"),
    ]:
        with pytest.raises(ValueError, match=problem) as raised:
            check_container_url(bad)
        assert "AbCdEf0123456789" not in str(raised.value)


def test_seed_flags_build_the_container_url() -> None:
    destination = seed_container_url(
        "http://127.0.0.1:10000/devstoreaccount1/", "output", "?sv=1&sp=w&sig=abc"
    )
    assert destination.container_url == "http://127.0.0.1:10000/devstoreaccount1/output?sv=1&sp=w&sig=abc"


def _plan(*args: str, environ: dict[str, str] | None = None) -> cli.Plan:
    return cli.plan_from_args(list(args), environ or {})


def test_seed_command_line_is_accepted_unchanged() -> None:
    plan = _plan(
        "--filepath",
        "taskdata0.txt",
        "--numwords",
        "3",
        "--storageaccount",
        "acct",
        "--storagecontainer",
        "output",
        "--sastoken",
        "sv=1&sp=w&sig=abc",
    )
    assert plan.top == 3
    assert plan.tokenizer == "words"
    assert plan.destination is not None
    assert plan.destination.container_url == "https://acct.blob.core.windows.net/output?sv=1&sp=w&sig=abc"
    assert plan.jobs == [
        cli.Job("taskdata0.txt", "taskdata0_OUTPUT.txt", "taskdata0_OUTPUT.txt.counts.json.gz")
    ]


def test_blob_endpoint_comes_from_the_flag_or_the_environment() -> None:
    seed = ["--filepath", "f.txt", "--storageaccount", "a", "--storagecontainer", "c", "--sastoken", "sig=s"]
    from_environment = _plan(*seed, environ={"TOPN_BLOB_ENDPOINT": "http://127.0.0.1:1/devstoreaccount1"})
    assert from_environment.destination is not None
    assert from_environment.destination.container_url == "http://127.0.0.1:1/devstoreaccount1/c?sig=s"
    from_flag = _plan(*seed, "--blob-endpoint", "http://h:2/acct", environ={"TOPN_BLOB_ENDPOINT": "http://x"})
    assert from_flag.destination is not None
    assert from_flag.destination.container_url == "http://h:2/acct/c?sig=s"


def test_orchestrator_command_line_names_each_blob() -> None:
    plan = _plan(
        "--filepath",
        "in/000001.txt",
        "--filepath",
        "in/000002.txt",
        "--top",
        "5",
        "--tokenizer",
        "tutorial",
        "--workers",
        "2",
        "--output-container-url",
        SAS_URL,
        "--output-name",
        "a/x_OUTPUT.txt",
        "--output-name",
        "b/x_OUTPUT.txt",
        "--counts-name",
        "counts/a/x.txt.counts.json.gz",
        "--counts-name",
        "counts/b/x.txt.counts.json.gz",
    )
    assert (plan.top, plan.tokenizer, plan.workers) == (5, "tutorial", 2)
    assert [job.output_name for job in plan.jobs] == ["a/x_OUTPUT.txt", "b/x_OUTPUT.txt"]
    assert [job.counts_name for job in plan.jobs] == [
        "counts/a/x.txt.counts.json.gz",
        "counts/b/x.txt.counts.json.gz",
    ]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--filepath", "f"], "no output destination"),
        (["--filepath", "f", "--output-container-url", SAS_URL, "--storageaccount", "a"], "not both"),
        (["--filepath", "f", "--storageaccount", "a"], "also needs --storagecontainer, --sastoken"),
        (["--filepath", "f", "--json", "--numwords", "3", "--top", "4"], "disagree"),
        (["--filepath", "f", "--filepath", "g", "--json", "--output-name", "x"], "one per input"),
        (
            ["--filepath", "x", "--filepath", "/b/x", "--output-container-url", SAS_URL],
            "same blob 'x_OUTPUT'",
        ),
        (["--filepath", "f", "--output-container-url", "https://h/c"], "carries no SAS"),
        (["--filepath", "f", "--json", "--output-name", "/abs"], "not a usable blob name"),
    ],
)
def test_bad_usage_exits_2_naming_the_problem(
    args: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(args) == 2
    assert problem in capsys.readouterr().err


def test_malformed_flags_exit_2() -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["--filepath", "f", "--json", "--tokenizer", "bigrams"])
    assert raised.value.code == 2


def test_json_prints_one_object_per_input_and_an_unreadable_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.txt").write_text("Pes pes PES kočka\n", encoding="utf-8")
    missing = tmp_path / "missing.txt"
    status = cli.main(
        [
            "--filepath",
            str(tmp_path / "a.txt"),
            "--filepath",
            str(missing),
            "--filepath",
            str(tmp_path),
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert status == 2
    assert json.loads(captured.out) == {
        "file": str(tmp_path / "a.txt"),
        "tokenizer": "words",
        "top": [["pes", 3], ["kočka", 1]],
        "words": 4,
        "distinct": 2,
        "invalid_bytes": 0,
    }
    assert f"cannot read input {str(missing)!r}: No such file or directory" in captured.err
    assert f"cannot read input {str(tmp_path)!r}: it is a folder" in captured.err


def test_zipapp_is_reproducible_and_runs_with_json(tmp_path: Path) -> None:
    first = build_zipapp(tmp_path / "one" / "node.pyz")
    second = build_zipapp(tmp_path / "two" / "node.pyz")
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(first) as archive:
        names = archive.namelist()
    assert "__main__.py" in names and "node/cli.py" in names and "node/counting.py" in names
    sample = tmp_path / "sample.txt"
    sample.write_text("b a b", encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, str(first), "--filepath", str(sample), "--json", "--top", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["top"] == [["b", 2]]


def test_the_output_url_can_come_from_the_environment_so_argv_never_holds_the_sas() -> None:
    plan = _plan("--filepath", "f.txt", environ={"TOPN_OUTPUT_SAS_URL": SAS_URL})
    assert plan.destination is not None
    assert plan.destination.container_url == SAS_URL


def test_a_bad_output_url_in_the_environment_names_the_variable_not_the_signature(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOPN_OUTPUT_SAS_URL", f"ftp://acct/results?{SIGNATURE}")
    assert cli.main(["--filepath", "f.txt"]) == 2
    error = capsys.readouterr().err
    assert "$TOPN_OUTPUT_SAS_URL" in error
    assert "AbCdEf0123456789" not in error


def test_an_unexpected_error_exits_1_with_a_redacted_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_run(plan: cli.Plan, environ: object) -> int:
        raise RuntimeError(f"request to {SAS_URL} went wrong")

    monkeypatch.setattr(cli, "run", broken_run)
    assert cli.main(["--filepath", str(tmp_path / "f.txt"), "--output-container-url", SAS_URL]) == 1
    error = capsys.readouterr().err
    assert "RuntimeError: request to https://acct.blob.core.windows.net/results went wrong" in error
    assert "AbCdEf0123456789" not in error
