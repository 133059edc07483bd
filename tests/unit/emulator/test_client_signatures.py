"""The SharedKey verifier against signatures made by other Microsoft clients' own signers.

The vectors were produced by the signers of @azure/batch 10.2.0 (JavaScript), azure-batch 14.2.0,
azure-batch 1.1.0 and the azure-batch 15.0.0b1 that az batch bundles (see signer_cases.py); an
integration test re-signs them live and compares. azure-batch 15.1 is tested in-process in test_auth.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from emulator.auth import CANONICALIZATIONS, decode_account_key, sign, string_to_sign, verify_shared_key
from tests.unit.emulator.signer_cases import ACCOUNT, CLIENT_API_VERSIONS, KEY, OTHER_KEY, SignedRequest

VECTORS: list[SignedRequest] = json.loads(
    (Path(__file__).parent / "client_signatures.json").read_text(encoding="utf-8")
)


def verify(vector: SignedRequest, key: str = KEY, headers: dict[str, str] | None = None) -> bool:
    sent = vector["headers"] if headers is None else headers
    parts = urlsplit(vector["url"])
    authorization = next(value for name, value in sent.items() if name.lower() == "authorization")
    result = verify_shared_key(
        authorization,
        vector["method"],
        parts.path,
        parts.query,
        list(sent.items()),
        ACCOUNT,
        decode_account_key(key),
    )
    return result.ok


def content_length(vector: SignedRequest) -> str | None:
    return next(
        (value for name, value in vector["headers"].items() if name.lower() == "content-length"), None
    )


def label(vector: SignedRequest) -> str:
    return f"{vector['client']} {vector['method']} {urlsplit(vector['url']).path}"


def test_every_client_is_covered() -> None:
    assert {vector["client"] for vector in VECTORS} == set(CLIENT_API_VERSIONS)
    for vector in VECTORS:
        assert CLIENT_API_VERSIONS[vector["client"]] in vector["url"]


@pytest.mark.parametrize("vector", VECTORS, ids=label)
def test_each_client_signature_verifies_and_a_wrong_key_does_not(vector: SignedRequest) -> None:
    assert verify(vector)
    assert not verify(vector, key=OTHER_KEY)


def test_javascript_deletes_carry_no_content_length_and_verify() -> None:
    deletes = [v for v in VECTORS if v["client"] == "javascript-10.2.0" and v["method"] == "DELETE"]
    assert deletes
    for vector in deletes:
        assert content_length(vector) is None, label(vector)
        assert verify(vector), label(vector)


def test_python_clients_send_and_sign_a_zero_length_on_bodiless_writes() -> None:
    bodiless = [v for v in VECTORS if v["client"].startswith("python-") and v["method"] in ("DELETE", "POST")]
    assert any(content_length(v) == "0" for v in bodiless)
    for vector in bodiless:
        assert verify(vector), label(vector)


def test_a_sent_content_length_is_signed_as_sent() -> None:
    """A JS DELETE re-sent with `Content-Length: 0` no longer matches what the client signed (empty)."""
    vector = next(v for v in VECTORS if v["client"] == "javascript-10.2.0" and v["method"] == "DELETE")
    assert not verify(vector, headers={**vector["headers"], "Content-Length": "0"})
    python_delete = next(v for v in VECTORS if v["client"] == "python-14.2.0" and v["method"] == "DELETE")
    without_length = {k: v for k, v in python_delete["headers"].items() if k.lower() != "content-length"}
    assert verify(python_delete, headers=without_length)  # absent: "0" is one of the accepted forms
    assert not verify(python_delete, headers={**python_delete["headers"], "Content-Length": "7"})


def test_tutorial_sdk_signs_file_paths_with_decoded_separators() -> None:
    """azure-batch 1.1.0 signs `files/wd%2Fout.txt` as `files/wd/out.txt`; both must verify."""
    file_requests = [v for v in VECTORS if "%2F" in v["url"]]
    assert {v["client"] for v in file_requests} == set(CLIENT_API_VERSIONS)
    for vector in file_requests:
        assert verify(vector), label(vector)


def matching_forms(vector: SignedRequest) -> set[str]:
    """The names of the canonical forms under which the vector's signature is right."""
    parts = urlsplit(vector["url"])
    signature = vector["headers"].get("authorization") or vector["headers"]["Authorization"]
    headers = list(vector["headers"].items())
    return {
        form.clients
        for form in CANONICALIZATIONS
        if "SharedKey "
        + ACCOUNT
        + ":"
        + sign(
            decode_account_key(KEY),
            string_to_sign(vector["method"], parts.path, parts.query, headers, ACCOUNT, form),
        )
        == signature
    }


def test_blank_query_values_are_signed_only_by_the_javascript_client() -> None:
    blank = [v for v in VECTORS if "%24select=&" in v["url"]]
    assert {v["client"] for v in blank} == set(CLIENT_API_VERSIONS)
    javascript_form = next(form.clients for form in CANONICALIZATIONS if "JavaScript" in form.clients)
    for vector in blank:
        forms = matching_forms(vector)
        if vector["client"].startswith("javascript"):
            assert forms == {javascript_form}, label(vector)
        else:
            assert javascript_form not in forms and forms, label(vector)
