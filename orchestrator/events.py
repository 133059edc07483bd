"""The one structlog configuration: JSON lines (or console lines on a terminal) on stderr.

Code elsewhere does `log = structlog.get_logger()` and `log.info("noun.past_tense", field=value)`;
event names and fields are catalogued in docs/events.md. A last redaction step (orchestrator/secrets.py)
removes SAS signatures, keys, tokens and registered secrets from every value, as a safety net behind
code that never logs them.

The Azure SDKs log through stdlib logging: their warnings and errors join the event stream as
`sdk.warned` events (redacted like every event); their INFO request/response lines stay off.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any, Literal, Protocol, TextIO, cast

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from orchestrator.secrets import redact_text, redact_value

LEVELS = ("debug", "info", "warning", "error", "critical")
SDK_LOGGER = "azure"  # the parent of every Azure SDK logger (azure.core, azure.identity, azure.batch...)
SDK_MESSAGE_CHARS = 500

log = structlog.get_logger()


class TextSink(Protocol):
    """Where event lines go: any text stream (sys.stderr, a StringIO, a stream that follows sys.stderr)."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact every value of the event."""
    for key, value in list(event_dict.items()):
        event_dict[key] = redact_value(value)
    return event_dict


_LEADING_KEYS = ("timestamp", "level", "event", "run_id")


def put_standard_keys_first(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: timestamp, level, event and run_id lead each line, for people reading it."""
    ordered = {key: event_dict.pop(key) for key in _LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


class SdkWarnings(logging.Handler):
    """Azure SDK log records at WARNING and above, as `sdk.warned` events on the event stream.

    Written as events, never as raw text, so the stream stays one JSON object per line. The message
    is redacted before it is shortened (a cut could split a key and leave a part the redaction would
    no longer recognise); a traceback is reduced to its exception's type and first line.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # the SDK's format and arguments disagree: its template says enough
            message = str(record.msg)
        error_type = error = None
        if record.exc_info is not None and record.exc_info[1] is not None:
            raised = record.exc_info[1]
            error_type = type(raised).__name__
            error = redact_text((str(raised).splitlines() or [""])[0])[:300]
        log.warning(
            "sdk.warned",
            sdk_logger=record.name,
            sdk_level=record.levelname.lower(),
            message=redact_text(message)[:SDK_MESSAGE_CHARS],
            error_type=error_type,
            error=error,
        )


def _route_sdk_logs() -> None:
    # Only WARNING and above: the INFO lines of azure-core's HTTP logging policy (every request and
    # response) stay off even where a child logger was set to INFO, because the handler drops them.
    # Not propagated: a root handler (the embedding application's, pytest's) must not print them raw.
    sdk_logger = logging.getLogger(SDK_LOGGER)
    sdk_logger.handlers = [SdkWarnings()]
    sdk_logger.propagate = False
    sdk_logger.setLevel(logging.WARNING)


def configure_events(log_format: Literal["json", "console"], stream: TextSink, level: str = "info") -> None:
    """Configure structlog for this process; later calls replace the earlier configuration."""
    level = level.lower()
    if level not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.format_exc_info,
        redact_secrets,
        put_standard_keys_first,
    ]
    renderer: Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False, default=str)
    elif log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=_is_terminal(stream))
    else:
        raise ValueError(f"log format {log_format!r} is not 'json' or 'console'")
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        # structlog's WriteLogger only calls write() and flush(), which every TextSink has.
        logger_factory=structlog.WriteLoggerFactory(file=cast(TextIO, stream)),
        context_class=dict,
        # Not cached: tests and the CLI reconfigure, and module-level loggers must follow.
        cache_logger_on_first_use=False,
    )
    _route_sdk_logs()


def _is_terminal(stream: TextSink) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


def default_log_format(stream: TextSink) -> Literal["json", "console"]:
    """JSON lines unless `stream` is a terminal (DESIGN §4)."""
    return "console" if _is_terminal(stream) else "json"


def bound_context() -> MutableMapping[str, Any]:
    """The context bound with structlog.contextvars (run_id, ...), for tests and error reports."""
    return structlog.contextvars.get_contextvars()
