"""The leak scanner every secret check relies on: it must find what it is meant to find.

Were `find_secrets` to miss a key or a signature, every "no secret leaked" assertion in the suite
would pass vacuously; these cases use real SAS tokens signed by the storage SDK, not topn's sas.py.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from orchestrator.run.units import UnitEntry, build_manifest
from tests.secret_scan import find_secrets, without_manifests

# A made-up account key (not any real account's), in the portal's base64 form with '+', '/' and '='.
KEY = base64.b64encode(bytes(range(250, 256)) + b"made-up key for the scanner test" + b"\xfb\xff").decode()


def real_sas_query() -> str:
    return generate_container_sas(
        "scanacct",
        "scan-container",
        account_key=KEY,
        permission=ContainerSasPermissions(read=True),
        expiry=datetime(2030, 1, 1, tzinfo=UTC) + timedelta(hours=1),
    )


def test_the_test_key_needs_escaping_in_a_url() -> None:
    assert any(char in KEY for char in "+/=") and quote(KEY, safe="") != KEY


def test_clean_text_and_redacted_signatures_are_not_leaks() -> None:
    texts = [
        ("event", '{"event": "blob.uploaded", "blob": "runs/r/in/a.txt", "bytes": 12}'),
        ("url", "https://scanacct.blob.core.windows.net/c/a.txt?sv=2025-01-05&sp=r&sig=REDACTED"),
        ("prose", "the signature (sig) was rotated; Bearer tokens are short-lived"),
    ]
    assert find_secrets(texts, [KEY, ""]) == []


def test_an_account_key_is_found_as_is_and_percent_encoded() -> None:
    found = find_secrets(
        [
            ("plain", f"config: account_key={KEY}"),
            ("in a url", f"GET /x?key={quote(KEY, safe='')} 403"),
        ],
        [KEY],
    )
    assert found == ["plain: contains an account key", "in a url: contains an account key"]


def test_a_real_sas_signature_is_found_in_a_url_and_inside_json() -> None:
    url = f"https://scanacct.blob.core.windows.net/scan-container?{real_sas_query()}"
    assert "sig=" in url
    found = find_secrets([("stderr", f"upload failed: {url}"), ("summary", f'{{"url": "{url}"}}')], [])
    assert len(found) == 2
    assert found[0].startswith("stderr: contains a SAS signature (sig=")
    assert found[1].startswith("summary: contains a SAS signature (sig=")
    # The report quotes at most the first characters, so the scanner itself never prints the secret.
    signature = url.split("sig=", 1)[1].split("&", 1)[0]
    assert signature not in " ".join(found)


def test_a_bearer_token_is_found() -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2JhdGNoIn0.c2lnbmF0dXJlLXBhcnQ"
    found = find_secrets([("log", f"Authorization: Bearer {token}")], [])
    assert found == ["log: contains a bearer token"]


def test_only_whole_unit_manifests_are_taken_out_before_a_scan() -> None:
    """A manifest carries its node's input SAS by design; the same SAS anywhere else is still a leak."""
    source = f"http://127.0.0.1:10000/scanacct/topn-in-r?{real_sas_query()}"
    manifest = build_manifest(
        "t000001",
        tokenizer="words",
        top=3,
        source_url=source,
        entries=[UnitEntry("a.txt", "runs/r/a.txt", 1)],
    ).decode()
    # As Azurite stores blobs: several side by side in one data file, with bytes in between.
    stored = f"\x00\x01{manifest}\x00junk\x00{manifest}\x00"
    assert find_secrets([("manifest", manifest)], [KEY]) != []  # the scanner sees the SAS in it
    assert find_secrets([("stored", without_manifests(stored))], [KEY]) == []
    leaked = f"{manifest}\x00an event: {source}\x00"
    assert find_secrets([("leaked", without_manifests(leaked))], [KEY]) != []
