"""[daemon] settings: defaults, TOML, TOPN_DAEMON_* overrides, documented keys, refusals."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.settings import DaemonSettings, load_settings

ROOT = Path(__file__).resolve().parents[4]
LOCAL = ROOT / "config" / "local.toml"


def test_defaults_are_the_issues() -> None:
    daemon = DaemonSettings()
    assert (daemon.batch_max_files, daemon.batch_max_bytes, daemon.batch_max_wait_s) == (500, 256 << 20, 30.0)
    assert (daemon.max_active_runs, daemon.job_retention_s, daemon.drain_timeout_s) == (8, 86400.0, 20.0)
    assert (daemon.rescan_s, daemon.settle_s, daemon.listen, daemon.dedupe) == (
        60.0,
        1.0,
        "127.0.0.1:9464",
        True,
    )


def test_environment_overrides_each_key_and_the_token_is_not_a_setting(tmp_path: Path) -> None:
    settings = load_settings(
        LOCAL,
        {
            "TOPN_DAEMON_BATCH_MAX_FILES": "7",
            "TOPN_DAEMON_INBOX_DIR": str(tmp_path),
            "TOPN_DAEMON_DEDUPE": "no",
            "TOPN_DAEMON_LISTEN": "0.0.0.0:0",
            "TOPN_DAEMON_TOKEN": "x" * 20,
        },
    )
    assert settings.daemon.batch_max_files == 7
    assert settings.daemon.inbox_dir == tmp_path
    assert settings.daemon.dedupe is False
    assert settings.daemon.listen == "0.0.0.0:0"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TOPN_DAEMON_BATCH_MAX_FILES", "0", r"\[daemon\] batch_max_files .*TOPN_DAEMON_BATCH_MAX_FILES"),
        ("TOPN_DAEMON_LISTEN", "nowhere", r"not HOST:PORT"),
        ("TOPN_DAEMON_MAX_ACTIVE_RUNS", "-1", r"max_active_runs"),
        ("TOPN_DAEMON_BATCH_MAXFILES", "3", r"\[daemon\] has no key 'batch_maxfiles'"),
    ],
)
def test_bad_values_name_the_key_and_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(LOCAL, {variable: value})


def test_every_daemon_key_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    section = text.split("## `[daemon]`", 1)[1]
    documented = set(re.findall(r"^\| `([a-z_]+)`(?:, `([a-z_]+)`)?(?:, `([a-z_]+)`)?", section, flags=re.M))
    names = {name for row in documented for name in row if name}
    assert {field.name for field in dataclasses.fields(DaemonSettings)} <= names
