"""Settings: a TOML file plus `TOPN_<SECTION>_<KEY>` environment overrides, validated into frozen dataclasses.

Every problem is reported as a ConfigError that names the key, where its value came from (the file
or the environment variable) and what to do. Secrets (account keys) come from the environment; a
config file may only hold the documented, public keys of the local emulators.
"""

from orchestrator.settings.checks import check_settings, start_task_command
from orchestrator.settings.loading import load_settings
from orchestrator.settings.model import (
    CLEANUP_TIMEOUT_S,
    DEFAULT_BATCH_MAX_BYTES,
    DEFAULT_LISTEN,
    ENV_PREFIX,
    PUBLIC_LOCAL_KEYS,
    SECRET_KEYS,
    SECTIONS,
    TOKENIZERS,
    BatchSettings,
    DaemonSettings,
    LocalSettings,
    PoolSettings,
    RunSettings,
    Settings,
    StorageSettings,
    env_var_name,
    secret_values,
)

__all__ = [
    "CLEANUP_TIMEOUT_S",
    "DEFAULT_BATCH_MAX_BYTES",
    "DEFAULT_LISTEN",
    "ENV_PREFIX",
    "PUBLIC_LOCAL_KEYS",
    "SECRET_KEYS",
    "SECTIONS",
    "TOKENIZERS",
    "BatchSettings",
    "DaemonSettings",
    "LocalSettings",
    "PoolSettings",
    "RunSettings",
    "Settings",
    "StorageSettings",
    "check_settings",
    "env_var_name",
    "load_settings",
    "secret_values",
    "start_task_command",
]
