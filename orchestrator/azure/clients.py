"""The Azure SDK clients a run uses, built once per process, with request counting and one retry layer.

Every request on the wire is counted per service and per operation by a thin transport subclass,
so `run.completed` and the benchmarks report what a run really cost, retries included.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    DecodeError,
    DeserializationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob.aio import BlobServiceClient

from orchestrator.azure.entra import audience_refused, describe_token_failure, is_audience_error
from orchestrator.azure.proxies import EnvironmentProxyTransport
from orchestrator.azure.putblob import BlobService
from orchestrator.azure.retry import (
    SDK_RETRY_KWARGS,
    TRANSIENT_STATUSES,
    error_code_of,
    is_transient,
    response_headers,
    retry_call,
    status_code_of,
)
from orchestrator.azure.tls import connection_verify, trust_fix, untrusted_certificate
from orchestrator.errors import ConfigError, CredentialError, ServiceUnavailableError
from orchestrator.settings import Settings, env_var_name

BATCH = "batch"
STORAGE = "storage"

# The credential check is one request per service; a healthy service answers in milliseconds.
CHECK_TIMEOUT_S = 20.0


class RequestCounter:
    """Requests sent, per service and per operation (SDK method names where the request shows them)."""

    def __init__(self) -> None:
        self._counts: dict[str, Counter[str]] = {BATCH: Counter(), STORAGE: Counter()}
        # (operation, HTTP status or "error") per service, for the daemon's metrics.
        self._answers: dict[str, Counter[tuple[str, str]]] = {BATCH: Counter(), STORAGE: Counter()}

    def record(self, service: str, operation: str) -> None:
        self._counts.setdefault(service, Counter())[operation] += 1

    def record_answer(self, service: str, operation: str, status: str) -> None:
        self._answers.setdefault(service, Counter())[(operation, status)] += 1

    def answers(self, service: str) -> dict[tuple[str, str], int]:
        """Requests answered, by (operation, status): an HTTP status code, or "error" for no answer."""
        return dict(self._answers.get(service, Counter()))

    def total(self, service: str) -> int:
        return sum(self._counts.get(service, Counter()).values())

    def by_operation(self, service: str) -> dict[str, int]:
        return dict(sorted(self._counts.get(service, Counter()).items()))

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {service: self.by_operation(service) for service in sorted(self._counts)}


def _segments(path: str) -> list[str]:
    return [segment for segment in path.split("/") if segment]


def batch_operation(method: str, path: str) -> str:
    """The SDK operation behind a Batch REST request (`GET /jobs/j/taskcounts` -> get_job_task_counts)."""
    parts = _segments(path)
    shape = tuple(part if index % 2 == 0 else "*" for index, part in enumerate(parts))
    known: dict[tuple[str, tuple[str, ...]], str] = {
        ("POST", ("pools",)): "create_pool",
        ("GET", ("pools",)): "list_pools",
        ("GET", ("pools", "*")): "get_pool",
        ("HEAD", ("pools", "*")): "pool_exists",
        ("DELETE", ("pools", "*")): "delete_pool",
        ("PATCH", ("pools", "*")): "update_pool",
        ("POST", ("pools", "*", "resize")): "resize_pool",
        ("GET", ("pools", "*", "nodes")): "list_nodes",
        ("GET", ("pools", "*", "nodes", "*")): "get_node",
        ("GET", ("pools", "*", "nodes", "*", "files")): "list_node_files",
        ("GET", ("pools", "*", "nodes", "*", "files", "*")): "get_node_file",
        ("HEAD", ("pools", "*", "nodes", "*", "files", "*")): "get_node_file_properties",
        ("GET", ("supportedimages",)): "list_supported_images",
        ("POST", ("jobs",)): "create_job",
        ("GET", ("jobs",)): "list_jobs",
        ("GET", ("jobs", "*")): "get_job",
        ("PATCH", ("jobs", "*")): "update_job",
        ("PUT", ("jobs", "*")): "replace_job",
        ("DELETE", ("jobs", "*")): "delete_job",
        ("POST", ("jobs", "*", "terminate")): "terminate_job",
        ("POST", ("jobs", "*", "addtaskcollection")): "create_task_collection",
        ("POST", ("jobs", "*", "tasks")): "create_task",
        ("GET", ("jobs", "*", "tasks")): "list_tasks",
        ("GET", ("jobs", "*", "taskcounts")): "get_job_task_counts",
        ("GET", ("jobs", "*", "tasks", "*")): "get_task",
        ("POST", ("jobs", "*", "tasks", "*", "terminate")): "terminate_task",
        ("GET", ("jobs", "*", "tasks", "*", "files")): "list_task_files",
        ("GET", ("jobs", "*", "tasks", "*", "files", "*")): "get_task_file",
        ("HEAD", ("jobs", "*", "tasks", "*", "files", "*")): "get_task_file_properties",
    }
    return known.get((method, shape), f"{method} /{'/'.join(shape)}")


def storage_operation(method: str, path: str, query: str, account_in_path: bool) -> str:
    """The SDK operation behind a Blob REST request (`PUT /c/b` -> upload_blob)."""
    params = parse_qs(query, keep_blank_values=True)
    restype = params.get("restype", [""])[0]
    comp = params.get("comp", [""])[0]
    parts = _segments(path)
    if account_in_path:  # Azurite: /devstoreaccount1/container/blob
        parts = parts[1:]
    if restype == "service" and comp == "userdelegationkey":
        return "get_user_delegation_key"
    if not parts:
        return {"list": "list_containers", "properties": "get_service_properties"}.get(
            comp, f"{method} service"
        )
    if restype == "container" and len(parts) == 1:
        if comp == "list":
            return "list_blobs"
        return {
            "PUT": "create_container",
            "DELETE": "delete_container",
            "GET": "get_container_properties",
            "HEAD": "get_container_properties",
        }.get(method, f"{method} container")
    blob_ops = {
        ("PUT", ""): "upload_blob",
        ("PUT", "block"): "stage_block",
        ("PUT", "blocklist"): "commit_block_list",
        ("PUT", "metadata"): "set_blob_metadata",
        ("PUT", "properties"): "set_http_headers",
        ("GET", ""): "download_blob",
        ("HEAD", ""): "get_blob_properties",
        ("DELETE", ""): "delete_blob",
    }
    return blob_ops.get((method, comp), f"{method} blob comp={comp}" if comp else f"{method} blob")


# The counter of the run whose task tree sends a request (anyio tasks inherit it from their parent),
# so two runs sharing one process's clients each count only their own requests.
_run_requests: ContextVar[RequestCounter | None] = ContextVar("topn_run_requests", default=None)


@contextmanager
def run_requests(counter: RequestCounter) -> Iterator[RequestCounter]:
    """Count, in `counter` too, every request sent from this context (a run's task tree)."""
    token = _run_requests.set(counter)
    try:
        yield counter
    finally:
        _run_requests.reset(token)


@asynccontextmanager
async def unattributed_requests() -> AsyncIterator[None]:
    """Requests sent inside belong to the process (the pool keeper), not to the run that asked."""
    token = _run_requests.set(None)
    try:
        yield
    finally:
        _run_requests.reset(token)


class CountingTransport(EnvironmentProxyTransport):
    """aiohttp transport that records each request in the process's counter and the current run's."""

    def __init__(self, counter: RequestCounter, service: str, account_in_path: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._counter = counter
        self._service = service
        self._account_in_path = account_in_path
        self._ssl_configs: dict[tuple[Any, Any], Any] = {}

    def _build_ssl_config(self, cert: Any, verify: Any) -> Any:
        """azure-core's SSL setting for a request, built once per (cert, CA file) instead of per request.

        Given a CA file (`connection_verify`, from `[section] ca_file`), azure-core makes a new SSL context
        and re-reads the whole CA bundle for every request: 10-20 ms of CPU each, most of the
        orchestrator's cost per file (issue 13). The file does not change while the process runs.
        """
        key = (tuple(cert) if isinstance(cert, list | tuple) else cert, verify)
        if key not in self._ssl_configs:
            self._ssl_configs[key] = super()._build_ssl_config(cert, verify)
        return self._ssl_configs[key]

    async def send(self, request: Any, **config: Any) -> Any:
        parts = urlsplit(request.url)
        if self._service == BATCH:
            operation = batch_operation(request.method, parts.path)
        else:
            operation = storage_operation(request.method, parts.path, parts.query, self._account_in_path)
        self._counter.record(self._service, operation)
        run_counter = _run_requests.get()
        if run_counter is not None:
            run_counter.record(self._service, operation)
        status = "error"
        try:
            response = await super().send(request, **config)
            status = str(response.status_code)
            return response
        finally:
            self._counter.record_answer(self._service, operation, status)


@dataclass
class Clients:
    """Everything a run talks to Azure with (see docs/contracts.md)."""

    batch: BatchClient
    blob_service: BlobServiceClient
    storage_account_key: str | None = field(repr=False)
    token_credential: AsyncTokenCredential | None = field(repr=False)
    requests: RequestCounter


def _storage_account_in_path(blob_endpoint: str, account_name: str) -> bool:
    # Azurite (and other emulators) put the account in the path; Azure puts it in the host name.
    return _segments(urlsplit(blob_endpoint).path)[:1] == [account_name]


async def open_clients(
    settings: Settings, stack: AsyncExitStack, credential: AsyncTokenCredential | None = None
) -> Clients:
    """Build the Batch and Blob clients (shared key or Entra ID); `stack` closes them.

    With Entra ID the token credential is `credential` when given (an embedding application's own),
    else azure-identity's DefaultAzureCredential. `[batch] ca_file` / `[storage] ca_file`, when set,
    is what that client verifies its HTTPS endpoint against (a TLS-inspecting proxy's CA, or a local
    service's own certificate); unset, the system's trust store.
    """
    counter = RequestCounter()
    token_credential: AsyncTokenCredential | None = credential
    batch_verify = await anyio.to_thread.run_sync(connection_verify, settings, BATCH)
    storage_verify = await anyio.to_thread.run_sync(connection_verify, settings, STORAGE)
    if token_credential is None and "entra_id" in (settings.batch.auth, settings.storage.auth):
        # Imported here: azure-identity is only needed, and only worth its import time, with Entra ID.
        from azure.identity.aio import DefaultAzureCredential

        token_credential = DefaultAzureCredential()
        stack.push_async_callback(token_credential.close)

    batch_credential: Any
    if settings.batch.auth == "entra_id":
        batch_credential = token_credential
    else:
        assert settings.batch.account_key is not None  # settings validation guarantees it
        batch_credential = AzureNamedKeyCredential(settings.batch.account_name, settings.batch.account_key)
    batch = BatchClient(
        settings.batch.endpoint,
        batch_credential,
        transport=CountingTransport(
            counter, BATCH, account_in_path=False, **SDK_RETRY_KWARGS, **batch_verify
        ),
        **SDK_RETRY_KWARGS,
    )
    await stack.enter_async_context(batch)

    storage_credential: Any
    if settings.storage.auth == "entra_id":
        storage_credential = token_credential
    else:
        storage_credential = {
            "account_name": settings.storage.account_name,
            "account_key": settings.storage.account_key,
        }
    in_path = _storage_account_in_path(settings.storage.blob_endpoint, settings.storage.account_name)
    sdk_kwargs: dict[str, Any] = dict(SDK_RETRY_KWARGS, **storage_verify)
    blob_service = BlobService(
        settings.storage.blob_endpoint,
        credential=storage_credential,
        transport=CountingTransport(counter, STORAGE, account_in_path=in_path, **sdk_kwargs),
        putter_transport=(
            CountingTransport(counter, STORAGE, account_in_path=in_path, **sdk_kwargs)
            if settings.storage.auth == "shared_key"
            else None
        ),
        **sdk_kwargs,
    )
    await stack.enter_async_context(blob_service)
    return Clients(
        batch=batch,
        blob_service=blob_service,
        storage_account_key=settings.storage.account_key if settings.storage.auth == "shared_key" else None,
        token_credential=token_credential,
        requests=counter,
    )


def endpoint_port(endpoint: str) -> int:
    """The endpoint's port: the one it names, else its scheme's (0 means "not chosen yet")."""
    parts = urlsplit(endpoint)
    if parts.port is not None:
        return parts.port
    return 443 if parts.scheme == "https" else 80


async def accepts_connections(endpoint: str, timeout_s: float) -> bool:
    """Whether something accepts TCP connections at the endpoint's host and port, within `timeout_s`."""
    host = urlsplit(endpoint).hostname
    if not host or endpoint_port(endpoint) == 0:
        return False
    with anyio.move_on_after(timeout_s):
        try:
            stream = await anyio.connect_tcp(host, endpoint_port(endpoint))
        except OSError:
            return False
        await stream.aclose()
        return True
    return False


def response_header(exc: HttpResponseError, name: str) -> str | None:
    """A header of the error's response, by case-insensitive name."""
    return response_headers(exc).get(name.lower())


# The least-privilege built-in roles a run needs (docs/azure.md cites Microsoft's role pages): Batch
# pools, jobs and tasks are data actions, which the generic Contributor role does not grant.
BATCH_ROLE = "Azure Batch Data Contributor"
STORAGE_ROLE = "Storage Blob Data Contributor"


def _credential_fix(settings: Settings, section: str, token_problem: bool = False) -> str:
    auth = settings.batch.auth if section == "batch" else settings.storage.auth
    if auth == "entra_id" or token_problem:
        return (
            "Give DefaultAzureCredential an identity: `az login`, a managed identity where topn runs, "
            "or AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (docs/azure.md, section 2.1); "
            "and give that identity "
            + (BATCH_ROLE if section == "batch" else STORAGE_ROLE)
            + " on the account (the least-privilege built-in role for what a run does)."
        )
    return (
        f"Check {env_var_name(section, 'account_key')} (it must be this account's key) and "
        f"[{section}] account_name in {settings.source}."
    )


# What a 404 says when the right service answered for the right account: the probed pool or container
# is simply not there yet. Any other 404 (Azurite's ResourceNotFound for an unknown account in the
# path, a web server's page) means the endpoint is not the service or not the account.
EXPECTED_NOT_FOUND_CODES = {BATCH: "PoolNotFound", STORAGE: "ContainerNotFound"}

# The body format each service answers in: Batch speaks JSON (OData), Blob Storage speaks XML.
SERVICE_BODY_FORMATS = {BATCH: "json", STORAGE: "xml"}
SERVICE_NAMES = {BATCH: "Batch", STORAGE: "Blob Storage"}

# Statuses that show the request reached something other than the configured service or account.
WRONG_SERVICE_STATUSES = frozenset({400, 404, 405})

_BODY_DESCRIPTIONS = {
    "json": "a JSON body",
    "xml": "an XML body",
    "html": "an HTML page",
    "other": "a body in another format",
}

_PLAIN_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def body_format(content_type: str | None) -> str:
    """The kind of body a Content-Type announces: json, xml, html, none (no body) or other."""
    if not content_type or not content_type.strip():
        return "none"
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "text/html" or media_type == "application/xhtml+xml":
        return "html"
    if media_type.endswith("/json") or media_type.endswith("+json"):
        return "json"
    if media_type.endswith("/xml") or media_type.endswith("+xml"):
        return "xml"
    return "other"


def wrong_service_reason(
    service: str, status: int, content_type: str | None, error_code: str | None
) -> str | None:
    """Why an answer shows the endpoint is not the configured service or account, or None if it may be.

    Transient statuses are never judged here: a gateway's busy page is retried, not blamed on the address.
    """
    if status in TRANSIENT_STATUSES:
        return None
    answered = f"HTTP {status}"
    # Only a plain service error code is quoted: anything else could echo what the request carried.
    if error_code and _PLAIN_ERROR_CODE.fullmatch(error_code):
        answered += f" {error_code}"
    found = body_format(content_type)
    expected = SERVICE_BODY_FORMATS[service]
    if found not in (expected, "none"):
        return (
            f"it answered {answered} with {_BODY_DESCRIPTIONS[found]}, "
            f"where {SERVICE_NAMES[service]} answers with {_BODY_DESCRIPTIONS[expected]}"
        )
    if status in WRONG_SERVICE_STATUSES and not (
        status == 404 and error_code == EXPECTED_NOT_FOUND_CODES[service]
    ):
        return f"it answered {answered}"
    return None


class WrongServiceAnswer(Exception):
    """A success answer that the configured service would not give (raised only by the check's probes)."""


def _endpoint_fix(service: str) -> str:
    if service == BATCH:
        return (
            "Set it to the Batch account's URL (https://ACCOUNT.REGION.batch.azure.com, shown on the "
            "account's Overview page), or to the emulator's URL that `topn local up` prints."
        )
    return (
        "Set it to the storage account's blob URL (https://ACCOUNT.blob.core.windows.net), or for "
        "Azurite to http://HOST:PORT/ACCOUNT with the account name as the path (`topn local up` prints it)."
    )


# 401/403 codes that mean the credential itself is wrong (a bad key or token), not a missing right.
AUTHENTICATION_CODES = frozenset(
    {"AuthenticationFailed", "InvalidAuthenticationInfo", "InvalidAuthenticationTokenAudience", "HTTP 403"}
)


def _role(section: str) -> str:
    return BATCH_ROLE if section == "batch" else STORAGE_ROLE


def _translate_check_error(
    exc: Exception, settings: Settings, section: str, what: str = "the request"
) -> Exception | None:
    """The user-facing error for a failed credential check, or None if `exc` is not one we explain."""
    if section == "batch":
        account, endpoint, service = settings.batch.account_name, settings.batch.endpoint, "Batch"
    else:
        account, endpoint, service = settings.storage.account_name, settings.storage.blob_endpoint, "Storage"
    endpoint_key = "endpoint" if section == "batch" else "blob_endpoint"
    status = status_code_of(exc)
    where = (
        f"the {service} endpoint {endpoint} ({env_var_name(section, endpoint_key)}, "
        f"[{section}] {endpoint_key} in {settings.source})"
    )
    not_the_service = f"is not the {service} service for the account {account!r}"
    if isinstance(exc, HttpResponseError) and status is not None:
        reason = wrong_service_reason(
            section, status, response_header(exc, "content-type"), error_code_of(exc)
        )
        if reason is not None:
            return ConfigError(f"{where} {not_the_service}: {reason}. {_endpoint_fix(section)}")
    if isinstance(exc, WrongServiceAnswer):
        return ConfigError(f"{where} {not_the_service}: {exc}. {_endpoint_fix(section)}")
    if isinstance(exc, DecodeError | DeserializationError | json.JSONDecodeError):
        # A success status with a body the SDK cannot read: something answered, but not this service.
        return ConfigError(
            f"{where} {not_the_service}: its answer is not in the service's format "
            f"({type(exc).__name__}). {_endpoint_fix(section)}"
        )
    if isinstance(exc, ClientAuthenticationError) and status is None:
        # No response at all: azure-identity could not get a token (no login, no managed identity).
        return CredentialError(
            f"no Microsoft Entra ID token for the {service} account {account!r}: "
            f"{describe_token_failure(str(exc.message))}. "
            + _credential_fix(settings, section, token_problem=True)
        )
    if isinstance(exc, HttpResponseError) and status in (401, 403):
        code = error_code_of(exc) or f"HTTP {status}"
        auth = settings.batch.auth if section == "batch" else settings.storage.auth
        if auth == "entra_id" and is_audience_error(exc, code):
            return CredentialError(audience_refused(service, account, endpoint, code, section))
        # A shared key grants everything: only a token's identity can lack a right.
        if auth == "entra_id" and status == 403 and code not in AUTHENTICATION_CODES:
            # Authenticated, but not allowed: a role without this data action (or a network rule).
            return CredentialError(
                f"the {service} account {account!r} at {endpoint} refused {what} ({code}): the "
                f"identity lacks a data right a run needs. Give it {_role(section)} on the account "
                "(the least-privilege built-in role for what a run does), or check the account's "
                "network rules."
            )
        return CredentialError(
            f"the {service} account {account!r} at {endpoint} refused the credentials ({code}). "
            + _credential_fix(settings, section)
        )
    untrusted = untrusted_certificate(exc)
    if untrusted is not None:
        return ConfigError(
            f"{where} presented a certificate that is not trusted ({untrusted}). " + trust_fix(section)
        )
    if isinstance(exc, ServiceRequestError) and "non-TLS" in str(exc):
        return ConfigError(
            f'[{section}] auth = "entra_id" needs an https endpoint, but {endpoint} is http '
            f"(in {settings.source}). Use shared_key for local emulators."
        )
    if isinstance(exc, ServiceRequestError | ServiceResponseError | TimeoutError | ConnectionError):
        return ServiceUnavailableError(
            f"the {service} endpoint {endpoint} does not answer ({type(exc).__name__}). Check "
            f"{env_var_name(section, endpoint_key)} / {settings.source}"
            " and that the service is running (local mode: `topn local up`)."
        )
    return None


def _answered_busy(exc: BaseException) -> bool:
    return status_code_of(exc) is not None and is_transient(exc)


def _is_expected_not_found(exc: ResourceNotFoundError, service: str) -> bool:
    return (
        wrong_service_reason(service, 404, response_header(exc, "content-type"), error_code_of(exc)) is None
    )


async def check_credentials(clients: Clients, settings: Settings) -> None:
    """Cheap reads of what a run needs before anything is created: fail fast on a bad key or a missing right.

    Batch: the pool and one page of jobs (both data actions a run needs); Storage: a container's
    properties.

    A refused credential is never retried, and neither is an endpoint nobody answers on (almost
    always a wrong address); a service that answers "busy" (5xx, 429) is retried under the run's own
    retry policy, within CHECK_TIMEOUT_S.
    """
    check_policy = dataclasses.replace(
        settings.retry, deadline_s=min(settings.retry.deadline_s, CHECK_TIMEOUT_S)
    )

    async def probe_batch() -> None:
        # A missing pool still proves the request was authenticated, but only Batch's own PoolNotFound
        # in its own JSON does: another server's 404 is an endpoint that is not Batch.
        probing["batch"] = "reading the pool"
        try:
            await clients.batch.get_pool(settings.pool.id)
        except ResourceNotFoundError as exc:
            if not _is_expected_not_found(exc, BATCH):
                raise
        # Jobs are a data action of their own: a role that reads pools may still lack them, which a
        # run would otherwise find only when it creates its job. One page of one job id.
        probing["batch"] = "listing jobs"
        jobs = clients.batch.list_jobs(max_results=1, select=["id"])
        async for _ in jobs:
            break

    async def probe_storage() -> None:
        # Container properties: authenticated even when the container is missing (ContainerNotFound).
        # Not `exists()`: it turns every 404 into False, and a wrong account in an Azurite path is a 404
        # too (ResourceNotFound), which must fail here rather than at the first upload.
        probing["storage"] = "reading a container"
        container = clients.blob_service.get_container_client(f"{settings.storage.container_prefix}-input")
        answers: list[tuple[int, str | None]] = []

        def keep_answer(pipeline_response: Any) -> None:
            answer = pipeline_response.http_response
            answers.append((answer.status_code, answer.headers.get("Content-Type")))

        try:
            await container.get_container_properties(raw_response_hook=keep_answer)
        except ResourceNotFoundError as exc:
            if not _is_expected_not_found(exc, STORAGE):
                raise
            return
        # The SDK reads only headers from a success, so any web server's page would pass unread.
        status, content_type = answers[-1]
        reason = wrong_service_reason(STORAGE, status, content_type, None)
        if reason is not None:
            raise WrongServiceAnswer(reason)

    probing: dict[str, str] = {}
    for section, probe in (("batch", probe_batch), ("storage", probe_storage)):
        try:
            await retry_call(check_policy, f"check_credentials.{section}", probe, retry_if=_answered_busy)
        except Exception as exc:
            translated = _translate_check_error(exc, settings, section, probing.get(section, "the request"))
            if translated is None:
                raise
            raise translated from None
