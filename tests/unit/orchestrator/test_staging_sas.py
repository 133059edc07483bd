"""The run's SAS: shared key, or a user delegation key fetched once (Microsoft Entra ID)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from azure.storage.blob import UserDelegationKey
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.azure.staging import make_sas_minter

NOW = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)


class FakeDelegationSource:
    def __init__(self) -> None:
        self.calls: list[tuple[datetime, datetime]] = []

    async def get_user_delegation_key(
        self, key_start_time: datetime, key_expiry_time: datetime, **kwargs: Any
    ) -> UserDelegationKey:
        self.calls.append((key_start_time, key_expiry_time))
        key = UserDelegationKey()
        key.signed_oid = "00000000-0000-0000-0000-0000000000aa"
        key.signed_tid = "00000000-0000-0000-0000-0000000000bb"
        key.signed_start = key_start_time.strftime("%Y-%m-%dT%H:%M:%SZ")
        key.signed_expiry = key_expiry_time.strftime("%Y-%m-%dT%H:%M:%SZ")
        key.signed_service = "b"
        key.signed_version = "2025-01-05"
        key.value = base64.b64encode(b"delegation-key-bytes-0123456789ab").decode()
        return key


def query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


async def test_entra_id_sas_are_user_delegation_sas_covering_the_deadline() -> None:
    source = FakeDelegationSource()
    minter = await make_sas_minter(
        account_url="https://acct.blob.core.windows.net",
        account_name="acct",
        account_key=None,
        delegation_source=source,
        run_timeout_s=7200,
        margin_s=3600,
        now=NOW,
    )
    assert len(source.calls) == 1
    read = query(minter.blob_read_url("topn-input", "runs/r/a b.txt"))
    write = query(minter.container_write_url("topn-out-r"))
    assert read["skoid"] == write["skoid"] == "00000000-0000-0000-0000-0000000000aa"
    assert read["sp"] == "r" and read["sr"] == "b"
    assert set(write["sp"]) == {"c", "w"} and write["sr"] == "c"
    expiry = datetime.strptime(read["se"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert expiry >= NOW + timedelta(seconds=7200 + 3600)


async def test_shared_key_sas_need_no_request() -> None:
    minter = await make_sas_minter(
        account_url="http://127.0.0.1:1/devstoreaccount1",
        account_name="devstoreaccount1",
        account_key=base64.b64encode(b"k" * 32).decode(),
        delegation_source=None,
        run_timeout_s=60,
        margin_s=60,
        now=NOW,
    )
    url = minter.blob_read_url("c", "é #%.txt")
    assert url.startswith("http://127.0.0.1:1/devstoreaccount1/c/%C3%A9%20%23%25.txt?")
    assert "skoid" not in query(url)
    assert "k" * 8 not in repr(minter)


name_characters = st.sampled_from([*"ab/ #?%&=+;'\"", "é", "日", "\u00a0", "~"])


@given(st.lists(name_characters, min_size=1, max_size=20).map("".join))
async def test_a_read_url_names_exactly_its_blob_whatever_the_characters(name: str) -> None:
    """`#`, `?`, `%`, `&` and quotes in a blob name stay in the path; the query holds only the SAS."""
    minter = await make_sas_minter(
        account_url="http://127.0.0.1:1/devstoreaccount1",
        account_name="devstoreaccount1",
        account_key=base64.b64encode(b"k" * 32).decode(),
        delegation_source=None,
        run_timeout_s=60,
        margin_s=60,
        now=NOW,
    )
    parts = urlsplit(minter.blob_read_url("c", name))
    assert parts.fragment == ""
    assert unquote(parts.path) == f"/devstoreaccount1/c/{name}"
    assert all(ord(char) < 128 and char not in " \"'#?" for char in parts.path)
    assert set(parse_qs(parts.query)) >= {"sig", "sp", "sr", "se"} and parse_qs(parts.query)["sr"] == ["b"]
