"""Microsoft Entra ID end to end, against local services (issue 14, point 8).

The emulator serves HTTPS and accepts bearer tokens whose audience is the Batch resource; Azurite
3.37 (on the Node 22 that tools/entra-azurite installs) serves HTTPS with `--oauth basic`, and
hands out user delegation keys. Both use a self-signed certificate this fixture makes. A test
credential signs the tokens; everything else is topn's real path: the credential check, user
delegation SAS for the nodes, the pool, the job, the tasks and the results. The same run through
the `topn run` CLI, signed in by DefaultAzureCredential, is tests/e2e/test_entra_cli.py.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
import pytest_asyncio
from azure.core.credentials import AccessToken

from emulator.entra import sign_token
from orchestrator.azure.clients import check_credentials, open_clients
from orchestrator.errors import CredentialError
from orchestrator.inputs import discover_inputs
from orchestrator.journal import Journal
from orchestrator.run.pipeline import run_pipeline
from orchestrator.service.poolkeeper import PoolKeeper
from orchestrator.settings import Settings, load_settings
from tests.e2e.run_cli import seed_wheel_cache
from tests.entra_support import EntraServices, entra_services, token_claims

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[3]


class SignedTokens:
    """A token credential handed in by an embedding application: each token is for the scope asked."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.scopes: list[str] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        audience = scopes[0].removesuffix(".default").removesuffix("/") if scopes else ""
        if audience == "https://batch.core.windows.net":
            audience += "/"  # the Batch resource is spelled with its slash (its scope has two)
        claims = token_claims(audience)
        return AccessToken(sign_token(claims, self.key), claims["exp"])

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> SignedTokens:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None


@pytest_asyncio.fixture(loop_scope="session")
async def services(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[EntraServices]:
    async with entra_services(tmp_path, denied_operations=getattr(request, "param", "")) as started:
        yield started


def entra_settings(services: EntraServices, **extra: str) -> Settings:
    environ = {
        "TOPN_LOCAL_ENABLED": "false",
        "TOPN_LOCAL_STATE_DIR": str(services.folder / "state"),
        "TOPN_BATCH_ENDPOINT": services.batch_endpoint,
        "TOPN_BATCH_AUTH": "entra_id",
        "TOPN_BATCH_CA_FILE": str(services.ca_file),
        "TOPN_STORAGE_BLOB_ENDPOINT": services.blob_endpoint,
        "TOPN_STORAGE_AUTH": "entra_id",
        "TOPN_STORAGE_CA_FILE": str(services.ca_file),
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


async def test_a_whole_run_with_entra_id_for_both_services(services: EntraServices) -> None:
    assert services.batch_endpoint.startswith("https://")
    assert services.blob_endpoint.startswith("https://")
    folder = services.folder / "in"
    for relpath, text in TEXTS.items():
        (folder / relpath).parent.mkdir(parents=True, exist_ok=True)
        (folder / relpath).write_text(text, encoding="utf-8")
    settings = entra_settings(services)
    assert settings.batch.auth == settings.storage.auth == "entra_id"
    await _seed(settings.local.state_dir)
    credential = SignedTokens(services.token_key)
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
            services.folder / "out",
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


@pytest.mark.parametrize("services", ["list_jobs"], indirect=True)
async def test_an_identity_without_the_jobs_right_stops_at_the_credential_check(
    services: EntraServices,
) -> None:
    settings = entra_settings(services)
    async with AsyncExitStack() as stack:
        clients = await open_clients(settings, stack, credential=SignedTokens(services.token_key))
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
