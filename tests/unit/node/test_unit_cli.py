"""`node unit`'s command line: reached through `node.cli.main`, usage and manifest problems exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from node import cli
from node.unit import OUTPUT_URL_VARIABLE, plan_from_args

SAS_URL = "https://acct.blob.core.windows.net/results?sv=2025-01-05&sp=cw&sig=AbCdEf01secret"


@pytest.fixture(autouse=True)
def _no_node_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OUTPUT_URL_VARIABLE, raising=False)


def test_the_destination_comes_from_the_flag_or_the_environment() -> None:
    plan = plan_from_args(["--manifest", "m.json", "--concurrency", "3"], {OUTPUT_URL_VARIABLE: SAS_URL})
    assert (plan.manifest_location, plan.destination.container, plan.concurrency) == ("m.json", "results", 3)
    flagged = plan_from_args(["--manifest", "m.json", "--output-container-url", SAS_URL], {})
    assert flagged.destination.container_url == SAS_URL


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["unit", "--manifest", "m.json"], "no output destination"),
        (["unit", "--manifest", "m.json", "--output-container-url", "https://h/c"], "carries no SAS"),
        (
            ["unit", "--manifest", "missing.json", "--output-container-url", SAS_URL],
            "cannot read the manifest",
        ),
        (["unit", "--manifest", "bad.json", "--output-container-url", SAS_URL], "is not usable: 'inputs'"),
    ],
)
def test_bad_usage_or_an_unusable_manifest_exits_2_before_any_request(
    args: list[str],
    problem: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text(
        '{"format": "topn.unit", "version": 1, "unit": "u", "tokenizer": "words", "top": 3,'
        ' "result_name": "r", "sources": ["https://h/c?sig=x"], "inputs": []}',
        encoding="utf-8",
    )
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert problem in err
    assert "secret" not in err


def test_malformed_unit_flags_exit_2() -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["unit", "--manifest", "m.json", "--concurrency", "0"])
    assert raised.value.code == 2
