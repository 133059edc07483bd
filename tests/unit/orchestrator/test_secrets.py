"""The one secret stripper: every kind of secret goes, ordinary text stays, events use the same rules.

The journal strips with the same functions (checked on what it stores and on its file's bytes).
The oracle is tests/secret_scan.py (`find_secrets`), the scanner every leak check in the suite relies
on, and real SAS tokens signed by the storage SDK, not topn's sas.py.
"""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import structlog
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from hypothesis import given
from hypothesis import strategies as st

from orchestrator import secrets
from orchestrator.events import configure_events
from orchestrator.journal import Journal, JournalInput
from orchestrator.secrets import (
    REDACTED,
    is_secret_name,
    redact_text,
    redact_value,
    register_secrets,
    strip_secrets,
)
from tests.secret_scan import find_secrets, texts_under

# A made-up account key (no real account's) with '+', '/' and '=' so its percent-encoding differs.
KEY = base64.b64encode(bytes(range(248, 256)) + b"made-up key for the secrets test!" + b"\xfb\xef").decode()
register_secrets([KEY])


def real_sas_query() -> str:
    return generate_container_sas(
        "secretsacct",
        "a-container",
        account_key=KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime(2030, 1, 1, tzinfo=UTC) + timedelta(hours=1),
    )


def leaky_texts() -> list[tuple[str, str]]:
    """Every shape of secret topn could meet, in the text it would meet it in."""
    url = f"https://secretsacct.blob.core.windows.net/a-container?{real_sas_query()}"
    token = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2JhdGNoIn0.c2lnbmF0dXJlLXBhcnQ"
    return [
        ("account key", f"config: account_key = {KEY}"),
        ("percent-encoded key", f"POST /token body=key%3D{quote(KEY, safe='')}&x=1"),
        ("sas url", f"upload failed: GET {url} 403"),
        ("sas in json", json.dumps({"url": url})),
        ("escaped sas url", f"redirect to {quote(url, safe='')}"),
        ("connection string", "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0LWtleS0x;"),
        ("bearer token", f"Authorization: Bearer {token}"),
        ("shared key header", "Authorization: SharedKey secretsacct:c2lnbmF0dXJlLW9mLWEtcmVxdWVzdA=="),
    ]


def test_the_scanner_sees_every_planted_secret_before_redaction() -> None:
    texts = leaky_texts()
    found = find_secrets(texts, [KEY])
    # Each text holds a secret the scanner knows, except the two shapes it has no rule for.
    assert {leak.split(":")[0] for leak in found} >= {
        "account key",
        "percent-encoded key",
        "sas url",
        "sas in json",
        "bearer token",
    }


def test_no_secret_survives_redaction() -> None:
    texts = leaky_texts()
    redacted = [(name, redact_text(text)) for name, text in texts]
    assert find_secrets(redacted, [KEY]) == []
    for name, after in redacted:
        assert REDACTED in after, name
    assert "AccountKey=REDACTED;" in dict(redacted)["connection string"]
    assert "c2VjcmV0LWtleS0x" not in dict(redacted)["connection string"]
    assert "c2lnbmF0dXJl" not in dict(redacted)["shared key header"]
    assert (
        "sig%3D" in dict(redacted)["escaped sas url"]
        and "sig%3DREDACTED" in dict(redacted)["escaped sas url"]
    )


def test_ordinary_text_is_kept() -> None:
    for text in (
        "signature=fine, design=ok",
        "the signature (sig) was rotated; Bearer tokens are short-lived",
        "https://a.blob.core.windows.net/c/a.txt?sv=2025-01-05&sp=r",
        "AccountName=devstoreaccount1;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1",
        "exit code 3: Traceback (most recent call last)",
    ):
        assert redact_text(text) == text


def test_redaction_is_idempotent_and_reaches_nested_values() -> None:
    texts = [text for _, text in leaky_texts()]
    once = redact_value({"errors": texts, "pair": (texts[0], 3), "n": 1, "none": None})
    assert redact_value(once) == once
    assert once["n"] == 1 and once["none"] is None and isinstance(once["pair"], tuple)
    assert find_secrets([("nested", json.dumps(once))], [KEY]) == []


@given(before=st.text(max_size=30), after=st.text(max_size=30))
def test_a_registered_key_is_gone_whatever_surrounds_it(before: str, after: str) -> None:
    for form in (KEY, quote(KEY, safe="")):
        text = redact_text(before + form + after)
        assert KEY not in text and quote(KEY, safe="") not in text


# Pieces that make or almost make each secret shape, in any case, to be strung together at random.
SHAPE_PIECES = [
    "sig=",
    "SIG%3d",
    "sig",
    "s1g=",
    "AccountKey=",
    "accountkey%3D",
    "Account Key=",
    "Bearer ",
    "bearer\t",
    "SharedKey ",
    "sharedkeylite acct:",
    "acct:",
    "c2lnbmF0dXJl==",
    "abcdefghijklmnopqrstuvwxyz0123",
    ";",
    "&",
    " ",
]


def redacted_by_every_shape(text: str) -> str:
    """The shapes' rule applied without any shortcut: every shape substituted, whatever the text holds."""
    for secret in sorted(secrets._registered, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    for shape in secrets._SECRET_SHAPES:
        text = shape.sub(r"\1" + REDACTED, text)
    return text


@given(st.lists(st.sampled_from(SHAPE_PIECES) | st.text(max_size=6), max_size=12))
def test_the_quick_check_never_skips_a_shape(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert redact_text(text) == redacted_by_every_shape(text)


def test_events_redact_with_the_same_rules() -> None:
    stream = io.StringIO()
    configure_events("json", stream)
    texts = dict(leaky_texts())
    structlog.get_logger().error(
        "run.failed", **{name.replace(" ", "_"): text for name, text in texts.items()}
    )
    event = json.loads(stream.getvalue())
    assert {name: event[name.replace(" ", "_")] for name in texts} == {
        name: redact_text(text) for name, text in texts.items()
    }


def test_secret_names_are_told_from_ordinary_ones() -> None:
    assert all(
        map(is_secret_name, ["account_key", "accountKey", "sasToken", "client_secret", "PASSWORD", "sig"])
    )
    assert not any(map(is_secret_name, ["tokenizer", "top", "endpoint", "account_name", "design", "keyword"]))


async def test_the_journal_strips_with_the_same_rules(tmp_path: Path) -> None:
    texts = dict(leaky_texts())
    snapshot = {
        "storage": {"account_key": KEY, "connection": texts["connection string"]},
        "notes": list(texts.values()),
    }
    item = JournalInput(0, "a.txt", "/data/a.txt", 5, 1, None, "runs/r/a.txt", "t000000")
    outcome = {
        "status": "failed",
        "exit_code": 1,
        "stderr_tail": texts["sas url"],
        "message": texts["bearer token"],
    }
    error = {"message": texts["percent-encoded key"], "stderr_tail": texts["shared key header"]}
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run("r", snapshot, [item])
        await journal.record_task_completed("r", "t000000", outcome)
        await journal.record_file_failed("r", "a.txt", error)
        record = await journal.load_run("r")
    assert record is not None
    assert record.settings_snapshot == strip_secrets(snapshot)
    assert record.completed["t000000"] == redact_value(outcome)
    assert record.file_failures["a.txt"] == redact_value(error)
    assert find_secrets(texts_under(tmp_path), [KEY]) == []
