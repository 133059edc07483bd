"""The settings as frozen dataclasses, one per TOML section; secrets masked in their repr."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from orchestrator.azure.retry import RetryPolicy
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
    ca_file: Path | None = None  # None: the system's trust store

    def __repr__(self) -> str:
        key = _MASK if self.account_key else "None"
        return (
            f"BatchSettings(endpoint={self.endpoint!r}, account_name={self.account_name!r}, "
            f"auth={self.auth!r}, account_key={key}, ca_file={self.ca_file!r})"
        )


@dataclass(frozen=True)
class StorageSettings:
    """Where the Storage account is and how to authenticate to it."""

    blob_endpoint: str  # http://127.0.0.1:PORT/devstoreaccount1 or https://acct.blob.core.windows.net
    account_name: str
    auth: Literal["shared_key", "entra_id"]
    account_key: str | None = field(default=None, repr=False)  # secret: TOPN_STORAGE_ACCOUNT_KEY
    container_prefix: str = "topn"
    ca_file: Path | None = None  # None: the system's trust store

    def __repr__(self) -> str:
        key = _MASK if self.account_key else "None"
        return (
            f"StorageSettings(blob_endpoint={self.blob_endpoint!r}, account_name={self.account_name!r}, "
            f"auth={self.auth!r}, account_key={key}, container_prefix={self.container_prefix!r}, "
            f"ca_file={self.ca_file!r})"
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
    task_retention_s: float = 86400.0  # a finished task's folder on its node (retentionTime)
    sas_margin_s: float = 3600.0
    delete_job: bool = True
    delete_run_blobs: bool = False
    max_files_per_task: int = 1000  # inputs packed into one task at most (1: one task per file)
    unit_target_bytes: int = 64 * 1024 * 1024  # bytes packed into one task at most (a bigger file: alone)
    submit_chunk_tasks: int = 100  # tasks per add-collection request (the service's maximum)
    split_bytes: int = 256 * 1024 * 1024  # a bigger file is counted by several tasks over byte ranges
    list_page_blobs: int = 5000  # blob names per List Blobs request (the service's maximum)
    pack_max_bytes: int = 4 * 1024 * 1024  # a unit's local inputs up to this size go up as one blob (0: off)


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
    malloc_arena_max: int = 2  # glibc's cap on malloc arenas; 0 leaves glibc's own (docs/daemon.md)


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


def secret_values(settings: Settings) -> list[str]:
    """The secret strings this configuration holds, for redaction and leak checks."""
    return [key for key in (settings.batch.account_key, settings.storage.account_key) if key]
