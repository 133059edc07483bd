"""SAS minting in both signing modes: scopes, permissions and expiries, read from the token itself."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.storage.blob import UserDelegationKey
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.azure.sas import (
    CLOCK_SKEW,
    blob_url,
    container_url,
    fetch_user_delegation_key,
    mint_blob_read_sas,
    mint_container_write_sas,
    sas_window,
)
from orchestrator.errors import ConfigError

ACCOUNT_KEY = base64.b64encode(b"an account key made up for this test").decode()
NOW = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
START, EXPIRY = NOW - CLOCK_SKEW, NOW + timedelta(hours=3)


def delegation_key(value: bytes = b"delegation key value for tests") -> UserDelegationKey:
    key = UserDelegationKey()
    key.signed_oid = "11111111-2222-3333-4444-555555555555"
    key.signed_tid = "66666666-7777-8888-9999-000000000000"
    key.signed_start = "2026-11-21T23:55:00Z"
    key.signed_expiry = "2026-11-22T03:00:00Z"
    key.signed_service = "b"
    key.signed_version = "2025-01-05"
    key.value = base64.b64encode(value).decode()
    return key


def fields(token: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(token).items()}


def test_the_window_covers_the_run_deadline_plus_margin() -> None:
    start, expiry = sas_window(NOW, run_timeout_s=7200, margin_s=3600)
    assert start == NOW - timedelta(minutes=5)
    assert expiry == NOW + timedelta(hours=3)


@given(timeout=st.floats(1, 10**6), margin=st.floats(0, 10**6))
def test_the_window_always_outlives_the_run(timeout: float, margin: float) -> None:
    start, expiry = sas_window(NOW, timeout, margin)
    assert start < NOW < NOW + timedelta(seconds=timeout) <= expiry


def test_the_window_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone"):
        sas_window(datetime(2026, 1, 1), 10, 10)  # a naive time is the point of the test


def test_blob_read_sas_with_an_account_key_is_read_only_and_blob_scoped() -> None:
    token = mint_blob_read_sas(
        account_name="acct",
        container="topn-input",
        blob_name="runs/r/a b.txt",
        start=START,
        expiry=EXPIRY,
        account_key=ACCOUNT_KEY,
    )
    parsed = fields(token)
    assert parsed["sp"] == "r"
    assert parsed["sr"] == "b"
    assert parsed["se"] == "2026-11-22T03:00:00Z"
    assert parsed["st"] == "2026-11-21T23:55:00Z"
    assert "skoid" not in parsed
    assert ACCOUNT_KEY not in token


def test_container_write_sas_can_create_and_write_but_not_read_list_or_delete() -> None:
    token = mint_container_write_sas(
        account_name="acct", container="topn-out-r", start=START, expiry=EXPIRY, account_key=ACCOUNT_KEY
    )
    parsed = fields(token)
    assert parsed["sr"] == "c"
    assert set(parsed["sp"]) == {"c", "w"}


def test_user_delegation_sas_carries_the_key_identity_and_no_account_key() -> None:
    key = delegation_key()
    token = mint_blob_read_sas(
        account_name="acct",
        container="topn-input",
        blob_name="x.txt",
        start=START,
        expiry=EXPIRY,
        user_delegation_key=key,
    )
    parsed = fields(token)
    assert parsed["skoid"] == key.signed_oid
    assert parsed["sktid"] == key.signed_tid
    assert parsed["skt"] == key.signed_start
    assert parsed["ske"] == key.signed_expiry
    assert parsed["sks"] == "b"
    assert parsed["sp"] == "r"
    write = fields(
        mint_container_write_sas(
            account_name="acct", container="topn-out-r", start=START, expiry=EXPIRY, user_delegation_key=key
        )
    )
    assert write["skoid"] == key.signed_oid and set(write["sp"]) == {"c", "w"}


def test_the_signature_depends_on_the_signing_key() -> None:
    def signature(**signing: Any) -> str:
        token = mint_blob_read_sas(
            account_name="acct", container="c", blob_name="b", start=START, expiry=EXPIRY, **signing
        )
        return fields(token)["sig"]

    assert signature(user_delegation_key=delegation_key(b"one")) != signature(
        user_delegation_key=delegation_key(b"two")
    )
    assert signature(user_delegation_key=delegation_key(b"one")) == signature(
        user_delegation_key=delegation_key(b"one")
    )
    assert signature(account_key=ACCOUNT_KEY) != signature(user_delegation_key=delegation_key())


def test_exactly_one_signing_secret() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        mint_container_write_sas(account_name="a", container="c", start=START, expiry=EXPIRY)
    with pytest.raises(ValueError, match="exactly one"):
        mint_container_write_sas(
            account_name="a",
            container="c",
            start=START,
            expiry=EXPIRY,
            account_key=ACCOUNT_KEY,
            user_delegation_key=delegation_key(),
        )


def test_urls_encode_awkward_blob_names() -> None:
    base = "http://127.0.0.1:10000/devstoreaccount1/"
    url = blob_url(base, "topn-input", "runs/r/a b#1 100%/é.txt", "sv=1&sig=x")
    parts = urlsplit(url)
    assert parts.path == "/devstoreaccount1/topn-input/runs/r/a%20b%231%20100%25/%C3%A9.txt"
    assert parts.query == "sv=1&sig=x" and parts.fragment == ""
    assert container_url(base, "topn-out-r") == "http://127.0.0.1:10000/devstoreaccount1/topn-out-r"


class FakeDelegationProvider:
    def __init__(self) -> None:
        self.calls: list[tuple[datetime, datetime]] = []

    async def get_user_delegation_key(
        self, key_start_time: datetime, key_expiry_time: datetime, **kwargs: Any
    ) -> UserDelegationKey:
        self.calls.append((key_start_time, key_expiry_time))
        return delegation_key()


async def test_the_delegation_key_is_requested_for_the_run_window() -> None:
    provider = FakeDelegationProvider()
    key = await fetch_user_delegation_key(provider, START, EXPIRY)
    assert provider.calls == [(START, EXPIRY)]
    assert key.signed_oid is not None


async def test_a_window_longer_than_seven_days_is_a_config_error() -> None:
    provider = FakeDelegationProvider()
    with pytest.raises(ConfigError, match="7 days"):
        await fetch_user_delegation_key(provider, START, START + timedelta(days=8))
    assert provider.calls == []
