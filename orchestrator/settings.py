"""Settings: a TOML file plus `TOPN_<SECTION>_<KEY>` environment overrides, validated into frozen dataclasses.

Every problem is reported as a ConfigError that names the key, where its value came from (the file
or the environment variable) and what to do. Secrets (account keys) come from the environment; a
config file may only hold the documented, public keys of the local emulators.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from orchestrator import naming
from orchestrator.azure.retry import RetryPolicy
from orchestrator.errors import ConfigError
from orchestrator.local.processes import AZURITE_ACCOUNT_KEY, EMULATOR_ACCOUNT_KEY

ENV_PREFIX = "TOPN_"
# How long shielded clean-up (deletions, closing clients and services) may take before topn moves on.
CLEANUP_TIMEOUT_S = 60.0

# Keys that are secrets: never printed, only accepted from the environment (or a public local default).
SECRET_KEYS = frozenset({("batch", "account_key"), ("storage", "account_key")})
PUBLIC_LOCAL_KEYS = frozenset({EMULATOR_ACCOUNT_KEY, AZURITE_ACCOUNT_KEY})

_MASK = "'***'"


@dataclass(frozen=True)
class BatchSettings:
    """Where the Batch account is and how to authenticate to it."""

    endpoint: str  # "http://127.0.0.1:0" in local mode means "start the emulator"
    account_name: str
    auth: Literal["shared_key", "entra_id"]
    account_key: str | None = field(default=None, repr=False)  # secret: TOPN_BATCH_ACCOUNT_KEY

    def __repr__(self) -> str:
        key = _MASK if self.account_key else "None"
        return (
            f"BatchSettings(endpoint={self.endpoint!r}, account_name={self.account_name!r}, "
            f"auth={self.auth!r}, account_key={key})"
        )


@dataclass(frozen=True)
class StorageSettings:
    """Where the Storage account is and how to authenticate to it."""

    blob_endpoint: str  # http://127.0.0.1:PORT/devstoreaccount1 or https://acct.blob.core.windows.net
    account_name: str
    auth: Literal["shared_key", "entra_id"]
    account_key: str | None = field(default=None, repr=False)  # secret: TOPN_STORAGE_ACCOUNT_KEY
    container_prefix: str = "topn"

    def __repr__(self) -> str:
        key = _MASK if self.account_key else "None"
        return (
            f"StorageSettings(blob_endpoint={self.blob_endpoint!r}, account_name={self.account_name!r}, "
            f"auth={self.auth!r}, account_key={key}, container_prefix={self.container_prefix!r})"
        )


@dataclass(frozen=True)
class PoolSettings:
    """The Batch pool the run's tasks go to (created if absent, reused otherwise)."""

    id: str = "topn-pool"
    vm_size: str = "standard_d2s_v3"
    dedicated_nodes: int = 1
    low_priority_nodes: int = 0
    task_slots_per_node: int = 2
    image_publisher: str = "canonical"
    image_offer: str = "ubuntu-24_04-lts"
    image_sku: str = "server"
    node_agent_sku_id: str = "batch.node.ubuntu 24.04"
    # None: the mode's default (start_task_command below): locally, stage node.pyz; otherwise
    # naming.AZURE_START_TASK_COMMAND, config/azure.toml's: place the bundle, check it runs.
    start_task_command: str | None = None
    # The interpreter a task runs node.pyz with, inserted unquoted-for-expansion in `/bin/sh -c`:
    # the image's python3, which runs the self-contained bundle (the start task checks it can).
    node_python: str = "python3"
    autoscale_formula: str | None = None
    delete_after_run: bool = False
    ready_timeout_s: float = 900.0


@dataclass(frozen=True)
class RunSettings:
    """How one run behaves: what it computes, how parallel it is, what it cleans up."""

    top: int = 10
    tokenizer: Literal["words", "tutorial"] = "words"
    upload_concurrency: int = 16
    submit_concurrency: int = 4
    download_concurrency: int = 16
    poll_min_s: float = 0.5
    poll_max_s: float = 10.0
    run_timeout_s: float = 7200.0
    task_max_retries: int = 2
    task_max_wall_clock_s: float = 1800.0
    sas_margin_s: float = 3600.0
    delete_job: bool = True
    delete_run_blobs: bool = False
    max_files_per_task: int = 64  # inputs packed into one task at most (1: one task per file)
    submit_chunk_tasks: int = 100  # tasks per add-collection request (the service's maximum)


TOKENIZERS = ("words", "tutorial")


@dataclass(frozen=True)
class LocalSettings:
    """Local mode: start Azurite and the emulator when the configured endpoints are not serving."""

    enabled: bool  # true in local.toml
    state_dir: Path  # ".topn": journal, local service data and logs (relative to the working directory)


# The daemon's defaults, beside its settings so docs and code cannot disagree.
DEFAULT_BATCH_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_LISTEN = "127.0.0.1:9464"


@dataclass(frozen=True)
class DaemonSettings:
    """`topn daemon`: the inbox and its sibling folders, micro-batching, limits, drain, health server."""

    inbox_dir: Path | None = None  # --inbox; required by `topn daemon` (one or the other)
    done_dir: Path | None = None  # None: `done/` beside the inbox
    failed_dir: Path | None = None  # None: `failed/` beside the inbox
    outbox_dir: Path | None = None  # None: `outbox/` beside the inbox
    delete_done: bool = False  # delete finished inputs instead of moving them to done_dir
    dedupe: bool = True  # content already claimed is counted, not run again
    rescan_s: float = 60.0
    settle_s: float = 1.0
    min_age_s: float = 2.0
    batch_max_files: int = 500
    batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES
    batch_max_wait_s: float = 30.0
    max_active_runs: int = 8
    quota_backoff_max_s: float = 60.0
    job_retention_s: float = 86400.0
    reconcile_grace_s: float = 600.0
    drain_timeout_s: float = 20.0
    listen: str = DEFAULT_LISTEN
    heartbeat_s: float = 1.0
    autoscale: bool = True
    max_nodes: int = 4
    low_priority: bool = False
    autoscale_interval_s: float = 300.0
    autoscale_formula: str | None = None  # None: the default formula (docs/daemon.md)


@dataclass(frozen=True)
class Settings:
    """Everything one topn process was configured with."""

    source: Path  # the TOML file, for error messages
    batch: BatchSettings
    storage: StorageSettings
    pool: PoolSettings
    run: RunSettings
    local: LocalSettings
    retry: RetryPolicy
    daemon: DaemonSettings = field(default_factory=DaemonSettings)


SECTIONS: dict[str, type[Any]] = {
    "batch": BatchSettings,
    "storage": StorageSettings,
    "pool": PoolSettings,
    "run": RunSettings,
    "local": LocalSettings,
    "retry": RetryPolicy,
    "daemon": DaemonSettings,
}


def env_var_name(section: str, key: str) -> str:
    """The environment variable that overrides `[section] key`."""
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


class _Origin:
    """Where one value came from, phrased for an error message."""

    def __init__(self, source: Path, section: str, key: str, from_env: bool) -> None:
        self.source = source
        self.section = section
        self.key = key
        self.from_env = from_env

    def describe(self) -> str:
        if self.from_env:
            return f"{env_var_name(self.section, self.key)} (environment, overriding {self.source})"
        return f"[{self.section}] {self.key} in {self.source}"


def _field_types(cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(value: Any, annotation: Any, origin: _Origin) -> Any:
    """Turn a TOML value or an environment string into the field's type, or raise a ConfigError."""
    where = origin.describe()
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [arg for arg in args if arg is not type(None)]
        if value is None or (isinstance(value, str) and value.strip() == "" and origin.from_env):
            return None
        return _coerce(value, inner[0], origin)
    if typing.get_origin(annotation) is Literal:
        if value not in args:
            choices = ", ".join(repr(choice) for choice in args)
            raise ConfigError(f"{where}: {value!r} is not one of {choices}.")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and origin.from_env and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{where}: expected true or false, got {value!r}.")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and origin.from_env:
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a whole number, got {value!r}.")
    if annotation is float:
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and origin.from_env:
            with contextlib.suppress(ValueError):
                number = float(value.strip())
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {value!r}.")
        # TOML and float() both accept nan and inf; no duration or fraction can be either.
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}.")
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}.")
    if annotation is Path:
        if isinstance(value, str) and value:
            return Path(value)
        raise ConfigError(f"{where}: expected a path, got {value!r}.")
    raise TypeError(f"no coercion for {annotation!r}")  # a programming error, not a user error


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM, as Windows editors write, is not TOML
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist. Pass --config with an existing file "
            "(config/local.toml for local mode, a copy of config/azure.toml for Azure)."
        ) from None
    except UnicodeDecodeError as exc:
        # TOML is UTF-8 by definition; an editor's legacy encoding is the usual cause.
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}). "
            "Save it as UTF-8."
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"config file {path} cannot be read: {exc.strerror}. Pass --config with a readable file."
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid TOML: {exc}. Fix the syntax at that line "
            "(config/local.toml shows the expected layout)."
        ) from None


def load_settings(path: Path, environ: Mapping[str, str]) -> Settings:
    """Read `path`, apply `TOPN_<SECTION>_<KEY>` overrides from `environ`, validate, and return Settings."""
    document = _read_toml(path)
    for section in document:
        if section not in SECTIONS:
            known = ", ".join(f"[{name}]" for name in SECTIONS)
            raise ConfigError(f"{path}: unknown section [{section}]. Known sections: {known}.")
    _check_override_sections(environ)
    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        table = document.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table.")
        built[section] = _build_section(path, section, cls, table, environ)
    settings = Settings(source=path, **built)
    _validate(settings)
    return settings


# TOPN_ variables that are not settings: what a compute node reads (node/cli.py), which a user testing
# the node locally may well have exported in the same shell.
NODE_VARIABLES = frozenset({"TOPN_BLOB_ENDPOINT", "TOPN_OUTPUT_SAS_URL"})
# TOPN_ variables inside a section's prefix that are secrets read where they are used, not settings.
SECRET_VARIABLES = frozenset({"TOPN_DAEMON_TOKEN"})


def _check_override_sections(environ: Mapping[str, str]) -> None:
    """Refuse a TOPN_ variable naming no section (TOPN_POOLS_ID): a typo that would do nothing."""
    prefixes = tuple(f"{ENV_PREFIX}{section.upper()}_" for section in SECTIONS)
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and not name.startswith(prefixes) and name not in NODE_VARIABLES:
            known = ", ".join(f"{ENV_PREFIX}{section.upper()}_" for section in SECTIONS)
            raise ConfigError(
                f"{name} (environment): names no settings section. Overrides are TOPN_<SECTION>_<KEY> "
                f"with a section of {known} (e.g. TOPN_POOL_ID); fix or unset the variable."
            )


def _build_section(
    path: Path, section: str, cls: type[Any], table: Mapping[str, Any], environ: Mapping[str, str]
) -> Any:
    fields = _field_types(cls)
    for key, value in table.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"[{section}] {key} in {path}: unknown key. Keys of [{section}]: {known}.")
        if (section, key) in SECRET_KEYS and value not in PUBLIC_LOCAL_KEYS:
            raise ConfigError(
                f"[{section}] {key} in {path}: account keys must not be written in a config file. "
                f"Remove it and set {env_var_name(section, key)} in the environment "
                '(or use auth = "entra_id").'
            )
    # An override for a key the section does not have is a typo that would silently do nothing.
    section_prefix = f"{ENV_PREFIX}{section.upper()}_"
    for name in environ:
        if name in SECRET_VARIABLES:
            continue
        if name.startswith(section_prefix) and name[len(section_prefix) :].lower() not in fields:
            raise ConfigError(
                f"{name} (environment): [{section}] has no key {name[len(section_prefix) :].lower()!r}. "
                f"Keys of [{section}]: {', '.join(sorted(fields))}."
            )
    values: dict[str, Any] = {}
    for key, annotation in fields.items():
        env_name = env_var_name(section, key)
        if env_name in environ:
            values[key] = _coerce(environ[env_name], annotation, _Origin(path, section, key, from_env=True))
        elif key in table:
            values[key] = _coerce(table[key], annotation, _Origin(path, section, key, from_env=False))
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for key in required:
        if key not in values:
            raise ConfigError(
                f"[{section}] {key} is missing in {path}. Add it there or set {env_var_name(section, key)}."
            )
    if cls is RetryPolicy:
        _check_retry_values(path, values)
    try:
        return cls(**values)
    except ValueError as exc:  # RetryPolicy checks its own invariants
        raise ConfigError(f"[{section}] in {path}: {exc}.") from None


# The smallest value each [retry] key accepts, and whether it may equal it (RetryPolicy's rules,
# checked here first so the message can name the key and its variable).
_RETRY_MINIMA = {
    "max_attempts": (1, True),
    "base_delay_s": (0, True),
    "max_delay_s": (0, True),
    "deadline_s": (0, False),
    "jitter_fraction": (0, True),
}


def _check_retry_values(path: Path, values: Mapping[str, Any]) -> None:
    for key, (minimum, inclusive) in _RETRY_MINIMA.items():
        value = values.get(key)
        if value is None or value > minimum or (inclusive and value == minimum):
            continue
        bound = f"{minimum} or more" if inclusive else f"more than {minimum}"
        raise ConfigError(
            f"[retry] {key} (in {path} or {env_var_name('retry', key)}): must be {bound}, got {value}."
        )
    jitter = values.get("jitter_fraction")
    if jitter is not None and jitter > 1:
        raise ConfigError(
            f"[retry] jitter_fraction (in {path} or {env_var_name('retry', 'jitter_fraction')}): "
            f"must be between 0 and 1, got {jitter}."
        )


def _origin(settings: Settings, section: str, key: str) -> str:
    return f"[{section}] {key} (in {settings.source} or {env_var_name(section, key)})"


MAX_SECONDS = 10 * 365 * 24 * 3600
_POOL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CONTAINER_PREFIX = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){1,34}$")


_URL_EXAMPLES = {
    "batch": "https://myaccount.westeurope.batch.azure.com",
    "storage": "https://myaccount.blob.core.windows.net (Azurite: http://127.0.0.1:10000/devstoreaccount1)",
}


def _check_url(settings: Settings, section: str, key: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{_origin(settings, section, key)}: {value!r} is not an http(s) URL, "
            f"e.g. {_URL_EXAMPLES[section]}."
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise ConfigError(f"{_origin(settings, section, key)}: {value!r} has an invalid port.") from None


def _check_account_key(settings: Settings, section: str, auth: str, key: str | None) -> None:
    name = env_var_name(section, "account_key")
    if auth == "entra_id":
        return
    if not key:
        raise ConfigError(
            f'[{section}] auth = "shared_key" needs an account key: set {name} in the environment '
            f'(config file {settings.source}), or set [{section}] auth = "entra_id".'
        )
    try:
        base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"{name}: the account key is not valid base64 (copy it again from the portal; "
            f"config file {settings.source})."
        ) from None


def _positive(settings: Settings, section: str, key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = "0 or more" if allow_zero else "more than 0"
        raise ConfigError(f"{_origin(settings, section, key)}: must be {bound}, got {value}.")


def start_task_command(settings: Settings) -> str:
    """The pool's start task: the configured one, else the mode's default.

    Local mode's nodes are this machine (the plain zipapp, topn's own Python); any other Batch
    account gets the real-Azure default, never the local one (issue 14: a config that left the key
    out used to run the node on a bare python3 and fail every task).
    """
    if settings.pool.start_task_command is not None:
        return settings.pool.start_task_command
    return naming.start_task_command_line() if settings.local.enabled else naming.AZURE_START_TASK_COMMAND


def _check_node_runtime(settings: Settings) -> None:
    """Outside local mode, refuse a start task that never proves the tasks' interpreter runs the bundle.

    The nodes run the self-contained bundle with [pool] node_python; only `--bundle-check`, run by
    the start task with that interpreter, makes a node that cannot run it fail at once (its stderr
    says why) instead of taking tasks that all fail with ModuleNotFoundError or a syntax error.
    """
    command = start_task_command(settings)
    python = settings.pool.node_python.strip()
    if naming.BUNDLE_CHECK_FLAG not in command:
        raise ConfigError(
            f"{_origin(settings, 'pool', 'start_task_command')}: with local mode off the nodes run the "
            f"self-contained node bundle, and this start task never checks it ({python} "
            f'"{naming.NODE_SCRIPT_PATH}" {naming.BUNDLE_CHECK_FLAG}), so a node that cannot run it '
            "would fail every task. Remove the key to use the default (config/azure.toml's), or add "
            "that check to your start task."
        )
    if python not in command:
        raise ConfigError(
            f"{_origin(settings, 'pool', 'node_python')}: the tasks would run the node bundle with "
            f"{python!r}, but the start task checks it with another interpreter, so the node may lack "
            "what the tasks need. Set node_python to the interpreter the start task runs "
            f"{naming.BUNDLE_CHECK_FLAG} with (python3 by default), or remove the key."
        )


def check_settings(settings: Settings) -> None:
    """Raise ConfigError for settings assembled outside load_settings (a resumed run's) that break a rule."""
    _validate(settings)
    if settings.run.tokenizer not in TOKENIZERS:
        raise ConfigError(
            f"[run] tokenizer {settings.run.tokenizer!r}: must be one of {', '.join(TOKENIZERS)}."
        )


def _validate(settings: Settings) -> None:
    """Cross-field and range checks; each message names the key and the file."""
    batch, storage, pool, run = settings.batch, settings.storage, settings.pool, settings.run
    _check_url(settings, "batch", "endpoint", batch.endpoint)
    _check_url(settings, "storage", "blob_endpoint", storage.blob_endpoint)
    for section, value in (("batch", batch.account_name), ("storage", storage.account_name)):
        if not value.strip():
            raise ConfigError(f"{_origin(settings, section, 'account_name')}: must not be empty.")
    for section, auth, url, key in (
        ("batch", batch.auth, batch.endpoint, "endpoint"),
        ("storage", storage.auth, storage.blob_endpoint, "blob_endpoint"),
    ):
        if auth == "entra_id" and urlsplit(url).scheme != "https":
            # azure-core refuses to send a bearer token over plain http; say so before anything starts.
            raise ConfigError(
                f'{_origin(settings, section, key)}: auth = "entra_id" needs an https endpoint, got {url!r}. '
                'Use auth = "shared_key" with the local emulators.'
            )
    _check_account_key(settings, "batch", batch.auth, batch.account_key)
    _check_account_key(settings, "storage", storage.auth, storage.account_key)
    if not _CONTAINER_PREFIX.match(storage.container_prefix):
        raise ConfigError(
            f"{_origin(settings, 'storage', 'container_prefix')}: {storage.container_prefix!r} must be 2-35 "
            "lowercase letters, digits or single hyphens (it starts container names such as <prefix>-input)."
        )
    if not _POOL_ID.match(pool.id):
        raise ConfigError(
            f"{_origin(settings, 'pool', 'id')}: {pool.id!r} must be 1-64 letters, digits, "
            "hyphens or underscores."
        )
    for key in ("dedicated_nodes", "low_priority_nodes"):
        _positive(settings, "pool", key, getattr(pool, key), allow_zero=True)
    if pool.autoscale_formula is None and pool.dedicated_nodes + pool.low_priority_nodes == 0:
        raise ConfigError(
            f"[pool] dedicated_nodes and low_priority_nodes in {settings.source}: both are 0, "
            "so no task could run. "
            "Set at least one of them above 0, or set [pool] autoscale_formula."
        )
    if pool.autoscale_formula is not None and not pool.autoscale_formula.strip():
        raise ConfigError(f"{_origin(settings, 'pool', 'autoscale_formula')}: must not be empty when set.")
    if pool.start_task_command is not None and not pool.start_task_command.strip():
        raise ConfigError(f"{_origin(settings, 'pool', 'start_task_command')}: must not be empty when set.")
    _positive(settings, "pool", "task_slots_per_node", pool.task_slots_per_node)
    if pool.task_slots_per_node > 256:
        raise ConfigError(f"{_origin(settings, 'pool', 'task_slots_per_node')}: at most 256 (a Batch limit).")
    _positive(settings, "pool", "ready_timeout_s", pool.ready_timeout_s)
    for key in ("vm_size", "image_publisher", "image_offer", "image_sku", "node_agent_sku_id", "node_python"):
        if not str(getattr(pool, key)).strip():
            raise ConfigError(f"{_origin(settings, 'pool', key)}: must not be empty.")
    for key in (
        "top",
        "upload_concurrency",
        "submit_concurrency",
        "download_concurrency",
        "poll_min_s",
        "poll_max_s",
        "run_timeout_s",
        "task_max_wall_clock_s",
        "max_files_per_task",
        "submit_chunk_tasks",
    ):
        _positive(settings, "run", key, getattr(run, key))
    _positive(settings, "run", "task_max_retries", run.task_max_retries, allow_zero=True)
    _positive(settings, "run", "sas_margin_s", run.sas_margin_s, allow_zero=True)
    if run.submit_chunk_tasks > 100:
        raise ConfigError(
            f"{_origin(settings, 'run', 'submit_chunk_tasks')}: at most 100 (a Batch limit per request)."
        )
    if run.poll_min_s > run.poll_max_s:
        raise ConfigError(
            f"[run] poll_min_s and poll_max_s in {settings.source}: poll_min_s ({run.poll_min_s}) "
            f"is larger than poll_max_s ({run.poll_max_s}). Make poll_min_s at most poll_max_s."
        )
    # Durations become deadlines and SAS expiries (datetime arithmetic): beyond this they overflow.
    for section in SECTIONS:
        for item in dataclasses.fields(getattr(settings, section)):
            value = getattr(getattr(settings, section), item.name)
            if not item.name.endswith("_s") or not isinstance(value, float):
                continue
            if not (math.isfinite(value) and value <= MAX_SECONDS):
                raise ConfigError(
                    f"{_origin(settings, section, item.name)}: a finite number of seconds, at most "
                    f"{MAX_SECONDS} s (10 years), got {value}."
                )
    if not settings.local.enabled:
        _check_node_runtime(settings)
    if not str(settings.local.state_dir).strip():
        raise ConfigError(f"{_origin(settings, 'local', 'state_dir')}: must not be empty.")
    _validate_daemon(settings)


def _validate_daemon(settings: Settings) -> None:
    daemon = settings.daemon
    for key in (
        "rescan_s",
        "settle_s",
        "batch_max_files",
        "batch_max_bytes",
        "batch_max_wait_s",
        "max_active_runs",
        "quota_backoff_max_s",
        "drain_timeout_s",
        "heartbeat_s",
        "max_nodes",
        "autoscale_interval_s",
    ):
        _positive(settings, "daemon", key, getattr(daemon, key))
    for key in ("min_age_s", "job_retention_s", "reconcile_grace_s"):
        _positive(settings, "daemon", key, getattr(daemon, key), allow_zero=True)
    host, _, port = daemon.listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"{_origin(settings, 'daemon', 'listen')}: {daemon.listen!r} is not HOST:PORT "
            f"(e.g. {DEFAULT_LISTEN}; port 0 picks a free port)."
        )
    if daemon.autoscale_formula is not None and not daemon.autoscale_formula.strip():
        raise ConfigError(f"{_origin(settings, 'daemon', 'autoscale_formula')}: must not be empty when set.")


def secret_values(settings: Settings) -> list[str]:
    """The secret strings this configuration holds, for redaction and leak checks."""
    return [key for key in (settings.batch.account_key, settings.storage.account_key) if key]
