"""The structlog configuration: JSON lines with the required keys, console lines, and redaction."""

from __future__ import annotations

import io
import json
import sys

import pytest
import structlog

from orchestrator.events import configure_events, default_log_format
from orchestrator.secrets import redact_text, register_secrets


@pytest.fixture(autouse=True)
def clean_context() -> None:
    structlog.contextvars.clear_contextvars()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_timestamp_level_event_and_the_bound_run_id() -> None:
    stream = io.StringIO()
    configure_events("json", stream)
    structlog.contextvars.bind_contextvars(run_id="20261122t001500z-abc123")
    structlog.get_logger().info("pool.ready", pool_id="p", nodes_usable=2)
    (line,) = lines(stream)
    assert line["event"] == "pool.ready"
    assert line["level"] == "info"
    assert line["run_id"] == "20261122t001500z-abc123"
    assert line["nodes_usable"] == 2
    assert str(line["timestamp"]).endswith("Z")


def test_the_level_filters_debug_events() -> None:
    stream = io.StringIO()
    configure_events("json", stream, level="info")
    log = structlog.get_logger()
    log.debug("blob.uploaded", blob="x")
    log.warning("task.failed", task_id="t000001")
    assert [line["event"] for line in lines(stream)] == ["task.failed"]


def test_module_level_loggers_follow_a_later_configuration() -> None:
    log = structlog.get_logger()
    first, second = io.StringIO(), io.StringIO()
    configure_events("json", first)
    log.info("run.started")
    configure_events("json", second)
    log.info("run.started")
    assert len(lines(first)) == 1 and len(lines(second)) == 1


def test_console_format_is_readable_text() -> None:
    stream = io.StringIO()
    configure_events("console", stream)
    structlog.get_logger().info("tasks.submitted", tasks=3)
    text = stream.getvalue()
    assert "tasks.submitted" in text and "tasks=3" in text
    assert not text.lstrip().startswith("{")


def test_sas_signatures_and_registered_secrets_are_redacted() -> None:
    secret = "c2VjcmV0LWtleS1mb3ItcmVkYWN0aW9uLXRlc3Q="
    register_secrets([secret, None])
    stream = io.StringIO()
    configure_events("json", stream)
    url = "https://a.blob.core.windows.net/c/b?sv=2024&sp=r&sig=AbC%2Bdef%3D123456"
    structlog.get_logger().error("run.failed", error=f"bad url {url} with key {secret}", nested=[url])
    text = stream.getvalue()
    assert "AbC%2Bdef" not in text and secret not in text
    assert "sig=REDACTED" in text


def test_redact_text_keeps_ordinary_text() -> None:
    assert redact_text("signature=fine, design=ok") == "signature=fine, design=ok"


def test_bad_levels_and_formats_are_refused() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_events("json", io.StringIO(), level="loud")
    with pytest.raises(ValueError, match="log format"):
        configure_events("xml", io.StringIO())  # type: ignore[arg-type]


def test_json_is_the_default_off_a_terminal() -> None:
    assert default_log_format(io.StringIO()) == "json"


def test_an_event_stream_on_a_full_disk_drops_events_instead_of_failing_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orchestrator.console import EventStream

    class FullDisk:
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

        def flush(self) -> None:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(sys, "stderr", sys.stderr)  # the stream swaps sys.stderr for /dev/null
    stream = EventStream(FullDisk())
    assert stream.write("an event\n") == len("an event\n")
    stream.flush()
    assert stream.reader_gone
