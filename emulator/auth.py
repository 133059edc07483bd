"""SharedKey signature verification, matching what each Microsoft Batch client signs (pure functions)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Iterable
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


@dataclass(frozen=True)
class Canonicalization:
    """How one family of Microsoft clients builds the parts of the string to sign where families differ."""

    clients: str
    # The Content-Length value signed when the request carries no Content-Length header, by method.
    length_when_absent: Callable[[str], str]
    lowercase_query_names: bool = False
    # Whether a query parameter with an empty value is still signed as "name:".
    sign_blank_query_values: bool = False
    # Whether an encoded "/" or "\\" in the path (`%2F`, `%5C`, as in node file paths) is signed as "/".
    path_separators_decoded: bool = False


def _python_length_when_absent(method: str) -> str:
    # azure-batch 15.x signs "0" for any bodiless method but GET/HEAD; its transports then send
    # `Content-Length: 0`, as requests does for the track-1 SDKs (1.x-14.x), which sign the header sent.
    return "" if method in ("GET", "HEAD") else "0"


def _javascript_length_when_absent(method: str) -> str:
    # @azure/batch (ms-rest-js) signs "0" only for a bodiless POST (node-fetch sends `Content-Length: 0`
    # there) and an empty value otherwise: its DELETE and bodiless PATCH carry no Content-Length at all.
    return "0" if method == "POST" else ""


def _documented_length_when_absent(method: str) -> str:
    # The REST documentation: a standard header not sent is signed as an empty line.
    return ""


CANONICALIZATIONS = (
    Canonicalization(
        "azure-batch for Python (1.x to 15.x, also inside az batch)", _python_length_when_absent
    ),
    Canonicalization(
        "azure-batch for Python 1.x (the seed tutorial's SDK)",
        _python_length_when_absent,
        path_separators_decoded=True,
    ),
    Canonicalization(
        "@azure/batch for JavaScript (ms-rest-js)",
        _javascript_length_when_absent,
        sign_blank_query_values=True,
    ),
    Canonicalization(
        "the Batch REST documentation (lowercase query names)",
        _documented_length_when_absent,
        lowercase_query_names=True,
    ),
)


def string_to_sign(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Iterable[tuple[str, str]],
    account_name: str,
    canonicalization: Canonicalization = CANONICALIZATIONS[0],
) -> str:
    """The canonical string a client of the given family signed.

    `raw_path` and `raw_query` are as sent on the wire (still percent-encoded): clients sign the
    encoded path and the decoded query values, so decoding must happen here, once. A Content-Length
    header that was sent is signed as sent (`0` included); only an absent one depends on the family.
    """
    header_list = list(headers)
    values = {name.lower(): value for name, value in header_list if value}
    if "content-length" not in values:
        values["content-length"] = canonicalization.length_when_absent(method)
    text = method + "\n" + "\n".join(values.get(name, "") for name in SIGNED_HEADERS) + "\n"
    ocp_headers = sorted(
        (name.lower(), value) for name, value in header_list if "ocp-" in name.lower() and value
    )
    for name, value in ocp_headers:
        text += f"{name}:{value}\n"
    path = raw_path
    if canonicalization.path_separators_decoded:
        path = path.replace("%5C", "/").replace("%2F", "/")
    text += f"/{account_name}{path}"
    query = parse_qs(raw_query, keep_blank_values=canonicalization.sign_blank_query_values)
    if canonicalization.lowercase_query_names:
        query = {name.lower(): query_values for name, query_values in query.items()}
    for name in sorted(query):
        if query[name][0] or canonicalization.sign_blank_query_values:
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
    claimed = signature.encode("utf-8", "replace")
    tried: set[str] = set()
    # Most common form first; which form matched reveals nothing about the key, so stop at a match.
    for canonicalization in CANONICALIZATIONS:
        text = string_to_sign(method, raw_path, raw_query, header_list, account_name, canonicalization)
        if text in tried:
            continue
        tried.add(text)
        if hmac.compare_digest(sign(key, text).encode("ascii"), claimed):
            return AuthResult(True)
    return AuthResult(False, "the signature does not match: check the account key")
