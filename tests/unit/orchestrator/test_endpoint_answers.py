"""body_format and wrong_service_reason: how the credential check reads an answer's status and format."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.azure.clients import BATCH, STORAGE, body_format, wrong_service_reason

BUSY_STATUSES = [408, 429, 500, 502, 503, 504]  # DESIGN: retried, never blamed on the address


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/json;odata=minimalmetadata", "json"),
        ("application/problem+json", "json"),
        ("APPLICATION/XML", "xml"),
        ("application/xml; charset=utf-8", "xml"),
        ("text/xml", "xml"),
        ("text/html; charset=UTF-8", "html"),
        ("application/xhtml+xml", "html"),
        ("text/plain", "other"),
        ("application/octet-stream", "other"),
        ("", "none"),
        ("  ", "none"),
        (None, "none"),
    ],
)
def test_body_format_reads_the_media_type(content_type: str | None, expected: str) -> None:
    assert body_format(content_type) == expected


def test_each_service_own_not_found_is_accepted() -> None:
    assert wrong_service_reason(BATCH, 404, "application/json;odata=minimalmetadata", "PoolNotFound") is None
    assert wrong_service_reason(STORAGE, 404, "application/xml", "ContainerNotFound") is None
    assert wrong_service_reason(STORAGE, 404, None, "ContainerNotFound") is None  # HEAD: no body


def test_the_other_service_not_found_is_a_wrong_endpoint() -> None:
    assert wrong_service_reason(BATCH, 404, "application/json", "ContainerNotFound") is not None
    assert wrong_service_reason(STORAGE, 404, "application/xml", "ResourceNotFound") is not None
    assert wrong_service_reason(STORAGE, 404, "application/xml", None) is not None


def test_an_answer_in_the_other_service_format_is_named() -> None:
    reason = wrong_service_reason(BATCH, 403, "application/xml", "AuthorizationFailure")
    assert reason == (
        "it answered HTTP 403 AuthorizationFailure with an XML body, where Batch answers with a JSON body"
    )
    reason = wrong_service_reason(STORAGE, 200, "text/html", None)
    assert reason == "it answered HTTP 200 with an HTML page, where Blob Storage answers with an XML body"


def test_a_wrong_key_from_the_right_service_is_left_to_the_credential_error() -> None:
    assert wrong_service_reason(BATCH, 403, "application/json;odata=minimalmetadata", "Forbidden") is None
    assert wrong_service_reason(STORAGE, 403, "application/xml", "AuthenticationFailed") is None
    assert wrong_service_reason(STORAGE, 403, None, "AuthenticationFailed") is None


@pytest.mark.parametrize("status", [400, 405])
@pytest.mark.parametrize("service", [BATCH, STORAGE])
def test_bad_request_and_wrong_method_are_wrong_endpoints(service: str, status: int) -> None:
    assert wrong_service_reason(service, status, None, None) == f"it answered HTTP {status}"


@given(
    service=st.sampled_from([BATCH, STORAGE]),
    status=st.sampled_from(BUSY_STATUSES),
    content_type=st.one_of(st.none(), st.text(max_size=40)),
    code=st.one_of(st.none(), st.text(max_size=40)),
)
def test_busy_answers_are_never_judged(
    service: str, status: int, content_type: str | None, code: str | None
) -> None:
    assert wrong_service_reason(service, status, content_type, code) is None


@given(
    service=st.sampled_from([BATCH, STORAGE]),
    status=st.integers(min_value=100, max_value=599),
    content_type=st.one_of(st.none(), st.sampled_from(["text/html", "application/xml", "application/json"])),
    code=st.one_of(st.none(), st.text(max_size=80)),
)
def test_the_reason_quotes_only_a_plain_error_code(
    service: str, status: int, content_type: str | None, code: str | None
) -> None:
    # An error code is the only text of the answer the reason may carry, and only when it is a plain
    # word: anything else could be the request (a SAS, a key) echoed back.
    reason = wrong_service_reason(service, status, content_type, code)
    if reason is None:
        return
    plain = bool(code) and len(code or "") <= 64
    plain = plain and all(char.isascii() and (char.isalnum() or char in "_.-") for char in code or "")
    after_status = reason.removeprefix(f"it answered HTTP {status}")
    assert after_status != reason
    if plain:
        assert after_status.startswith(f" {code}")
    else:
        assert after_status == "" or after_status.startswith(" with ")
