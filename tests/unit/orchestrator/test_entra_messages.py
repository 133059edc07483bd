"""Entra ID sign-in errors in words (orchestrator/azure/entra.py), and `[section] ca_file` checks."""

from __future__ import annotations

import ssl
from dataclasses import replace
from pathlib import Path

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.azure.clients import _translate_check_error
from orchestrator.azure.entra import describe_token_failure, is_audience_error
from orchestrator.azure.tls import connection_verify, untrusted_certificate
from orchestrator.errors import ConfigError, CredentialError
from orchestrator.settings import Settings, load_settings
from tests.entra_support import self_signed_certificate

PROJECT = Path(__file__).resolve().parents[3]

# DefaultAzureCredential's message when App Service's identity endpoint does not answer (azure-identity
# 1.27, as a run prints it), and when nothing in the chain has an identity.
ENDPOINT_DOWN = (
    "DefaultAzureCredential failed to retrieve a token from the included credentials.\n"
    "Attempted credentials:\n"
    "\tEnvironmentCredential: EnvironmentCredential authentication unavailable. Environment variables "
    "are not fully configured.\n"
    "Visit https://aka.ms/azsdk/python/identity/environmentcredential/troubleshoot to troubleshoot "
    "this issue.\n"
    "\tWorkloadIdentityCredential: WorkloadIdentityCredential authentication unavailable. The workload "
    "options are not fully configured. See the troubleshooting guide for more information: "
    "https://aka.ms/azsdk/python/identity/workloadidentitycredential/troubleshoot. Missing required "
    "arguments: 'tenant_id', 'client_id', 'token_file_path'.\n"
    "\tManagedIdentityCredential: Cannot connect to host 127.0.0.1:9 ssl:default [Connect call failed "
    "('127.0.0.1', 9)]\n"
    "To mitigate this issue, please refer to the troubleshooting guidelines here at "
    "https://aka.ms/azsdk/python/identity/defaultazurecredential/troubleshoot."
)
NO_SIGN_IN = (
    "DefaultAzureCredential failed to retrieve a token from the included credentials.\n"
    "Attempted credentials:\n"
    "\tAzureCliCredential: Azure CLI not found on path\n"
    "\tAzurePowerShellCredential: PowerShell is not installed\n"
)


def entra_settings(**batch: object) -> Settings:
    base = load_settings(PROJECT / "config" / "local.toml", {})
    return replace(
        base,
        batch=replace(
            base.batch,
            endpoint="https://acct.westeurope.batch.azure.com",
            auth="entra_id",
            account_key=None,
            **batch,  # type: ignore[arg-type]
        ),
        storage=replace(
            base.storage,
            blob_endpoint="https://store.blob.core.windows.net",
            auth="entra_id",
            account_key=None,
        ),
    )


def test_each_attempted_source_is_named_with_its_reason_and_without_links() -> None:
    described = describe_token_failure(ENDPOINT_DOWN)
    assert described == (
        "DefaultAzureCredential tried EnvironmentCredential: authentication unavailable. Environment "
        "variables are not fully configured; WorkloadIdentityCredential: authentication unavailable. "
        "The workload options are not fully configured; ManagedIdentityCredential: Cannot connect to "
        "host 127.0.0.1:9 ssl:default [Connect call failed ('127.0.0.1', 9)]"
    )
    assert describe_token_failure(NO_SIGN_IN) == (
        "DefaultAzureCredential tried AzureCliCredential: Azure CLI not found on path; "
        "AzurePowerShellCredential: PowerShell is not installed"
    )


def test_a_message_in_another_shape_is_kept_short_on_one_line() -> None:
    assert describe_token_failure("no credential\nin the chain") == "no credential in the chain"
    assert len(describe_token_failure("x " * 1000)) <= 300


@given(st.lists(st.tuples(st.from_regex(r"\w{1,30}Credential", fullmatch=True), st.text()), max_size=6))
def test_any_chain_message_gives_one_line_no_longer_than_the_message(attempts: list[tuple[str, str]]) -> None:
    message = "DefaultAzureCredential failed.\n" + "".join(f"\t{name}: {why}\n" for name, why in attempts)
    described = describe_token_failure(message)
    assert not any(space in described for space in "\n\r\t\x0b\x0c")
    assert len(described) <= len(message) + len("DefaultAzureCredential tried ")


def test_the_missing_identity_error_lists_the_sources_and_the_fix() -> None:
    error = _translate_check_error(ClientAuthenticationError(ENDPOINT_DOWN), entra_settings(), "batch")
    assert isinstance(error, CredentialError) and error.exit_code == 2
    message = str(error)
    assert message.startswith("no Microsoft Entra ID token for the Batch account 'topnlocal': ")
    assert "ManagedIdentityCredential: Cannot connect to host 127.0.0.1:9" in message
    assert "`az login`, a managed identity where topn runs, or AZURE_TENANT_ID" in message
    assert "Azure Batch Data Contributor" in message
    assert "https://aka.ms" not in message


class FakeResponse:
    """Just enough of an HTTP response for azure-core's HttpResponseError."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status_code = status
        self.headers = headers
        self.reason = "refused"
        self.content_type = "application/json"

    def text(self) -> str:
        return ""


@pytest.mark.parametrize(
    ("section", "status", "code", "text", "resource"),
    [
        # Batch names the problem by its code.
        (
            "batch",
            401,
            "InvalidAuthenticationTokenAudience",
            "Server failed",
            "https://batch.core.windows.net/",
        ),
        # Storage answers with a general code and says "audience" in its message.
        (
            "storage",
            401,
            "InvalidAuthenticationInfo",
            "Audience validation failed.",
            "https://storage.azure.com/",
        ),
        ("storage", 403, "AuthenticationFailed", "Invalid token audience.", "https://storage.azure.com/"),
    ],
)
def test_a_token_for_another_audience_names_the_expected_resource(
    section: str, status: int, code: str, text: str, resource: str
) -> None:
    refused = HttpResponseError(message=text, response=FakeResponse(status, {"x-ms-error-code": code}))
    assert is_audience_error(refused, code)
    error = _translate_check_error(refused, entra_settings(), section)
    assert isinstance(error, CredentialError)
    assert f"refused the token ({code}): it was issued for another audience than {resource}" in str(error)


def test_a_refusal_about_something_else_is_not_an_audience_error() -> None:
    refused = HttpResponseError(
        message="Server failed to authenticate the request.",
        response=FakeResponse(401, {"x-ms-error-code": "AuthenticationFailed"}),
    )
    assert not is_audience_error(refused, "AuthenticationFailed")
    error = _translate_check_error(refused, entra_settings(), "batch")
    assert isinstance(error, CredentialError)
    assert "refused the credentials (AuthenticationFailed)" in str(error)


def test_no_ca_file_leaves_the_system_trust_store() -> None:
    assert connection_verify(entra_settings(), "batch") == {}


def test_a_ca_file_is_what_the_transport_verifies_against(tmp_path: Path) -> None:
    cert_file, _ = self_signed_certificate(tmp_path)
    settings = entra_settings(ca_file=cert_file)
    assert connection_verify(settings, "batch") == {"connection_verify": str(cert_file)}
    assert connection_verify(settings, "storage") == {}  # each service has its own key


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "it cannot be read (No such file or directory)"), (b"not a certificate\n", "it holds no PEM")],
)
def test_an_unusable_ca_file_is_a_config_error_naming_the_key(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    ca_file = tmp_path / "ca.pem"
    if content is not None:
        ca_file.write_bytes(content)
    with pytest.raises(ConfigError) as refused:
        connection_verify(entra_settings(ca_file=ca_file), "batch")
    message = str(refused.value)
    assert message.startswith(f"[batch] ca_file '{ca_file}'") and "TOPN_BATCH_CA_FILE" in message
    assert problem in message
    assert refused.value.exit_code == 2


def test_ca_file_comes_from_the_environment_as_a_path(tmp_path: Path) -> None:
    settings = load_settings(
        PROJECT / "config" / "local.toml",
        {"TOPN_BATCH_CA_FILE": str(tmp_path / "a.pem"), "TOPN_STORAGE_CA_FILE": str(tmp_path / "b.pem")},
    )
    assert settings.batch.ca_file == tmp_path / "a.pem"
    assert settings.storage.ca_file == tmp_path / "b.pem"
    assert f"ca_file={tmp_path / 'a.pem'!r}" in repr(settings.batch)
    assert load_settings(PROJECT / "config" / "local.toml", {}).batch.ca_file is None


def test_a_refused_certificate_is_found_under_the_sdk_error_and_names_ca_file() -> None:
    refused = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    wrapped = ServiceRequestError("Cannot connect to host", error=refused)
    assert untrusted_certificate(wrapped) == "certificate verify failed"
    error = _translate_check_error(wrapped, entra_settings(), "storage")
    assert isinstance(error, ConfigError) and error.exit_code == 2
    message = str(error)
    assert message.startswith("the Storage endpoint https://store.blob.core.windows.net (TOPN_STORAGE_")
    assert "presented a certificate that is not trusted (certificate verify failed)" in message
    assert "[storage] ca_file (TOPN_STORAGE_CA_FILE)" in message


def test_a_connection_that_failed_otherwise_is_not_a_certificate_problem() -> None:
    refused_connection = ServiceRequestError("Cannot connect", error=ConnectionRefusedError(111, "refused"))
    assert untrusted_certificate(refused_connection) is None
    assert untrusted_certificate(ssl.SSLError(1, "wrong version number")) is None
