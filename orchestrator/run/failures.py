"""Why a run stopped, in words the user can act on: which deadline, which service, which endpoint."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

from orchestrator.azure import submit
from orchestrator.azure.clients import accepts_connections
from orchestrator.azure.retry import retry_limit_of
from orchestrator.errors import RunFailedError, ServiceUnavailableError, TopnError
from orchestrator.settings import Settings

PROBE_TIMEOUT_S = 3.0


class RunDeadlineError(RunFailedError):
    """The run reached `[run] run_timeout_s`; it stays resumable."""


async def explain(error: BaseException, settings: Settings, run_started: float) -> BaseException:
    """The error the user sees: ours as is; a deadline, a dead endpoint or a service error explained.

    `run_started` is the run's time.monotonic() start: a timeout at or past `run_timeout_s` is the
    run's deadline, any other is a request that got no answer.
    """
    if isinstance(error, TopnError):
        return error
    run_timeout_s = settings.run.run_timeout_s
    if isinstance(error, TimeoutError) and time.monotonic() - run_started >= run_timeout_s:
        return RunDeadlineError(
            f"the run did not finish within [run] run_timeout_s = {run_timeout_s:.0f} s; "
            "raise it, or add nodes to the pool"
        )
    if isinstance(error, TimeoutError | ServiceRequestError | ServiceResponseError):
        named = _service_named_in(settings, str(error)) or await _unreachable_service(settings)
        if named is not None:
            service, endpoint = named
            return ServiceUnavailableError(
                f"the {service} endpoint {endpoint} stopped answering ({type(error).__name__}) "
                f"{_retry_limit(error, settings)}; check that it is running and reachable, then run again"
            )
        return ServiceUnavailableError(
            f"a request got no answer {_retry_limit(error, settings)} ({type(error).__name__}); check the "
            f"Batch endpoint {settings.batch.endpoint} and the Storage endpoint "
            f"{settings.storage.blob_endpoint}, then run again"
        )
    if isinstance(error, HttpResponseError):
        request = getattr(error.response, "request", None)
        named = _service_named_in(settings, str(getattr(request, "url", "")))
        service = named[0] if named is not None else "Batch or Storage"
        return RunFailedError(f"a {service} request failed: {submit.describe_http_error(error)}")
    return error


def _retry_limit(error: BaseException, settings: Settings) -> str:
    """Which [retry] limit ended the retries: the one that did, not always the deadline."""
    if retry_limit_of(error) == "max_attempts":
        return f"after [retry] max_attempts = {settings.retry.max_attempts} attempts"
    return f"within the retry deadline ([retry] deadline_s = {settings.retry.deadline_s:.0f} s)"


def _services(settings: Settings) -> list[tuple[str, str]]:
    return [("Batch", settings.batch.endpoint), ("Storage", settings.storage.blob_endpoint)]


def _service_named_in(settings: Settings, text: str) -> tuple[str, str] | None:
    """The service whose host:port appears in `text` (connection errors quote the address)."""
    for service, endpoint in _services(settings):
        if urlsplit(endpoint).netloc and urlsplit(endpoint).netloc in text:
            return service, endpoint
    return None


async def _unreachable_service(settings: Settings) -> tuple[str, str] | None:
    """The first service that refuses a TCP connection now (a quick probe, after the fact)."""
    for service, endpoint in _services(settings):
        if urlsplit(endpoint).hostname is None:
            continue
        if not await accepts_connections(endpoint, PROBE_TIMEOUT_S):
            return service, endpoint
    return None
