"""Request naming and counting, client construction for both auth modes, and credential-error wording."""

from __future__ import annotations

import ssl
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import certifi
import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
)

from orchestrator.azure.clients import (
    BATCH,
    STORAGE,
    CountingTransport,
    RequestCounter,
    _translate_check_error,
    batch_operation,
    open_clients,
    storage_operation,
)
from orchestrator.errors import ConfigError, CredentialError, ServiceUnavailableError
from orchestrator.settings import Settings, load_settings

PROJECT = Path(__file__).resolve().parents[3]


def local_settings() -> Settings:
    return load_settings(PROJECT / "config" / "local.toml", {})


def entra_id_settings() -> Settings:
    """The local settings pointed at (unreachable) Azure endpoints, Microsoft Entra ID for both services."""
    base = local_settings()
    return replace(
        base,
        batch=replace(
            base.batch, endpoint="https://acct.westeurope.batch.azure.com", auth="entra_id", account_key=None
        ),
        storage=replace(
            base.storage,
            blob_endpoint="https://store.blob.core.windows.net",
            auth="entra_id",
            account_key=None,
        ),
    )


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/pools", "create_pool"),
        ("GET", "/pools/topn-local", "get_pool"),
        ("HEAD", "/pools/topn-local", "pool_exists"),
        ("GET", "/pools/p/nodes", "list_nodes"),
        ("POST", "/jobs", "create_job"),
        ("PATCH", "/jobs/topn-r", "update_job"),
        ("DELETE", "/jobs/topn-r", "delete_job"),
        ("POST", "/jobs/topn-r/terminate", "terminate_job"),
        ("POST", "/jobs/topn-r/addtaskcollection", "create_task_collection"),
        ("GET", "/jobs/topn-r/tasks", "list_tasks"),
        ("GET", "/jobs/topn-r/taskcounts", "get_job_task_counts"),
        ("GET", "/jobs/topn-r/tasks/t000001", "get_task"),
        ("GET", "/jobs/topn-r/tasks/t000001/files/stderr.txt", "get_task_file"),
        ("GET", "/jobs/j/tasks/t/files/wd%2Fout.txt", "get_task_file"),
        ("HEAD", "/jobs/j/tasks/t/files/stderr.txt", "get_task_file_properties"),
        ("GET", "/supportedimages", "list_supported_images"),
        ("GET", "/pools/p/nodes/n/files/startup%2Fstderr.txt", "get_node_file"),
        ("OPTIONS", "/jobs/j", "OPTIONS /jobs/*"),
    ],
)
def test_batch_requests_are_named_like_the_sdk_methods(method: str, path: str, expected: str) -> None:
    assert batch_operation(method, path) == expected


@pytest.mark.parametrize(
    ("method", "path", "query", "in_path", "expected"),
    [
        ("PUT", "/devstoreaccount1/topn-input", "restype=container", True, "create_container"),
        ("PUT", "/topn-input", "restype=container", False, "create_container"),
        ("DELETE", "/topn-out-r", "restype=container", False, "delete_container"),
        ("HEAD", "/devstoreaccount1/topn-input", "restype=container", True, "get_container_properties"),
        ("GET", "/topn-out-r", "restype=container&comp=list&prefix=counts%2F", False, "list_blobs"),
        ("PUT", "/devstoreaccount1/topn-input/runs/r/a%20b.txt", "", True, "upload_blob"),
        ("PUT", "/topn-input/runs/r/big.txt", "comp=block&blockid=AAA", False, "stage_block"),
        ("PUT", "/topn-input/runs/r/big.txt", "comp=blocklist", False, "commit_block_list"),
        ("GET", "/topn-out-r/a_OUTPUT.txt", "", False, "download_blob"),
        ("HEAD", "/topn-input/runs/r/a.txt", "", False, "get_blob_properties"),
        ("DELETE", "/topn-input/runs/r/a.txt", "", False, "delete_blob"),
        ("POST", "/", "restype=service&comp=userdelegationkey", False, "get_user_delegation_key"),
        ("GET", "/devstoreaccount1", "comp=list", True, "list_containers"),
    ],
)
def test_storage_requests_are_named_like_the_sdk_methods(
    method: str, path: str, query: str, in_path: bool, expected: str
) -> None:
    assert storage_operation(method, path, query, in_path) == expected


def test_the_counter_totals_per_service_and_operation() -> None:
    counter = RequestCounter()
    for operation in ("list_tasks", "get_job_task_counts", "list_tasks"):
        counter.record(BATCH, operation)
    counter.record(STORAGE, "upload_blob")
    assert counter.total(BATCH) == 3
    assert counter.total(STORAGE) == 1
    assert counter.by_operation(BATCH) == {"get_job_task_counts": 1, "list_tasks": 2}
    assert counter.snapshot() == {
        "batch": {"get_job_task_counts": 1, "list_tasks": 2},
        "storage": {"upload_blob": 1},
    }


async def test_shared_key_clients_are_built_without_any_request() -> None:
    settings = replace(
        local_settings(),
        batch=replace(local_settings().batch, endpoint="http://127.0.0.1:9"),
        storage=replace(local_settings().storage, blob_endpoint="http://127.0.0.1:9/devstoreaccount1"),
    )
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        assert clients.token_credential is None
        assert clients.storage_account_key == settings.storage.account_key
        assert clients.requests.total(BATCH) == 0
        assert settings.storage.account_key not in repr(clients)


async def test_entra_id_clients_use_a_token_credential_and_no_key() -> None:
    settings = entra_id_settings()
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        assert clients.token_credential is not None
        assert clients.storage_account_key is None
        assert hasattr(clients.token_credential, "get_token")


class FakeResponse:
    def __init__(self, status_code: int, headers: dict[str, str]) -> None:
        self.status_code = status_code
        self.headers = headers
        self.reason = "Forbidden"

    def text(self) -> str:
        return ""


def test_a_refused_key_names_the_account_and_the_variable_to_fix() -> None:
    settings = local_settings()
    refused = HttpResponseError(
        message="Server failed to authenticate the request.",
        response=FakeResponse(403, {"x-ms-error-code": "AuthenticationFailed"}),
    )
    error = _translate_check_error(refused, settings, "storage")
    assert isinstance(error, CredentialError)
    message = str(error)
    assert "devstoreaccount1" in message and "TOPN_STORAGE_ACCOUNT_KEY" in message
    assert "AuthenticationFailed" in message
    assert settings.storage.account_key is not None and settings.storage.account_key not in message


def test_a_missing_identity_is_a_credential_error() -> None:
    error = _translate_check_error(
        ClientAuthenticationError("no credential in the chain"), local_settings(), "batch"
    )
    assert isinstance(error, CredentialError)
    assert "az login" in str(error)


def test_a_dead_endpoint_is_service_unavailable_and_named() -> None:
    error = _translate_check_error(ServiceRequestError("Cannot connect"), local_settings(), "batch")
    assert isinstance(error, ServiceUnavailableError)
    assert "http://127.0.0.1:0" in str(error) and "TOPN_BATCH_ENDPOINT" in str(error)


def test_bearer_over_http_is_a_configuration_error() -> None:
    refusal = ServiceRequestError("Bearer token authentication is not permitted for non-TLS protected URLs.")
    error = _translate_check_error(refusal, local_settings(), "batch")
    assert isinstance(error, ConfigError) and "https" in str(error)


def test_other_errors_are_not_explained_away() -> None:
    assert _translate_check_error(ValueError("bug"), local_settings(), "batch") is None


class NoIdentity:
    """Stands in for DefaultAzureCredential on a machine with no login and no managed identity."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []
        self.closed = False

    async def get_token(self, *scopes: str, **kwargs: object) -> object:
        from azure.identity import CredentialUnavailableError

        self.scopes.append(scopes)
        raise CredentialUnavailableError("DefaultAzureCredential failed to retrieve a token")

    async def get_token_info(self, *scopes: str, options: object = None) -> object:
        return await self.get_token(*scopes)

    async def close(self) -> None:
        self.closed = True


async def test_entra_id_without_an_identity_is_a_credential_error_before_any_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import azure.identity.aio

    from orchestrator.azure.clients import check_credentials

    identity = NoIdentity()
    monkeypatch.setattr(azure.identity.aio, "DefaultAzureCredential", lambda: identity)
    settings = entra_id_settings()
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack)
        with pytest.raises(CredentialError) as raised:
            await check_credentials(clients, settings)
        assert clients.requests.total(BATCH) == 0  # the token was refused before anything was sent
    assert "az login" in str(raised.value) and "'topnlocal'" in str(raised.value)
    assert identity.scopes and identity.scopes[0][0].startswith("https://batch.core.windows.net")
    assert identity.closed  # the stack closed the credential


def test_the_ssl_context_for_a_ca_file_is_built_once_not_per_request() -> None:
    """azure-core re-reads the CA bundle for every request given one; the counting transport keeps one."""
    transport = CountingTransport(RequestCounter(), "storage", account_in_path=True)
    first = transport._build_ssl_config(None, certifi.where())
    assert isinstance(first, ssl.SSLContext) and first.verify_mode == ssl.CERT_REQUIRED
    assert first.cert_store_stats()["x509_ca"] > 0  # the CA file's certificates are in it
    assert transport._build_ssl_config(None, certifi.where()) is first
    assert transport._build_ssl_config(None, True) is True  # no CA file: aiohttp's default, as before
