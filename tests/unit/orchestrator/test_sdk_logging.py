"""Azure SDK log records: WARNING and above become redacted `sdk.warned` events, INFO never shows."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.pipeline.policies import HttpLoggingPolicy
from azure.core.rest import HttpRequest

from orchestrator.events import configure_events

# Made up for this test: what an account key and a SAS signature look like, nothing real.
ACCOUNT_KEY = "c2RrLWxvZ2dpbmctdGVzdC1hY2NvdW50LWtleS0xMjM0NTY3OA=="
SIGNATURE = "Zm9yZ2VkU2lnbmF0dXJl%2BT2s%3D"
SAS_URL = f"https://acct.blob.core.windows.net/topn-input/a.txt?sv=2025-01-05&sr=b&sp=r&sig={SIGNATURE}"
HTTP_LOGGER = "azure.core.pipeline.policies.http_logging_policy"


@pytest.fixture(autouse=True)
def clean_context() -> Iterator[None]:
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()


@pytest.fixture
def http_logger_at_info() -> Iterator[logging.Logger]:
    """azure-core's HTTP logging policy's logger set to INFO, as Azure's docs tell users to enable it."""
    logger = logging.getLogger(HTTP_LOGGER)
    before = logger.level
    logger.setLevel(logging.INFO)
    yield logger
    logger.setLevel(before)


def events(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def log_http_request(url: str) -> None:
    """What azure-core does for every request when HTTP logging is on: INFO lines with the URL."""
    request = PipelineRequest(HttpRequest("GET", url), PipelineContext(None))
    HttpLoggingPolicy().on_request(request)


def test_an_sdk_warning_is_a_redacted_json_event_and_http_info_lines_stay_off(
    http_logger_at_info: logging.Logger,
) -> None:
    from orchestrator.secrets import register_secrets

    register_secrets([ACCOUNT_KEY])
    stream = io.StringIO()
    configure_events("json", stream)
    structlog.contextvars.bind_contextvars(service="topn", daemon_id="d1")
    log_http_request(SAS_URL)
    logging.getLogger("azure.storage.blob._shared.response_handlers").warning(
        "Unexpected answer for %s with key %s", SAS_URL, ACCOUNT_KEY
    )
    try:
        raise ValueError(f"could not read the body of {SAS_URL}\nsecond line")
    except ValueError:
        logging.getLogger("azure.batch._utils.model_base").error("deserialization failed", exc_info=True)

    text = stream.getvalue()
    assert SIGNATURE not in text and ACCOUNT_KEY not in text
    assert "Request URL" not in text  # the HTTP logging policy's INFO line
    warned, failed = events(stream)  # exactly two lines, both JSON objects
    assert warned["event"] == "sdk.warned" and warned["level"] == "warning"
    assert warned["sdk_logger"] == "azure.storage.blob._shared.response_handlers"
    assert warned["sdk_level"] == "warning"
    assert warned["service"] == "topn" and warned["daemon_id"] == "d1"
    assert str(warned["timestamp"]).endswith("Z")
    assert warned["message"] == (
        "Unexpected answer for https://acct.blob.core.windows.net/topn-input/a.txt"
        "?sv=2025-01-05&sr=b&sp=r&sig=REDACTED with key REDACTED"
    )
    assert warned["error_type"] is None and warned["error"] is None
    assert failed["event"] == "sdk.warned" and failed["sdk_level"] == "error"
    assert failed["message"] == "deserialization failed"
    assert failed["error_type"] == "ValueError"
    assert failed["error"] == (
        "could not read the body of https://acct.blob.core.windows.net/topn-input/a.txt"
        "?sv=2025-01-05&sr=b&sp=r&sig=REDACTED"
    )

    quiet = io.StringIO()
    configure_events("json", quiet, level="error")  # `--log-level error` filters them like any warning
    logging.getLogger("azure.core").warning("a warning below the chosen level")
    assert quiet.getvalue() == ""


def test_a_long_message_is_redacted_before_it_is_cut() -> None:
    """A key cut in two by the length limit would no longer be recognised: redaction comes first."""
    from orchestrator.secrets import register_secrets

    register_secrets([ACCOUNT_KEY])
    stream = io.StringIO()
    configure_events("json", stream)
    padding = "x" * (500 - 20)
    logging.getLogger("azure.core").warning("%s %s", padding, ACCOUNT_KEY)
    (line,) = events(stream)
    assert ACCOUNT_KEY[:12] not in str(line["message"])
    assert str(line["message"]).startswith(padding)


def test_console_runs_show_sdk_warnings_as_console_lines(http_logger_at_info: logging.Logger) -> None:
    """`topn run` on a terminal: the same event, rendered for people, redacted, no HTTP lines."""
    stream = io.StringIO()
    configure_events("console", stream)
    log_http_request(SAS_URL)
    logging.getLogger("azure.identity").warning("token request to %s failed", SAS_URL)
    text = stream.getvalue()
    assert "sdk.warned" in text and "token request to" in text
    assert SIGNATURE not in text and "sig=REDACTED" in text
    assert "Request URL" not in text and len(text.strip().splitlines()) == 1
    assert not text.lstrip().startswith("{")
