"""Wire-format helpers: timestamps, durations, ETags, error bodies and resource ids (pure)."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

API_VERSION = "2025-06-01"
# What the service reports for "no limit" (TimeSpan.MaxValue).
UNLIMITED_DURATION = "P10675199DT2H48M5.4775807S"
UNLIMITED_SECONDS = float("inf")
ODATA_METADATA_ERROR = "$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element"

_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DURATION_PATTERN = re.compile(
    r"^P(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)
_etag_counter = itertools.count(1)
_ETAG_BASE = 0x8DE0000_00000000


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 with microseconds and a `Z`, as the service writes timestamps in bodies."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_http_date(moment: datetime) -> str:
    """RFC 1123, for `Last-Modified` and `ocp-creation-time` headers."""
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (any number of fractional digits); raises ValueError."""
    cleaned = text.strip()
    if cleaned.endswith(("Z", "z")):
        cleaned = cleaned[:-1] + "+00:00"
    # datetime.fromisoformat takes at most 6 fractional digits; the service writes 7.
    match = re.match(r"^(.*T\d{2}:\d{2}:\d{2})(\.\d+)?(.*)$", cleaned)
    if match is not None and match.group(2):
        cleaned = match.group(1) + match.group(2)[:7] + match.group(3)
    moment = datetime.fromisoformat(cleaned)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_duration(text: str) -> float:
    """Seconds in an ISO 8601 duration such as `PT15M00S`, `P7D` or the service's "unlimited"."""
    if text == UNLIMITED_DURATION:
        return UNLIMITED_SECONDS
    match = _DURATION_PATTERN.match(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"{text!r} is not an ISO 8601 duration such as PT30M or P1DT2H")
    parts = {name: float(value) for name, value in match.groupdict().items() if value is not None}
    return timedelta(
        days=parts.get("days", 0.0),
        hours=parts.get("hours", 0.0),
        minutes=parts.get("minutes", 0.0),
        seconds=parts.get("seconds", 0.0),
    ).total_seconds()


def new_etag() -> str:
    """A fresh unquoted ETag in the service's `0x8D...` style; strictly increasing in this process."""
    return f"0x{_ETAG_BASE + next(_etag_counter):X}"


def is_valid_id(candidate: object) -> bool:
    """Pool, job and task ids: 1-64 letters, digits, hyphens and underscores."""
    return isinstance(candidate, str) and _ID_PATTERN.match(candidate) is not None


def error_body(
    base_url: str, code: str, message: str, request_id: str, values: dict[str, str] | None = None
) -> dict[str, Any]:
    """The service's top-level error object (not wrapped in `odata.error`, which the SDK cannot read)."""
    body: dict[str, Any] = {
        "odata.metadata": f"{base_url}/{ODATA_METADATA_ERROR}",
        "code": code,
        "message": {
            "lang": "en-US",
            "value": f"{message}\nRequestId:{request_id}\nTime:{format_time(utc_now())}",
        },
    }
    if values:
        body["values"] = [{"key": key, "value": value} for key, value in values.items()]
    return body


_SAS_SIGNATURE = re.compile(r"(?i)\bsig=[^&\s\"']+")


def redact(text: str) -> str:
    """Text with SAS signatures hidden: defence in depth for anything that quotes a URL."""
    return _SAS_SIGNATURE.sub("sig=REDACTED", text)


def strip_query(url: str) -> str:
    """A URL without its query string, safe to log: SAS tokens live in the query."""
    return url.split("?", 1)[0]


class ServiceError(Exception):
    """An error answer in the service's shape: status, code, message and optional detail values."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        values: dict[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.values = values or {}
        self.retry_after_s = retry_after_s


def invalid_property(name: str, reason: str) -> ServiceError:
    return ServiceError(
        400,
        "InvalidPropertyValue",
        "The value provided for one of the properties in the request body is invalid.",
        {"PropertyName": name, "Reason": reason},
    )


def missing_property(name: str) -> ServiceError:
    return ServiceError(
        400,
        "MissingRequiredProperty",
        "A required property was not specified in the request body.",
        {"PropertyName": name},
    )
