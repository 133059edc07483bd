"""What finished runs leave in local mode's data, and how it goes: `topn local prune`, and the
end of a run with `delete_run_blobs = true`.

Azurite (`--location`) keeps blob bytes in shared extent files of up to 64 MB. Deleting a blob or a
container removes it from Azurite's database at once, but the extent file goes only when Azurite's
own mark-and-sweep finds it unreferenced: at Azurite's start and every 10 minutes while it runs
(its code skips extents written in the last 10 minutes), and never while one live blob still has a
chunk in it. Measured with Azurite 3.35: a 3 MB extent whose only blob's container was deleted was
gone at the next start; a 6 MB extent shared by a deleted and a live 3 MB blob stayed through
restarts 12 minutes later. A local run's Azurite lives seconds, so deleted data waits at best for a
later start, and data sharing an extent with a kept blob (the node bundle, another run's inputs)
stays.
topn therefore goes further when it can prove nothing in Azurite is needed: when, after the
deletions, only the node bundle (`<prefix>-app`, uploaded again by the next run that needs it) is
left and no other process uses the Azurite it stopped, its whole data folder is removed.

The emulator's node folders (`local/emulator/<pool>/<node>/`) belong to one emulator process each:
a new emulator makes new nodes, so the folders of earlier ones are scratch (task folders of kept
jobs, copies of node.pyz) that `prune` removes while no emulator runs on the state folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import anyio
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob.aio import BlobServiceClient

from orchestrator import naming
from orchestrator.journal import Journal
from orchestrator.journal.schema import journal_path
from orchestrator.local import processes

RUN_INPUTS_ROOT = "runs/"  # naming.run_input_prefix: the input container holds `runs/<run_id>/...`


@dataclass(frozen=True)
class Removed:
    """One thing `prune` removed and the bytes it held."""

    what: str
    size_bytes: int
    on_disk: bool = True  # False: blobs deleted in Azurite, whose files its garbage collection frees


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files below `path` (symlinks not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                status = (Path(root) / name).lstat()
                total += status.st_size if stat.S_ISREG(status.st_mode) else 0
    return total


async def unfinished_run_ids(state_dir: Path) -> set[str]:
    """Runs the journal does not know as finished: their blobs may still be needed (resume)."""
    if not await anyio.Path(journal_path(state_dir)).exists():
        return set()
    async with await Journal.open_for_reading(journal_path(state_dir)) as journal:
        return {run.run_id for run in await journal.list_run_summaries() if not run.is_finished}


def azurite_client(endpoint: str) -> BlobServiceClient:
    """A client of local mode's Azurite, with its documented development key."""
    key = {"account_name": processes.AZURITE_ACCOUNT_NAME, "account_key": processes.AZURITE_ACCOUNT_KEY}
    return BlobServiceClient(endpoint, credential=key, retry_total=2)


async def delete_finished_runs_blobs(client: BlobServiceClient, prefix: str, keep: set[str]) -> list[Removed]:
    """Delete the input and output containers of every run not in `keep` (and older runs' staged inputs)."""
    removed: list[Removed] = []
    for per_run in (naming.input_container(prefix, ""), naming.output_container(prefix, "")):
        # "<prefix>-in-" / "<prefix>-out-", then the run id
        async for container in client.list_containers(name_starts_with=per_run):
            run_id = str(container.name)[len(per_run) :]
            if run_id in keep:
                continue
            size = await _container_bytes(client, str(container.name))
            with contextlib.suppress(ResourceNotFoundError):
                await client.delete_container(str(container.name))
            removed.append(Removed(f"Azurite container {container.name}", size, on_disk=False))
    removed += await _delete_shared_container_inputs(client, prefix, keep)
    return removed


async def _delete_shared_container_inputs(
    client: BlobServiceClient, prefix: str, keep: set[str]
) -> list[Removed]:
    """Runs staged before each run had its own input container kept theirs in `<prefix>-input`."""
    removed: list[Removed] = []
    inputs = client.get_container_client(f"{prefix}-input")
    by_run: dict[str, list[tuple[str, int]]] = {}
    with contextlib.suppress(ResourceNotFoundError):
        async for blob in inputs.list_blobs(name_starts_with=RUN_INPUTS_ROOT):
            run_id = str(blob.name)[len(RUN_INPUTS_ROOT) :].split("/", 1)[0]
            by_run.setdefault(run_id, []).append((str(blob.name), int(blob.size or 0)))
    for run_id, blobs in sorted(by_run.items()):
        if run_id in keep:
            continue
        for name, _ in blobs:
            with contextlib.suppress(ResourceNotFoundError):
                await inputs.delete_blob(name)
        size = sum(blob_size for _, blob_size in blobs)
        removed.append(Removed(f"Azurite inputs of run {run_id} ({len(blobs)} blobs)", size, on_disk=False))
    return removed


async def _container_bytes(client: BlobServiceClient, container: str) -> int:
    total = 0
    with contextlib.suppress(ResourceNotFoundError):
        async for blob in client.get_container_client(container).list_blobs():
            total += int(blob.size or 0)
    return total


async def holds_only_the_bundle(client: BlobServiceClient, prefix: str) -> bool:
    """True when every blob in Azurite is in the node bundle's container (nothing else is needed)."""
    app = naming.app_container(prefix)
    async for container in client.list_containers():
        if container.name == app:
            continue
        async for _ in client.get_container_client(str(container.name)).list_blobs():
            return False
    return True


def remove_data_folder(data: Path) -> Removed:
    """Remove a stopped Azurite's data folder whole (call only once nothing in it is needed)."""
    size = folder_bytes(data)
    shutil.rmtree(data, ignore_errors=True)
    return Removed(f"Azurite data folder {data} (only the node bundle was left)", size)


def remove_old_node_folders(emulator_root: Path) -> list[Removed]:
    """The node folders of emulators no longer running (call only while none runs here)."""
    removed: list[Removed] = []
    if not emulator_root.is_dir():
        return removed
    for pool in sorted(emulator_root.iterdir()):
        if pool.name.startswith(".") or not pool.is_dir():  # .python-bin: the emulator's own
            continue
        size = folder_bytes(pool)
        count = sum(1 for _ in pool.iterdir())
        shutil.rmtree(pool, ignore_errors=True)
        removed.append(Removed(f"emulator node folders of pool {pool.name} ({count} nodes)", size))
    return removed
