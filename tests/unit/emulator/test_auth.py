"""The SharedKey verifier against signatures made by the azure-batch SDK's own signing policy."""

from __future__ import annotations

import base64
from urllib.parse import quote, urlsplit

from azure.batch._patch import BatchSharedKeyAuthPolicy
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.rest import HttpRequest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.auth import decode_account_key, verify_shared_key

ACCOUNT = "devaccount"
KEY = base64.b64encode(bytes(range(64))).decode()
OTHER_KEY = base64.b64encode(bytes(range(1, 65))).decode()


def sdk_signed(
    method: str, url: str, body: bytes | None = None, extra: dict[str, str] | None = None
) -> HttpRequest:
    """A request exactly as the SDK's SharedKey policy signs it."""
    headers = {"ocp-date": "Sat, 21 Nov 2026 22:46:13 GMT", **(extra or {})}
    if body is not None:
        headers["Content-Type"] = "application/json; odata=minimalmetadata"
        headers["Content-Length"] = str(len(body))
    request = HttpRequest(method, url, headers=headers, content=body)
    policy = BatchSharedKeyAuthPolicy(AzureNamedKeyCredential(ACCOUNT, KEY))
    policy.on_request(PipelineRequest(request, PipelineContext(None)))  # type: ignore[arg-type]
    return request


def verify(request: HttpRequest, key: str = KEY, account: str = ACCOUNT) -> bool:
    parts = urlsplit(request.url)
    result = verify_shared_key(
        request.headers.get("Authorization"),
        request.method,
        parts.path,
        parts.query,
        list(request.headers.items()),
        account,
        decode_account_key(key),
    )
    return result.ok


def filter_url(filter_text: str, path: str = "/jobs/j1/tasks") -> str:
    return (
        f"http://127.0.0.1:1{path}?api-version=2025-06-01&$filter={quote(filter_text, safe='')}&maxresults=50"
    )


def test_sdk_signatures_verify_for_each_method() -> None:
    assert verify(sdk_signed("GET", "http://127.0.0.1:1/pools/p1?api-version=2025-06-01"))
    assert verify(sdk_signed("HEAD", "http://127.0.0.1:1/pools/p1?api-version=2025-06-01"))
    assert verify(sdk_signed("POST", "http://127.0.0.1:1/pools?api-version=2025-06-01", b'{"id":"p"}'))
    assert verify(sdk_signed("PATCH", "http://127.0.0.1:1/jobs/j?api-version=2025-06-01", b'{"priority":1}'))
    assert verify(sdk_signed("DELETE", "http://127.0.0.1:1/jobs/j?api-version=2025-06-01"))
    assert verify(
        sdk_signed("GET", "http://127.0.0.1:1/jobs/j/tasks/t/files/wd%2Fout.txt?api-version=2025-06-01")
    )
    assert verify(
        sdk_signed(
            "GET",
            "http://127.0.0.1:1/jobs/j/tasks/t/files/stdout.txt?api-version=2025-06-01&timeOut=30",
            extra={"ocp-range": "bytes=0-4"},
        )
    )


def test_awkward_filter_values_verify() -> None:
    for text in ["state eq 'completed'", "id eq 'a+b'", "id eq '100%'", "id eq 'x&y=z'", "id eq 'ünï 日本'"]:
        assert verify(sdk_signed("GET", filter_url(text))), text


def test_wrong_key_tampering_and_bad_headers_fail() -> None:
    request = sdk_signed("GET", filter_url("state eq 'active'"))
    assert not verify(request, key=OTHER_KEY)
    assert not verify(request, account="someoneelse")
    tampered = HttpRequest("GET", filter_url("state eq 'completed'"), headers=dict(request.headers))
    assert not verify(tampered)
    moved = HttpRequest(
        "GET", filter_url("state eq 'active'", "/jobs/j2/tasks"), headers=dict(request.headers)
    )
    assert not verify(moved)
    for header in [None, "", "SharedKey", "SharedKey devaccount", "SharedKey devaccount:", "Bearer abc.def"]:
        headers = {**request.headers}
        headers.pop("Authorization", None)
        if header is not None:
            headers["Authorization"] = header
        assert not verify(HttpRequest("GET", request.url, headers=headers)), header


def test_failure_reason_never_echoes_the_signature() -> None:
    request = sdk_signed("GET", filter_url("state eq 'active'"))
    parts = urlsplit(request.url)
    signature = request.headers["Authorization"].split(":", 1)[1]
    result = verify_shared_key(
        request.headers["Authorization"],
        "GET",
        parts.path,
        parts.query,
        list(request.headers.items()),
        ACCOUNT,
        decode_account_key(OTHER_KEY),
    )
    assert not result.ok
    assert "account key" in result.reason
    assert signature not in result.reason


def test_key_must_be_base64() -> None:
    try:
        decode_account_key("not base64!!")
    except ValueError as error:
        assert "base64" in str(error)
    else:
        raise AssertionError("a non-base64 key was accepted")


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_any_filter_text_signed_by_the_sdk_verifies(text: str) -> None:
    request = sdk_signed("GET", filter_url(f"id eq '{text}'"))
    assert verify(request)
    assert not verify(request, key=OTHER_KEY)
