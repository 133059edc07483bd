"""SharedKey signature verification, matching what azure-batch 15.x signs (pure functions)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs

# The standard headers in the order the SDK puts their values into the string to sign.
SIGNED_HEADERS = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)


@dataclass(frozen=True)
class AuthResult:
    """Whether a request's Authorization header proves knowledge of the account key, and why not."""

    ok: bool
    reason: str = ""


def decode_account_key(account_key: str) -> bytes:
    """The HMAC key; raises ValueError naming the fix when the key is not base64."""
    try:
        return base64.b64decode(account_key, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(
            "the account key must be base64 (for example 64 random bytes, base64-encoded)"
        ) from exc


def string_to_sign(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Iterable[tuple[str, str]],
    account_name: str,
    lowercase_query_names: bool = False,
) -> str:
    """The canonical string the client signed.

    `raw_path` and `raw_query` are as sent on the wire (still percent-encoded): the SDK signs the
    encoded path and the decoded query values, so decoding must happen here, once.
    `lowercase_query_names` gives the documented REST canonicalization; the Python SDK does not lowercase.
    """
    header_list = list(headers)
    values = {name.lower(): value for name, value in header_list if value}
    if method not in ("GET", "HEAD") and "content-length" not in values:
        values["content-length"] = "0"
    text = method + "\n" + "\n".join(values.get(name, "") for name in SIGNED_HEADERS) + "\n"
    ocp_headers = sorted(
        (name.lower(), value) for name, value in header_list if "ocp-" in name.lower() and value
    )
    for name, value in ocp_headers:
        text += f"{name}:{value}\n"
    text += f"/{account_name}{raw_path}"
    query = parse_qs(raw_query)
    if lowercase_query_names:
        query = {name.lower(): query_values for name, query_values in query.items()}
    for name in sorted(query):
        if query[name][0]:
            text += f"\n{name}:{query[name][0]}"
    return text


def sign(key: bytes, text: str) -> str:
    return base64.b64encode(hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()).decode("ascii")


def verify_shared_key(
    authorization: str | None,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Iterable[tuple[str, str]],
    account_name: str,
    key: bytes,
) -> AuthResult:
    """Check an `Authorization: SharedKey account:signature` header against the expected signature."""
    if not authorization:
        return AuthResult(False, "the request has no Authorization header")
    scheme, _, credentials = authorization.partition(" ")
    if scheme != "SharedKey":
        return AuthResult(False, "only SharedKey authentication is emulated (use AzureNamedKeyCredential)")
    claimed_account, separator, signature = credentials.partition(":")
    if not separator or not signature:
        return AuthResult(
            False, "the SharedKey Authorization header must be 'SharedKey <account>:<signature>'"
        )
    if claimed_account != account_name:
        return AuthResult(
            False, f"the account {claimed_account!r} is not served here (this is {account_name!r})"
        )
    header_list = list(headers)
    for lowercase_names in (False, True):
        expected = sign(
            key, string_to_sign(method, raw_path, raw_query, header_list, account_name, lowercase_names)
        )
        if hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "replace")):
            return AuthResult(True)
    return AuthResult(False, "the signature does not match: check the account key")
