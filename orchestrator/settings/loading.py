"""Reading a TOML file plus `TOPN_<SECTION>_<KEY>` environment overrides into Settings."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from orchestrator.azure.retry import RetryPolicy
from orchestrator.errors import ConfigError
from orchestrator.settings.checks import _validate
from orchestrator.settings.model import (
    ENV_PREFIX,
    PUBLIC_LOCAL_KEYS,
    SECRET_KEYS,
    SECTIONS,
    Settings,
    env_var_name,
)


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
