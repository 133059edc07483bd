"""Backoff arithmetic, the transient-error predicate, Retry-After parsing and the retry loop."""

from __future__ import annotations

import email.utils

import anyio
import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ServiceRequestError,
    ServiceResponseError,
)
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.azure.retry import (
    RetryPolicy,
    backoff_delay_s,
    is_transient,
    parse_retry_after_header,
    retry_after_s,
    retry_call,
)


class FakeResponse:
    """The two attributes azure-core's HttpResponseError reads from a response."""

    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status_code
        self.headers = headers or {}
        self.reason = "fake"

    def text(self) -> str:
        return ""


def http_error(status: int, headers: dict[str, str] | None = None) -> HttpResponseError:
    return HttpResponseError(message=f"status {status}", response=FakeResponse(status, headers))


# --- backoff arithmetic -----------------------------------------------------------------------

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 20),
    base_delay_s=st.floats(0.0, 10.0),
    max_delay_s=st.floats(0.0, 120.0),
    deadline_s=st.floats(0.1, 1000.0),
    jitter_fraction=st.floats(0.0, 1.0),
)


@given(policy=policies, attempt=st.integers(1, 10_000), rand=st.floats(0.0, 1.0))
def test_backoff_never_exceeds_the_cap_and_is_never_negative(
    policy: RetryPolicy, attempt: int, rand: float
) -> None:
    delay = backoff_delay_s(policy, attempt, rand)
    assert 0.0 <= delay <= policy.max_delay_s


@given(policy=policies, attempt=st.integers(1, 60), rand=st.floats(0.0, 1.0))
def test_backoff_stays_within_the_jitter_band(policy: RetryPolicy, attempt: int, rand: float) -> None:
    ceiling = min(policy.max_delay_s, policy.base_delay_s * 2 ** (attempt - 1))
    delay = backoff_delay_s(policy, attempt, rand)
    assert ceiling * (1 - policy.jitter_fraction) - 1e-9 <= delay <= ceiling + 1e-9


@given(policy=policies, attempt=st.integers(1, 60))
def test_backoff_ceiling_grows_with_attempts(policy: RetryPolicy, attempt: int) -> None:
    # rand = 0 means no jitter reduction: the ceiling itself, which must never shrink.
    assert backoff_delay_s(policy, attempt + 1, 0.0) >= backoff_delay_s(policy, attempt, 0.0)


def test_backoff_doubles_from_the_base_until_the_cap() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=3.0, jitter_fraction=0.0)
    assert [backoff_delay_s(policy, n, 0.7) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_full_jitter_can_halve_the_delay() -> None:
    policy = RetryPolicy(base_delay_s=2.0, max_delay_s=30.0, jitter_fraction=0.5)
    assert backoff_delay_s(policy, 1, 1.0) == pytest.approx(1.0)
    assert backoff_delay_s(policy, 1, 0.0) == pytest.approx(2.0)


def test_attempt_zero_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        backoff_delay_s(RetryPolicy(), 0, 0.5)


@pytest.mark.parametrize(
    "kwargs", [{"max_attempts": 0}, {"jitter_fraction": 1.5}, {"deadline_s": 0}, {"base_delay_s": -1}]
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


# --- which errors are transient ---------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_throttling_and_server_faults_are_transient(status: int) -> None:
    assert is_transient(http_error(status))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 412, 413])
def test_client_errors_are_final(status: int) -> None:
    assert not is_transient(http_error(status))


def test_connection_problems_are_transient() -> None:
    assert is_transient(ServiceRequestError("Cannot connect to host 127.0.0.1:1"))
    assert is_transient(ServiceResponseError("connection reset"))
    assert is_transient(ConnectionRefusedError())
    assert is_transient(TimeoutError())


def test_final_errors_that_are_not_http() -> None:
    assert not is_transient(ClientAuthenticationError("no token"))
    assert not is_transient(ResourceExistsError("exists"))
    assert not is_transient(ValueError("bug"))
    assert not is_transient(FileNotFoundError("gone"))
    refusal = "Bearer token authentication is not permitted for non-TLS protected (non-https) URLs."
    assert not is_transient(ServiceRequestError(refusal))


# --- Retry-After ------------------------------------------------------------------------------


def test_retry_after_in_seconds_and_milliseconds() -> None:
    assert retry_after_s(http_error(503, {"Retry-After": "7"})) == 7.0
    assert retry_after_s(http_error(429, {"retry-after-ms": "250"})) == 0.25
    assert retry_after_s(http_error(429, {"x-ms-retry-after-ms": "1500"})) == 1.5
    assert retry_after_s(http_error(503)) is None
    assert retry_after_s(ValueError()) is None


def test_retry_after_as_an_http_date() -> None:
    now = 1_800_000_000.0
    header = email.utils.formatdate(now + 12, usegmt=True)
    assert parse_retry_after_header(header, now=now) == pytest.approx(12.0)
    assert parse_retry_after_header(email.utils.formatdate(now - 50, usegmt=True), now=now) == 0.0
    assert parse_retry_after_header("soon", now=now) is None


# --- the retry loop ---------------------------------------------------------------------------

FAST = RetryPolicy(max_attempts=4, base_delay_s=0.001, max_delay_s=0.002, deadline_s=30.0)


async def test_transient_errors_are_retried_until_success() -> None:
    attempts: list[int] = []

    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise http_error(503)
        return "ok"

    assert await retry_call(FAST, "get_pool", flaky) == "ok"
    assert len(attempts) == 3


async def test_final_errors_are_raised_at_once() -> None:
    attempts: list[int] = []

    async def forbidden() -> None:
        attempts.append(1)
        raise http_error(403)

    with pytest.raises(HttpResponseError) as raised:
        await retry_call(FAST, "get_pool", forbidden)
    assert raised.value.status_code == 403  # the service's own answer, not a wrapper or another error
    assert len(attempts) == 1


async def test_the_last_error_is_raised_when_attempts_run_out() -> None:
    errors = [http_error(500), http_error(502), http_error(503), http_error(504)]
    calls = iter(errors)

    async def always_failing() -> None:
        raise next(calls)

    with pytest.raises(HttpResponseError) as raised:
        await retry_call(FAST, "create_job", always_failing)
    assert raised.value is errors[-1]


async def test_a_retry_after_beyond_the_deadline_stops_retrying() -> None:
    attempts: list[int] = []
    policy = RetryPolicy(max_attempts=10, base_delay_s=0.001, deadline_s=5.0)

    async def busy() -> None:
        attempts.append(1)
        raise http_error(503, {"Retry-After": "60"})

    with pytest.raises(HttpResponseError):
        await retry_call(policy, "list_tasks", busy)
    assert len(attempts) == 1


async def test_a_short_retry_after_is_honoured() -> None:
    attempts: list[int] = []

    async def throttled() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise http_error(429, {"retry-after-ms": "1"})
        return 5

    assert await retry_call(FAST, "list_tasks", throttled) == 5


async def test_a_hanging_call_is_cut_at_the_deadline() -> None:
    policy = RetryPolicy(max_attempts=3, deadline_s=0.05)

    async def hangs() -> None:
        await anyio.sleep_forever()

    with pytest.raises(TimeoutError):
        await retry_call(policy, "get_job", hangs)
