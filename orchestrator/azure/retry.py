"""The one retry policy every Azure call goes through: which errors are worth retrying, and how long to wait.

The Azure SDKs retry on their own; `SDK_RETRY_KWARGS` turns that off so that exactly one layer (this
one) decides, counts and reports retries, and a wrong key or a dead endpoint fails fast instead of
hiding behind two nested backoff loops.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import anyio
import structlog
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

T = TypeVar("T")

log = structlog.get_logger()

# Statuses the services use for "try again later": timeouts, throttling and server-side faults.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

# azure-core refuses bearer tokens over plain http before sending anything; retrying cannot help.
_BEARER_OVER_HTTP = "not permitted for non-TLS"

# Given to every Azure SDK client: no SDK-level retries (ours sit on top), bounded socket waits.
SDK_RETRY_KWARGS: dict[str, int] = {
    "retry_total": 0,
    "connection_timeout": 10,
    "read_timeout": 120,
}


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long one operation may be retried."""

    max_attempts: int = 8
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    deadline_s: float = 300.0
    jitter_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or self.deadline_s <= 0:
            raise ValueError("delays must be non-negative and the deadline positive")
        if not 0.0 <= self.jitter_fraction <= 1.0:
            raise ValueError("jitter_fraction must be between 0 and 1")


def status_code_of(exc: BaseException) -> int | None:
    """The HTTP status an Azure SDK error carries, if any."""
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        if status is None and exc.response is not None:
            status = exc.response.status_code
        return status
    return None


def error_code_of(exc: BaseException) -> str | None:
    """The service's error code (`ServerBusy`, `AuthenticationFailed`, ...) if the response named one."""
    if isinstance(exc, HttpResponseError):
        error = getattr(exc, "error", None)
        code = getattr(error, "code", None)
        if isinstance(code, str):
            return code
        if exc.response is not None:
            header = response_headers(exc).get("x-ms-error-code")
            if header:
                return str(header)
    return None


def response_headers(exc: HttpResponseError) -> Mapping[str, str]:
    """The error response's headers, names lower-cased."""
    # The SDK's response protocol types do not declare `headers`, though every transport has them.
    # Lower-cased here so the lookups below do not depend on the transport's header mapping.
    headers = getattr(exc.response, "headers", None) or {}
    return {str(name).lower(): str(value) for name, value in headers.items()}


def is_transient(exc: BaseException) -> bool:
    """True when the same request may succeed later: throttling, server faults, timeouts, lost connections."""
    if isinstance(exc, ClientAuthenticationError):
        return False
    if isinstance(exc, HttpResponseError):
        status = status_code_of(exc)
        return status in TRANSIENT_STATUSES
    if isinstance(exc, ServiceRequestError):
        # Includes connection refused/reset before the request was sent; only the https refusal is final.
        return _BEARER_OVER_HTTP not in str(exc)
    if isinstance(exc, ServiceResponseError):
        return True
    # TimeoutError and ConnectionError are OSErrors; other OSErrors (file not found) are not transient.
    return isinstance(exc, TimeoutError | ConnectionError)


# A note retry_call adds to the error it gives up on: which limit of [retry] ended the retries.
RETRY_LIMIT_NOTE = "topn: retries ended by [retry] "


def retry_limit_of(error: BaseException) -> str | None:
    """`max_attempts` or `deadline_s`: the [retry] limit that ended retry_call's retries of `error`."""
    for note in getattr(error, "__notes__", ()):
        if isinstance(note, str) and note.startswith(RETRY_LIMIT_NOTE):
            return note.removeprefix(RETRY_LIMIT_NOTE)
    return None


def parse_retry_after_header(value: str, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta seconds or an HTTP date); None if unreadable."""
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, moment.timestamp() - current)


def retry_after_s(exc: BaseException) -> float | None:
    """The delay the service asked for (Retry-After, retry-after-ms, x-ms-retry-after-ms), if any."""
    if not isinstance(exc, HttpResponseError) or exc.response is None:
        return None
    headers = response_headers(exc)
    for millisecond_header in ("retry-after-ms", "x-ms-retry-after-ms"):
        raw = headers.get(millisecond_header)
        if raw:
            try:
                return max(0.0, float(raw) / 1000.0)
            except ValueError:
                continue
    raw = headers.get("retry-after")
    if raw:
        return parse_retry_after_header(str(raw))
    return None


def backoff_delay_s(policy: RetryPolicy, attempt: int, rand: float) -> float:
    """Delay after failed attempt number `attempt` (1-based): capped exponential, reduced by up to jitter.

    `rand` in [0, 1] picks where in [cap*(1-jitter), cap] the delay falls, so clients that failed
    together do not retry together.
    """
    if attempt < 1:
        raise ValueError("attempt numbers start at 1")
    rand = min(1.0, max(0.0, rand))
    # Cap the exponent first: 2**attempt overflows a float long before attempts run out.
    exponent = min(attempt - 1, 64)
    ceiling = min(policy.max_delay_s, policy.base_delay_s * (2.0**exponent))
    return ceiling * (1.0 - policy.jitter_fraction * rand)


async def retry_call(
    policy: RetryPolicy,
    operation: str,
    call: Callable[[], Awaitable[T]],
    *,
    rand: Callable[[], float] = random.random,
    retry_if: Callable[[BaseException], bool] = is_transient,
) -> T:
    """Await `call()` until it succeeds, retrying transient errors within the policy's attempts and deadline.

    A non-transient error (or one `retry_if` narrows out) is raised at once. When attempts or time
    run out, the last error is raised.
    A Retry-After from the service replaces the computed backoff (it knows its own load best).
    """
    deadline = anyio.current_time() + policy.deadline_s
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - anyio.current_time()
        try:
            with anyio.fail_after(max(remaining, 0.0)):
                return await call()
        except Exception as exc:
            if not retry_if(exc):
                raise
            if attempt >= policy.max_attempts:
                if attempt > 1:
                    exc.add_note(f"{RETRY_LIMIT_NOTE}max_attempts")
                raise
            requested = retry_after_s(exc)
            delay = requested if requested is not None else backoff_delay_s(policy, attempt, rand())
            if anyio.current_time() + delay >= deadline:
                exc.add_note(f"{RETRY_LIMIT_NOTE}deadline_s")
                raise
            if attempt == 1:  # once per call: what is being retried, and for how long at most
                log.info(
                    "request.retrying",
                    operation=operation,
                    status_code=status_code_of(exc),
                    error_type=type(exc).__name__,
                    max_attempts=policy.max_attempts,
                    deadline_s=policy.deadline_s,
                )
            log.debug(
                "request.retried",
                operation=operation,
                attempt=attempt,
                delay_s=round(delay, 3),
                status_code=status_code_of(exc),
                error_code=error_code_of(exc),
                error_type=type(exc).__name__,
            )
            await anyio.sleep(delay)


# Polling: how much longer to wait while nothing changes.
POLL_BACKOFF_FACTOR = 1.5


def next_poll_interval(current: float, moved: bool, minimum: float, maximum: float) -> float:
    """Back off by 1.5x while nothing changes (capped), snap back to the minimum on progress."""
    if moved:
        return minimum
    return min(maximum, max(minimum, current * POLL_BACKOFF_FACTOR))
