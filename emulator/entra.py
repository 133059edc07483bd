"""Microsoft Entra ID bearer tokens, as the emulator checks them (pure functions).

There is no Entra ID here: a test credential signs JSON Web Tokens with HS256 and a key shared with
the emulator (`--entra-token-key-file`). What the service checks and a client can get wrong is
checked as the service would: the scheme, the signature, the expiry, and the audience, which must be
the Batch resource (`https://batch.core.windows.net/`): a token minted for another scope (Storage's,
say) is refused. `--entra-denied-operations` models an identity whose role lacks a data action.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

BATCH_AUDIENCES = frozenset({"https://batch.core.windows.net/", "https://batch.core.windows.net"})


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_token(claims: Mapping[str, Any], key: bytes) -> str:
    """An HS256 JSON Web Token of `claims` (what the tests' credential hands the SDKs)."""
    header = _b64encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64encode(json.dumps(dict(claims), separators=(",", ":")).encode())
    signature = hmac.new(key, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64encode(signature)}"


@dataclass(frozen=True)
class TokenCheck:
    ok: bool
    reason: str = ""
    claims: Mapping[str, Any] = field(default_factory=dict)


def check_bearer(authorization: str, key: bytes, now: float | None = None) -> TokenCheck:
    """Whether `Authorization: Bearer <jwt>` carries a valid token for the Batch resource."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return TokenCheck(False, "not a bearer token")
    parts = token.split(".")
    if len(parts) != 3:
        return TokenCheck(False, "the token is not a JSON Web Token")
    expected = hmac.new(key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    try:
        header = json.loads(_b64decode(parts[0]))
        claims = json.loads(_b64decode(parts[1]))
        signature = _b64decode(parts[2])
    except (ValueError, binascii.Error):
        return TokenCheck(False, "the token cannot be decoded")
    if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
        return TokenCheck(False, "the token's algorithm is not the one this emulator trusts")
    if not hmac.compare_digest(signature, expected):
        return TokenCheck(False, "the token's signature is invalid")
    moment = time.time() if now is None else now
    expiry = claims.get("exp")
    if not isinstance(expiry, int | float) or expiry <= moment:
        return TokenCheck(False, "the token has expired")
    if claims.get("aud") not in BATCH_AUDIENCES:
        return TokenCheck(
            False, f"the token's audience {claims.get('aud')!r} is not https://batch.core.windows.net/"
        )
    return TokenCheck(True, claims=claims)


@dataclass(frozen=True)
class EntraSettings:
    """Bearer tokens accepted (besides SharedKey), and the operations the token's identity may not do."""

    key: bytes
    denied_operations: frozenset[str] = frozenset()
