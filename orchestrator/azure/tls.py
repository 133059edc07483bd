"""Which certificates topn's clients trust: `[section] ca_file`, and a refused certificate in words."""

from __future__ import annotations

import ssl
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.settings import Settings, env_var_name


def connection_verify(settings: Settings, section: str) -> dict[str, Any]:
    """The transport's `connection_verify` for `[section] ca_file`, once the file proved a CA bundle.

    Checked once, at start, because the SDK loads the file only when it sends a request, where a
    typo would surface as a TLS failure that names no setting.
    """
    ca_file = settings.batch.ca_file if section == "batch" else settings.storage.ca_file
    if ca_file is None:
        return {}
    try:
        ssl.create_default_context(cafile=str(ca_file))
    except ssl.SSLError:
        problem = "it holds no PEM certificate"
    except OSError as exc:
        problem = f"it cannot be read ({exc.strerror or type(exc).__name__})"
    else:
        return {"connection_verify": str(ca_file)}
    raise ConfigError(
        f"[{section}] ca_file {str(ca_file)!r} (in {settings.source} or {env_var_name(section, 'ca_file')}): "
        f"{problem}. Point it at the PEM certificate of the authority that signed the endpoint's "
        "certificate, or remove it to use the system's trust store."
    )


def untrusted_certificate(exc: BaseException) -> str | None:
    """Why the server's certificate was refused, if that is what failed the request, else None.

    The verification error sits under the SDK's ServiceRequestError, inside aiohttp's connector error.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = getattr(current, "certificate_error", current)
        if isinstance(found, ssl.SSLCertVerificationError):
            # verify_message is set by OpenSSL's own failure ("self-signed certificate", ...).
            return str(getattr(found, "verify_message", None) or "certificate verify failed")
        inner = getattr(current, "inner_exception", None)
        current = inner if isinstance(inner, BaseException) else (current.__cause__ or current.__context__)
    return None


def trust_fix(section: str) -> str:
    """What to do about a refused certificate."""
    return (
        f"If a TLS-inspecting proxy or a local service signs it, set [{section}] ca_file "
        f"({env_var_name(section, 'ca_file')}) to the PEM file of its certificate authority; "
        "otherwise check the endpoint's host name."
    )
