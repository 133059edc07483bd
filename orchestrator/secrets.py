"""The one place that decides what a secret looks like and removes it: events, journal and CLI text.

Two ways a secret is recognised:

* by its shape inside free text: a SAS signature (`sig=...`, also percent-encoded as `sig%3D...`),
  a connection string's `AccountKey=...`, a bearer token, a Shared Key authorization header;
* by value: the account keys of the configuration, registered once per process, found as they are
  or percent-encoded (a key travels escaped inside a URL or a form body).

And one way for structured settings: a value under a name that looks secret (`account_key`,
`sasToken`, `client_secret`) is dropped unless it is a number or a boolean.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import quote

REDACTED: Final = "REDACTED"

# Shorter strings are not registered: replacing them could mangle ordinary text and they are no key.
_MIN_SECRET_LENGTH: Final = 8

# Each pattern keeps its first group (the marker) and loses the rest (the secret).
_SECRET_SHAPES: Final = (
    # `sig=<signature>` in a SAS query string: base64, often percent-encoded; `sig%3D` when the whole
    # URL was escaped into another one.
    re.compile(r"(?i)(sig(?:=|%3D))[A-Za-z0-9%+/=_\-]+"),
    # A connection string's key runs to the next `;` (or the end of the quoted value).
    re.compile(r"(?i)(AccountKey(?:=|%3D))[^;&\s\"']+"),
    # An Entra ID access token; short words after "Bearer" are prose, not tokens.
    re.compile(r"(?i)(Bearer\s+)[A-Za-z0-9\-_.~+/]{20,}=*"),
    # `Authorization: SharedKey account:signature`: the signature is an HMAC of the key.
    re.compile(r"(?i)(SharedKey(?:Lite)?\s+[^:\s]+:)[A-Za-z0-9+/=]+"),
)

# Name parts that mark a setting as secret. Matching whole parts (and part endings such as
# "accountkey") keeps `tokenizer` while still catching `account_key`, `sasToken` or `password`.
_SECRET_WORDS: Final = ("key", "keys", "secret", "token", "sas", "password", "passwd", "credential", "sig")
_SECRET_ENDINGS: Final = ("key", "secret", "token", "password", "credential", "signature", "sas")

# Every shape above starts with one of these words: text without any (event names, file names,
# timestamps: nearly every value of every event) is checked with one search instead of four.
_SHAPE_MARKERS: Final = re.compile(r"(?i)sig|accountkey|bearer|sharedkey")

_registered: set[str] = set()
# The registered values longest first (so no shorter value half-replaces a longer one), kept sorted
# as they are registered rather than for every text redacted.
_longest_first: tuple[str, ...] = ()


def register_secrets(values: Iterable[str | None]) -> None:
    """Remember secret strings (account keys) so no text redacted here can ever show them."""
    global _longest_first
    for value in values:
        if value and len(value) >= _MIN_SECRET_LENGTH:
            _registered.add(value)
            _registered.add(quote(value, safe=""))
    _longest_first = tuple(sorted(_registered, key=len, reverse=True))


def redact_text(text: str) -> str:
    """`text` with SAS signatures, account keys, tokens and registered secrets replaced by REDACTED."""
    # Registered values first, so a shape below can never take part of a key and leave the rest.
    for secret in _longest_first:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if _SHAPE_MARKERS.search(text) is None:
        return text
    for shape in _SECRET_SHAPES:
        text = shape.sub(r"\1" + REDACTED, text)
    return text


def redact_value(value: Any) -> Any:
    """`value` with every text inside (lists, tuples, dict values, at any depth) redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list | tuple):
        return type(value)(redact_value(item) for item in value)
    if isinstance(value, dict):
        return {key: redact_value(item) for key, item in value.items()}
    return value


def is_secret_name(name: str) -> bool:
    """True for setting names that may hold a credential (`account_key`, `sasToken`, `password`)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    parts = [part for part in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if part]
    return any(part in _SECRET_WORDS or part.endswith(_SECRET_ENDINGS) for part in parts)


def strip_secrets(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of JSON data without any value that could be a secret, at any depth.

    A key whose name looks secret keeps its value only when that value is a number or a boolean
    (`sas_margin_s = 3600` is a duration, not a credential); text under such a key is dropped, and
    secrets inside any other text are redacted.
    """
    return _strip(dict(data))  # type: ignore[no-any-return]


def _strip(value: Any) -> Any:
    if isinstance(value, Mapping):
        kept: dict[str, Any] = {}
        for key, item in value.items():
            # Numbers and booleans cannot carry a credential; anything else under a secret name goes.
            if is_secret_name(str(key)) and not isinstance(item, bool | int | float):
                continue
            kept[str(key)] = _strip(item)
        return kept
    if isinstance(value, list | tuple):
        return [_strip(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
