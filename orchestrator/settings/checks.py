"""Checks across settings: each problem a ConfigError naming the key, its origin and the fix."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import re
from urllib.parse import urlsplit

from orchestrator import naming
from orchestrator.errors import ConfigError
from orchestrator.settings.model import (
    DEFAULT_LISTEN,
    SECTIONS,
    TOKENIZERS,
    Settings,
    env_var_name,
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
        "unit_target_bytes",
        "submit_chunk_tasks",
        "split_bytes",
        "list_page_blobs",
    ):
        _positive(settings, "run", key, getattr(run, key))
    _positive(settings, "run", "task_max_retries", run.task_max_retries, allow_zero=True)
    _positive(settings, "run", "sas_margin_s", run.sas_margin_s, allow_zero=True)
    _positive(settings, "run", "task_retention_s", run.task_retention_s, allow_zero=True)
    _positive(settings, "run", "pack_max_bytes", run.pack_max_bytes, allow_zero=True)
    if run.submit_chunk_tasks > 100:
        raise ConfigError(
            f"{_origin(settings, 'run', 'submit_chunk_tasks')}: at most 100 (a Batch limit per request)."
        )
    if run.list_page_blobs > 5000:
        raise ConfigError(
            f"{_origin(settings, 'run', 'list_page_blobs')}: at most 5000 (a Blob Storage limit per page)."
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
    for key in ("min_age_s", "job_retention_s", "reconcile_grace_s", "malloc_arena_max"):
        _positive(settings, "daemon", key, getattr(daemon, key), allow_zero=True)
    host, _, port = daemon.listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"{_origin(settings, 'daemon', 'listen')}: {daemon.listen!r} is not HOST:PORT "
            f"(e.g. {DEFAULT_LISTEN}; port 0 picks a free port)."
        )
    if daemon.autoscale_formula is not None and not daemon.autoscale_formula.strip():
        raise ConfigError(f"{_origin(settings, 'daemon', 'autoscale_formula')}: must not be empty when set.")
