"""Config loading: the shipped files load, overrides apply, and every bad value names its key and file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.errors import ConfigError
from orchestrator.local.processes import AZURITE_ACCOUNT_KEY, EMULATOR_ACCOUNT_KEY
from orchestrator.settings import check_settings, env_var_name, load_settings, secret_values

PROJECT = Path(__file__).resolve().parents[3]

MINIMAL = """
[batch]
endpoint = "https://acct.westeurope.batch.azure.com"
account_name = "acct"
auth = "shared_key"

[storage]
blob_endpoint = "https://store.blob.core.windows.net"
account_name = "store"
auth = "shared_key"

[local]
enabled = false
state_dir = ".topn"
"""

# Base64, like a real key, but made up for these tests.
BATCH_KEY = "dGVzdC1iYXRjaC1rZXktdGhhdC1pcy1ub3QtcmVhbA=="
STORAGE_KEY = "dGVzdC1zdG9yYWdlLWtleS10aGF0LWlzLW5vdC1yZWFs"
KEYS = {"TOPN_BATCH_ACCOUNT_KEY": BATCH_KEY, "TOPN_STORAGE_ACCOUNT_KEY": STORAGE_KEY}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topn.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_local_config_loads_with_nothing_in_the_environment() -> None:
    settings = load_settings(PROJECT / "config" / "local.toml", {})
    assert settings.local.enabled
    assert settings.batch.account_key == EMULATOR_ACCOUNT_KEY
    assert settings.storage.account_key == AZURITE_ACCOUNT_KEY
    assert settings.storage.blob_endpoint.endswith("/devstoreaccount1")


def test_the_azure_template_loads_once_its_secrets_are_in_the_environment() -> None:
    settings = load_settings(PROJECT / "config" / "azure.toml", KEYS)
    assert not settings.local.enabled
    assert settings.batch.endpoint.startswith("https://")
    assert settings.pool.start_task_command is not None


def test_defaults_fill_what_the_file_leaves_out(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), KEYS)
    assert settings.pool.id == "topn-pool"
    assert settings.run.top == 10
    assert settings.retry.max_attempts == 8
    assert settings.storage.container_prefix == "topn"


def test_environment_overrides_every_kind_of_value(tmp_path: Path) -> None:
    environ = {
        **KEYS,
        "TOPN_POOL_DEDICATED_NODES": "3",
        "TOPN_RUN_POLL_MAX_S": "4.5",
        "TOPN_RUN_DELETE_JOB": "no",
        "TOPN_RUN_TOKENIZER": "tutorial",
        "TOPN_POOL_AUTOSCALE_FORMULA": "$TargetDedicatedNodes = 2;",
        "TOPN_LOCAL_STATE_DIR": "/var/tmp/topn",
        "TOPN_RETRY_MAX_ATTEMPTS": "2",
    }
    settings = load_settings(write(tmp_path, MINIMAL), environ)
    assert settings.pool.dedicated_nodes == 3
    assert settings.run.poll_max_s == 4.5
    assert settings.run.delete_job is False
    assert settings.run.tokenizer == "tutorial"
    assert settings.pool.autoscale_formula == "$TargetDedicatedNodes = 2;"
    assert settings.local.state_dir == Path("/var/tmp/topn")
    assert settings.retry.max_attempts == 2


def test_an_empty_override_clears_an_optional_value(tmp_path: Path) -> None:
    text = MINIMAL + '\n[pool]\nstart_task_command = "/bin/true"\n'
    settings = load_settings(write(tmp_path, text), {**KEYS, "TOPN_POOL_START_TASK_COMMAND": ""})
    assert settings.pool.start_task_command is None


def test_secrets_are_masked_in_repr(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), KEYS)
    text = repr(settings)
    assert BATCH_KEY not in text and STORAGE_KEY not in text
    assert "account_key='***'" in text
    assert sorted(secret_values(settings)) == sorted([BATCH_KEY, STORAGE_KEY])


def test_entra_id_needs_no_key(tmp_path: Path) -> None:
    text = MINIMAL.replace('auth = "shared_key"', 'auth = "entra_id"')
    settings = load_settings(write(tmp_path, text), {})
    assert settings.batch.auth == "entra_id" and settings.batch.account_key is None


def expect_config_error(path: Path, environ: dict[str, str], *fragments: str) -> str:
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ)
    message = str(raised.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    expect_config_error(tmp_path / "nope.toml", {}, "nope.toml", "does not exist", "--config")


def test_invalid_toml_is_named(tmp_path: Path) -> None:
    expect_config_error(
        write(tmp_path, "[batch\n"), {}, "topn.toml", "not valid TOML", "line 1", "Fix the syntax"
    )


def test_a_config_file_that_is_not_utf8_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(MINIMAL.encode("utf-8") + "# café\n".encode("latin-1"))
    offset = len(MINIMAL.encode("utf-8")) + len("# caf")  # where the lone 0xe9 sits
    expect_config_error(path, {}, "latin1.toml", "not UTF-8", f"byte {offset} is 0xe9", "Save it as UTF-8")


def test_a_config_path_that_is_a_folder_is_named(tmp_path: Path) -> None:
    expect_config_error(tmp_path, {}, str(tmp_path), "cannot be read", "--config")


def test_a_missing_shared_key_names_the_environment_variable(tmp_path: Path) -> None:
    message = expect_config_error(
        write(tmp_path, MINIMAL),
        {"TOPN_STORAGE_ACCOUNT_KEY": STORAGE_KEY},
        "TOPN_BATCH_ACCOUNT_KEY",
        "topn.toml",
    )
    assert "entra_id" in message


def test_a_key_that_is_not_base64_is_refused_without_quoting_it(tmp_path: Path) -> None:
    bad = "this is not base64!!"
    message = expect_config_error(
        write(tmp_path, MINIMAL), {**KEYS, "TOPN_BATCH_ACCOUNT_KEY": bad}, "TOPN_BATCH_ACCOUNT_KEY", "base64"
    )
    assert bad not in message


def test_a_real_key_in_a_config_file_is_refused(tmp_path: Path) -> None:
    text = MINIMAL.replace('account_name = "acct"', f'account_name = "acct"\naccount_key = "{BATCH_KEY}"')
    message = expect_config_error(
        write(tmp_path, text), KEYS, "[batch] account_key", "TOPN_BATCH_ACCOUNT_KEY"
    )
    assert BATCH_KEY not in message


def test_a_missing_required_key_names_key_file_and_variable(tmp_path: Path) -> None:
    text = MINIMAL.replace('account_name = "store"\n', "")
    expect_config_error(
        write(tmp_path, text), KEYS, "[storage] account_name", "topn.toml", "TOPN_STORAGE_ACCOUNT_NAME"
    )


def test_unknown_keys_and_sections_are_typos(tmp_path: Path) -> None:
    expect_config_error(
        write(tmp_path, MINIMAL + "\n[pool]\ndedicated_node = 2\n"), KEYS, "dedicated_node", "unknown"
    )
    expect_config_error(write(tmp_path, MINIMAL + "\n[pools]\n"), KEYS, "[pools]", "unknown section")
    expect_config_error(
        write(tmp_path, MINIMAL), {**KEYS, "TOPN_POOL_DEDICATED_NODE": "2"}, "TOPN_POOL_DEDICATED_NODE"
    )


@pytest.mark.parametrize(
    ("section", "key", "toml_value", "fragment"),
    [
        ("run", "top", "0", "[run] top"),
        ("run", "top", '"ten"', "whole number"),
        ("run", "tokenizer", '"chars"', "'words'"),
        ("run", "upload_concurrency", "-1", "more than 0"),
        ("pool", "id", '"bad id!"', "[pool] id"),
        ("pool", "task_slots_per_node", "0", "task_slots_per_node"),
        ("pool", "delete_after_run", '"maybe"', "true or false"),
        ("storage", "container_prefix", '"Topn"', "container_prefix"),
        ("run", "poll_min_s", "50.0", "poll_min_s"),
        ("retry", "jitter_fraction", "2.0", "[retry]"),
        ("run", "run_timeout_s", "nan", "expected a finite number"),
        ("run", "run_timeout_s", "inf", "expected a finite number"),
        ("retry", "deadline_s", "-inf", "expected a finite number"),
        ("run", "sas_margin_s", "1e12", "at most 315360000 s (10 years)"),
        ("pool", "ready_timeout_s", "1e300", "at most 315360000 s (10 years)"),
    ],
)
def test_bad_values_name_the_key_and_the_file(
    tmp_path: Path, section: str, key: str, toml_value: str, fragment: str
) -> None:
    text = MINIMAL + f"\n[{section}]\n{key} = {toml_value}\n"
    if section == "storage":
        text = MINIMAL.replace(
            'auth = "shared_key"\n\n[local]', f'auth = "shared_key"\n{key} = {toml_value}\n\n[local]'
        )
    expect_config_error(write(tmp_path, text), KEYS, fragment, "topn.toml")


def test_a_bad_override_names_the_variable(tmp_path: Path) -> None:
    expect_config_error(
        write(tmp_path, MINIMAL), {**KEYS, "TOPN_RUN_TOP": "many"}, "TOPN_RUN_TOP", "whole number"
    )


@pytest.mark.parametrize(
    ("variable", "value"), [("TOPN_RUN_RUN_TIMEOUT_S", "inf"), ("TOPN_RUN_POLL_MAX_S", "NaN")]
)
def test_a_non_finite_override_is_refused_naming_the_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    expect_config_error(write(tmp_path, MINIMAL), {**KEYS, variable: value}, variable, "finite number")


def test_poll_bounds_the_wrong_way_round_say_how_to_fix_them(tmp_path: Path) -> None:
    text = MINIMAL + "\n[run]\npoll_min_s = 5.0\npoll_max_s = 1.0\n"
    expect_config_error(write(tmp_path, text), KEYS, "poll_min_s (5.0) is larger", "at most poll_max_s")


def test_no_nodes_and_no_autoscale_is_refused(tmp_path: Path) -> None:
    text = MINIMAL + "\n[pool]\ndedicated_nodes = 0\nlow_priority_nodes = 0\n"
    expect_config_error(write(tmp_path, text), KEYS, "dedicated_nodes", "autoscale_formula")


def test_a_bad_endpoint_is_named_with_an_example_of_its_own_service(tmp_path: Path) -> None:
    expect_config_error(
        write(tmp_path, MINIMAL),
        {**KEYS, "TOPN_BATCH_ENDPOINT": "acct.batch.azure.com"},
        "TOPN_BATCH_ENDPOINT",
        "e.g. https://myaccount.westeurope.batch.azure.com",
    )
    message = expect_config_error(
        write(tmp_path, MINIMAL),
        {**KEYS, "TOPN_STORAGE_BLOB_ENDPOINT": "/devstoreaccount1"},
        "TOPN_STORAGE_BLOB_ENDPOINT",
        "e.g. https://myaccount.blob.core.windows.net",
    )
    assert "batch.azure.com" not in message  # a Batch URL is no example of a blob endpoint


@given(value=st.integers(1, 10_000))
def test_any_positive_node_count_round_trips_through_the_environment(value: int) -> None:
    settings = load_settings(PROJECT / "config" / "local.toml", {"TOPN_POOL_LOW_PRIORITY_NODES": str(value)})
    assert settings.pool.low_priority_nodes == value


def test_env_var_names() -> None:
    assert env_var_name("pool", "dedicated_nodes") == "TOPN_POOL_DEDICATED_NODES"


def test_entra_id_over_plain_http_is_refused_up_front(tmp_path: Path) -> None:
    text = MINIMAL.replace('auth = "shared_key"', 'auth = "entra_id"')
    environ = {"TOPN_STORAGE_BLOB_ENDPOINT": "http://127.0.0.1:10000/devstoreaccount1"}
    expect_config_error(write(tmp_path, text), environ, "TOPN_STORAGE_BLOB_ENDPOINT", "https")


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), 1e18])
def test_settings_built_outside_the_file_are_held_to_the_same_duration_rule(seconds: float) -> None:
    # A resumed run's settings come from its journal snapshot (JSON allows NaN), not through _coerce.
    settings = load_settings(PROJECT / "config" / "local.toml", {})
    damaged = dataclasses.replace(
        settings, run=dataclasses.replace(settings.run, task_max_wall_clock_s=seconds)
    )
    with pytest.raises(ConfigError, match=r"\[run\] task_max_wall_clock_s .*a finite number of seconds"):
        check_settings(damaged)


@pytest.mark.parametrize("variable", ["TOPN_POOLS_ID", "TOPN_RUNTOP", "TOPN_RUN", "TOPN_"])
def test_an_override_naming_no_section_is_a_typo_not_ignored(tmp_path: Path, variable: str) -> None:
    message = expect_config_error(write(tmp_path, MINIMAL), {**KEYS, variable: "3"}, variable, "TOPN_POOL_ID")
    assert "names no settings section" in message


def test_the_nodes_own_variables_are_not_taken_for_settings(tmp_path: Path) -> None:
    node_environment = {"TOPN_BLOB_ENDPOINT": "http://127.0.0.1:1/a", "TOPN_OUTPUT_SAS_URL": "http://x/c"}
    settings = load_settings(write(tmp_path, MINIMAL), {**KEYS, **node_environment})
    assert settings.run.top == 10


def test_a_config_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode("utf-8"))
    settings = load_settings(path, KEYS)
    assert settings.batch.endpoint == "https://acct.westeurope.batch.azure.com"  # MINIMAL's first key


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("max_attempts", "0", "must be 1 or more, got 0"),
        ("base_delay_s", "-1.0", "must be 0 or more, got -1.0"),
        ("max_delay_s", "-0.5", "must be 0 or more, got -0.5"),
        ("deadline_s", "0", "must be more than 0, got 0.0"),
        ("jitter_fraction", "1.5", "must be between 0 and 1, got 1.5"),
    ],
)
def test_a_bad_retry_value_names_its_key_and_variable(
    tmp_path: Path, key: str, value: str, rule: str
) -> None:
    variable = f"TOPN_RETRY_{key.upper()}"
    expect_config_error(
        write(tmp_path, MINIMAL + f"\n[retry]\n{key} = {value}\n"), KEYS, f"[retry] {key}", rule
    )
    expect_config_error(write(tmp_path, MINIMAL), {**KEYS, variable: value}, f"[retry] {key}", variable, rule)
