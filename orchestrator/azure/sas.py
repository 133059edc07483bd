"""Shared access signatures for a run: read-only on its inputs, create+write on the run's output container.

Both signing modes share one code path: an account key (shared key auth), or a user delegation key
fetched with Microsoft Entra ID (then no account key exists anywhere). Expiries cover the whole run
deadline plus a margin, so no SAS can expire while a task still needs it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import quote

from azure.storage.blob import (
    BlobSasPermissions,
    ContainerSasPermissions,
    UserDelegationKey,
    generate_blob_sas,
    generate_container_sas,
)

from orchestrator.errors import ConfigError

# A SAS may be checked by a server whose clock runs a little ahead of ours.
CLOCK_SKEW = timedelta(minutes=5)
# Azure Storage refuses user delegation keys valid for longer than seven days.
MAX_DELEGATION_LIFETIME = timedelta(days=7)


class DelegationKeyProvider(Protocol):
    """The one method of azure.storage.blob.aio.BlobServiceClient a user delegation SAS needs."""

    async def get_user_delegation_key(
        self, key_start_time: datetime, key_expiry_time: datetime, **kwargs: Any
    ) -> UserDelegationKey: ...


def sas_window(now: datetime, run_timeout_s: float, margin_s: float) -> tuple[datetime, datetime]:
    """(start, expiry) for a run starting `now`: start allows for clock skew, expiry is deadline + margin."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    if run_timeout_s <= 0 or margin_s < 0:
        raise ValueError("run_timeout_s must be positive and margin_s non-negative")
    return now - CLOCK_SKEW, now + timedelta(seconds=run_timeout_s + margin_s)


def _signing_kwargs(account_key: str | None, user_delegation_key: UserDelegationKey | None) -> dict[str, Any]:
    if (account_key is None) == (user_delegation_key is None):
        raise ValueError("sign a SAS with exactly one of account_key or user_delegation_key")
    if user_delegation_key is not None:
        return {"user_delegation_key": user_delegation_key}
    return {"account_key": account_key}


def mint_blob_read_sas(
    *,
    account_name: str,
    container: str,
    blob_name: str,
    start: datetime,
    expiry: datetime,
    account_key: str | None = None,
    user_delegation_key: UserDelegationKey | None = None,
) -> str:
    """A SAS token (query string, no `?`) that can only read one blob, from `start` until `expiry`."""
    token: str = generate_blob_sas(
        account_name,
        container,
        blob_name,
        permission=BlobSasPermissions(read=True),
        start=start,
        expiry=expiry,
        **_signing_kwargs(account_key, user_delegation_key),
    )
    return token


def mint_container_write_sas(
    *,
    account_name: str,
    container: str,
    start: datetime,
    expiry: datetime,
    account_key: str | None = None,
    user_delegation_key: UserDelegationKey | None = None,
) -> str:
    """A SAS token that can only create and write blobs in one container: no read, list or delete."""
    token: str = generate_container_sas(
        account_name,
        container,
        permission=ContainerSasPermissions(create=True, write=True),
        start=start,
        expiry=expiry,
        **_signing_kwargs(account_key, user_delegation_key),
    )
    return token


def mint_container_read_sas(
    *,
    account_name: str,
    container: str,
    start: datetime,
    expiry: datetime,
    account_key: str | None = None,
    user_delegation_key: UserDelegationKey | None = None,
) -> str:
    """A SAS token that can only read blobs of one container (by name): no list, write or delete."""
    token: str = generate_container_sas(
        account_name,
        container,
        permission=ContainerSasPermissions(read=True),
        start=start,
        expiry=expiry,
        **_signing_kwargs(account_key, user_delegation_key),
    )
    return token


def container_url(account_url: str, container: str, sas: str | None = None) -> str:
    """The container's URL, with a SAS appended when given."""
    url = f"{account_url.rstrip('/')}/{container}"
    return f"{url}?{sas}" if sas else url


def blob_url(account_url: str, container: str, blob_name: str, sas: str | None = None) -> str:
    """The blob's URL with its name percent-encoded (spaces, `#`, `%`, non-ASCII), SAS appended when given."""
    url = f"{container_url(account_url, container)}/{quote(blob_name, safe='/~')}"
    return f"{url}?{sas}" if sas else url


async def fetch_user_delegation_key(
    provider: DelegationKeyProvider, start: datetime, expiry: datetime
) -> UserDelegationKey:
    """One request (Entra ID): a key that signs this run's SAS; refuses windows Azure would reject."""
    if expiry - start > MAX_DELEGATION_LIFETIME:
        raise ConfigError(
            'with auth = "entra_id" a SAS can live at most 7 days, but [run] run_timeout_s + sas_margin_s '
            f"asks for {(expiry - start).total_seconds() / 86400:.1f} days. Lower them."
        )
    return await provider.get_user_delegation_key(start, expiry)


def utc_now() -> datetime:
    """The current time in UTC (one place to read the clock)."""
    return datetime.now(UTC)
