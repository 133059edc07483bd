"""`topn run` with auth = "entra_id" for Batch and Storage, as a user runs it (issue 14, point 8).

topn runs as a subprocess and signs in the way it does in production: DefaultAzureCredential, with
no credential handed in. What it finds is a managed identity: the App Service variables
`IDENTITY_ENDPOINT` and `IDENTITY_HEADER` point at an endpoint this test runs (tests/entra_support.py),
which mints a token per resource. The emulator checks each Batch token's signature and audience,
Azurite (`--oauth basic`) each Storage token's issuer, audience and lifetime; both serve HTTPS with
a certificate the test makes, which topn trusts through `[batch] ca_file` / `[storage] ca_file`, or
through OpenSSL's own `SSL_CERT_FILE`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.e2e.fault_support import LiveRun, run_topn_live
from tests.e2e.run_cli import output_rows, reference_top, seed_wheel_cache
from tests.e2e.storage_role_check import storage_role_check
from tests.entra_support import (
    BATCH_RESOURCE,
    STORAGE_RESOURCE,
    EntraServices,
    IdentityEndpoint,
    entra_services,
    identity_endpoint,
    without_credential_variables,
)
from tests.secret_scan import find_secrets, texts_under

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(240)]

TEXTS = {
    "a.txt": "red green red blue red\n",
    "sub/b.txt": "green green blue\n",
    "c.txt": "one two two three three three\n",
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def services(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EntraServices]:
    """One emulator and one Azurite for the module: each test has its own pool, state and identity."""
    async with entra_services(tmp_path_factory.mktemp("entra-services")) as started:
        yield started


def entra_environment(
    services: EntraServices, state_dir: Path, identity: dict[str, str], trust: str = "ca_file"
) -> dict[str, str]:
    """The user's environment, signed in only through `identity`, with topn pointed at the services.

    `trust` is how topn is told to trust the services' certificate: its own `ca_file` keys, or
    OpenSSL's `SSL_CERT_FILE` (the system trust store's override, which needs no topn setting), or
    not at all ("system").
    """
    keep = {
        name: value
        for name, value in without_credential_variables(os.environ).items()
        if not name.startswith("TOPN_")
    }
    seed_wheel_cache(state_dir)
    ca_file = str(services.ca_file)
    trusted = {
        "ca_file": {"TOPN_BATCH_CA_FILE": ca_file, "TOPN_STORAGE_CA_FILE": ca_file},
        "SSL_CERT_FILE": {"SSL_CERT_FILE": ca_file},
        "system": {},  # the machine's trust store only, which has never seen the test's certificate
    }[trust]
    return {
        **keep,
        **identity,
        **trusted,
        "TOPN_LOCAL_ENABLED": "false",
        "TOPN_LOCAL_STATE_DIR": str(state_dir),
        "TOPN_BATCH_ENDPOINT": services.batch_endpoint,
        "TOPN_BATCH_AUTH": "entra_id",
        "TOPN_STORAGE_BLOB_ENDPOINT": services.blob_endpoint,
        "TOPN_STORAGE_AUTH": "entra_id",
        "TOPN_POOL_ID": f"entra-cli-{uuid.uuid4().hex[:8]}",
        "TOPN_POOL_DEDICATED_NODES": "1",
        "TOPN_RUN_POLL_MIN_S": "0.1",
        "TOPN_RUN_POLL_MAX_S": "0.5",
    }


def write_texts(folder: Path) -> None:
    for relpath, text in TEXTS.items():
        path = folder / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def leaks(run: LiveRun, folder: Path, identity: IdentityEndpoint | None) -> list[str]:
    """Keys, SAS signatures and tokens (the minted ones, and any bearer token) in what topn left."""
    minted = [] if identity is None else [*identity.minted, identity.header]
    return find_secrets([("stdout", run.stdout), ("stderr", run.stderr), *texts_under(folder)], minted)


@pytest.mark.parametrize("trust", ["ca_file", "SSL_CERT_FILE"])
async def test_topn_run_signs_in_with_a_managed_identity_for_both_services(
    trust: str, services: EntraServices, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    write_texts(work / "texts")
    async with identity_endpoint(services.token_key) as identity:
        env = entra_environment(services, work / ".topn", identity.environment(), trust)
        run = await run_topn_live(["run", "texts", "--out", "results", "--top", "3", "--json"], work, env)
    assert run.exit_code == 0, run.stderr[-3000:]
    summary = run.summary()
    assert summary["state"] == "SUCCEEDED"
    in_input_order = [TEXTS[relpath] for relpath in sorted(TEXTS)]
    assert summary["top"] == reference_top(in_input_order, "words", 3)
    files = {entry["path"]: entry for entry in summary["files"]}
    assert set(files) == set(TEXTS)
    for relpath, text in TEXTS.items():
        assert files[relpath]["status"] == "succeeded"
        expected = reference_top([text], "words", 3)
        assert files[relpath]["top"] == expected
        assert output_rows(work / "results" / (relpath.rsplit(".", 1)[0] + "_OUTPUT.txt")) == expected
    # The tokens came from the identity endpoint, one resource per service, and nothing was refused.
    assert identity.refused == []
    assert set(identity.resources) == {BATCH_RESOURCE, STORAGE_RESOURCE}
    assert leaks(run, work, identity) == []


@pytest.mark.parametrize(
    ("resource", "service"),
    [(BATCH_RESOURCE, "Batch"), (STORAGE_RESOURCE, "Storage")],
    ids=["batch", "storage"],
)
async def test_a_token_for_another_audience_stops_at_the_credential_check(
    resource: str, service: str, services: EntraServices, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    write_texts(work / "texts")
    # The endpoint answers for Azure Resource Manager when asked for this service's resource.
    wrong = {resource: "https://management.azure.com/"}
    async with identity_endpoint(services.token_key, wrong_audiences=wrong) as identity:
        env = entra_environment(services, work / ".topn", identity.environment())
        run = await run_topn_live(["run", "texts", "--out", "results"], work, env)
    assert run.exit_code == 2, run.stderr[-3000:]
    failed = [event for event in run.events() if event["event"] == "command.failed"]
    assert len(failed) == 1, run.stderr[-3000:]
    message = failed[0]["error"]
    assert failed[0]["error_type"] == "CredentialError"
    assert message.startswith(f"the {service} account "), message
    # The audience the service expects, and where to look for the identity that got the token.
    assert f"another audience than {resource.rstrip('/')}/" in message
    assert "IDENTITY_ENDPOINT" in message
    assert resource in identity.resources  # it did ask the endpoint
    assert not (work / "results").exists()
    assert leaks(run, work, identity) == []


async def test_no_identity_anywhere_is_a_clear_exit_2(services: EntraServices, tmp_path: Path) -> None:
    work = tmp_path / "work"
    write_texts(work / "texts")
    # App Service's variables name an endpoint nobody listens on (the identity is not enabled).
    async with identity_endpoint(services.token_key) as gone:
        closed = gone.environment()
    env = entra_environment(services, work / ".topn", closed)
    run = await run_topn_live(["run", "texts", "--out", "results"], work, env)
    assert run.exit_code == 2, run.stderr[-3000:]
    failed = [event for event in run.events() if event["event"] == "command.failed"]
    assert len(failed) == 1, run.stderr[-3000:]
    message = failed[0]["error"]
    assert failed[0]["error_type"] == "CredentialError"
    assert "no Microsoft Entra ID token" in message
    assert "ManagedIdentityCredential" in message
    assert "az login" in message
    assert not (work / "results").exists()
    assert leaks(run, work, None) == []


async def test_an_untrusted_certificate_is_a_clear_exit_2_naming_ca_file(
    services: EntraServices, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    write_texts(work / "texts")
    async with identity_endpoint(services.token_key) as identity:
        env = entra_environment(services, work / ".topn", identity.environment(), trust="system")
        run = await run_topn_live(["run", "texts", "--out", "results"], work, env)
    assert run.exit_code == 2, run.stderr[-3000:]
    failed = [event for event in run.events() if event["event"] == "command.failed"]
    assert len(failed) == 1, run.stderr[-3000:]
    message = failed[0]["error"]
    assert failed[0]["error_type"] == "ConfigError"
    assert message.startswith(f"the Batch endpoint {services.batch_endpoint} "), message
    assert "presented a certificate that is not trusted (self" in message  # OpenSSL: self-signed
    assert "[batch] ca_file (TOPN_BATCH_CA_FILE)" in message
    assert not (work / "results").exists()
    assert leaks(run, work, identity) == []


async def test_a_storage_identity_without_the_data_right_stops_at_the_credential_check(
    services: EntraServices, tmp_path: Path
) -> None:
    """Issue 14, point 7: the identity's Storage role lacks the data right to read containers (Azurite
    authenticates its token; tests/e2e/storage_role_check.py then refuses as Storage's role check
    does). The run stops at the credential check, exit 2, naming the least-privilege role. The Batch
    half is test_entra_id.py::test_an_identity_without_the_jobs_right_stops_at_the_credential_check."""
    work = tmp_path / "work"
    write_texts(work / "texts")
    key_file = services.folder / "key.pem"  # the services' certificate key (tests/entra_support.py)
    async with (
        storage_role_check(services.blob_endpoint, services.ca_file, key_file) as (check, blob_endpoint),
        identity_endpoint(services.token_key) as identity,
    ):
        env = entra_environment(services, work / ".topn", identity.environment())
        env["TOPN_STORAGE_BLOB_ENDPOINT"] = blob_endpoint
        run = await run_topn_live(["run", "texts", "--out", "results"], work, env)
    assert run.exit_code == 2, run.stderr[-3000:]
    failed = [event for event in run.events() if event["event"] == "command.failed"]
    assert len(failed) == 1, run.stderr[-3000:]
    assert failed[0]["error_type"] == "CredentialError"
    message = failed[0]["error"]
    assert message.startswith(
        f"the Storage account 'devstoreaccount1' at {blob_endpoint} refused reading a container "
        "(AuthorizationPermissionMismatch): the identity lacks a data right a run needs. "
        "Give it Storage Blob Data Contributor on the account"
    ), message
    assert "Azure Batch Data Contributor" not in message  # Batch passed its half of the check
    # One Storage request, which Azurite authenticated (the token was fine) before the role refused it.
    assert check.seen in ([("container read", 404)], [("container read", 200)]), check.seen
    assert set(identity.resources) == {BATCH_RESOURCE, STORAGE_RESOURCE}
    assert not (work / "results").exists()
    assert leaks(run, work, identity) == []
