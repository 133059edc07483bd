"""What finished local runs leave behind, and how it goes (issue 10, point 12).

`delete_run_blobs = true` removes a run's blobs and, when only the node bundle is left, Azurite's
whole data folder (Azurite itself frees deleted blobs' extent files only at a start 10 minutes
later). `topn local prune` deletes finished runs' containers and staged inputs in the local
Azurite, removes its data folder when only the bundle is left, and removes the node folders of
emulators no longer running; it refuses while a run is live unless `--force`.

Local mode is on here: the services are the ones topn starts itself on each test's state folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import anyio
import pytest
from azure.storage.blob.aio import BlobServiceClient

from orchestrator.local import processes as local
from orchestrator.local.prune import delete_finished_runs_blobs, holds_only_the_bundle
from orchestrator.service.runlock import run_lock
from tests.e2e.run_cli import run_topn

pytestmark = pytest.mark.asyncio(loop_scope="session")


def local_environment(tmp_path: Path, **overrides: str) -> dict[str, str]:
    keep = {name: value for name, value in os.environ.items() if not name.startswith("TOPN_")}
    return {
        **keep,
        "TOPN_LOCAL_STATE_DIR": str(tmp_path / ".topn"),
        "TOPN_POOL_ID": "prune-pool",
        "TOPN_RUN_POLL_MIN_S": "0.1",
        "TOPN_RUN_POLL_MAX_S": "0.5",
        **overrides,
    }


def bytes_below(folder: Path) -> int:
    """The test's own count of what a folder holds on disk (regular files, sizes as stat says)."""
    return sum(path.lstat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def printed_bytes(line: str) -> int:
    """The exact byte count a prune line ends with: `... (1,234 bytes)` or `... 12 bytes`."""
    found = re.search(r"([0-9,]+) bytes\)?$", line.strip())
    assert found is not None, line
    return int(found[1].replace(",", ""))


def write_inputs(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "a.txt").write_text("wren wren finch\n", encoding="utf-8")
    (folder / "b.txt").write_text("finch robin\n", encoding="utf-8")


async def local_run(tmp_path: Path, out: str, **overrides: str) -> str:
    """A local-mode `topn run` of in/; its stderr (events as JSON lines)."""
    env = local_environment(tmp_path, **overrides)
    result = await anyio.to_thread.run_sync(
        run_topn, ["run", "in", "--out", out, "--log-format", "json"], tmp_path, env
    )
    assert result.exit_code == 0, result.stderr[-3000:]
    return result.stderr


async def test_delete_run_blobs_removes_azurite_data_when_only_the_bundle_is_left(tmp_path: Path) -> None:
    write_inputs(tmp_path / "in")
    azurite_data = tmp_path / ".topn" / "local" / "azurite"

    # A run that keeps its blobs: a later run that deletes its own must leave those alone.
    await local_run(tmp_path, "kept", TOPN_RUN_DELETE_RUN_BLOBS="false")
    stderr = await local_run(tmp_path, "deleted", TOPN_RUN_DELETE_RUN_BLOBS="true")
    assert '"local.data_reclaimed"' not in stderr
    assert azurite_data.is_dir()

    # Once nothing else is in Azurite (prune removes the first run's blobs), a deleting run takes
    # the whole data folder with it.
    prune = await anyio.to_thread.run_sync(
        run_topn, ["local", "prune"], tmp_path, local_environment(tmp_path)
    )
    assert prune.exit_code == 0, prune.stderr
    stderr = await local_run(tmp_path, "again", TOPN_RUN_DELETE_RUN_BLOBS="true")
    assert '"local.data_reclaimed"' in stderr
    assert not azurite_data.exists()
    assert sorted(path.name for path in (tmp_path / "again").glob("*_OUTPUT.txt")) == [
        "a_OUTPUT.txt",
        "b_OUTPUT.txt",
    ]


async def test_prune_removes_what_finished_runs_left_and_refuses_while_a_run_is_live(tmp_path: Path) -> None:
    write_inputs(tmp_path / "in")
    env = local_environment(tmp_path)
    stderr = await local_run(tmp_path, "out", TOPN_RUN_DELETE_RUN_BLOBS="false", TOPN_RUN_DELETE_JOB="false")
    run_id = re.search(r'"run_id": "([0-9a-z-]+)"', stderr)
    assert run_id is not None
    state = tmp_path / ".topn"
    azurite_data = state / "local" / "azurite"
    pools = [path for path in (state / "local" / "emulator").iterdir() if not path.name.startswith(".")]
    assert azurite_data.is_dir() and pools

    # A live run (its lock held by this process, as `topn run` holds it): refused, nothing removed.
    with run_lock(state, "20261206t000000z-0a0b0c"):
        refused = await anyio.to_thread.run_sync(run_topn, ["local", "prune"], tmp_path, env)
    assert refused.exit_code == 2
    assert "20261206t000000z-0a0b0c" in refused.stderr and f"pid {os.getpid()}" in refused.stderr
    assert "--force" in refused.stderr
    assert azurite_data.is_dir() and all(pool.exists() for pool in pools)

    azurite_before, pools_before = bytes_below(azurite_data), sum(bytes_below(pool) for pool in pools)
    pruned = await anyio.to_thread.run_sync(run_topn, ["local", "prune"], tmp_path, env)
    assert pruned.exit_code == 0, pruned.stderr
    lines = pruned.stdout.splitlines()
    assert f"deleted Azurite container topn-out-{run_id[1]}" in pruned.stdout
    assert f"deleted Azurite container topn-in-{run_id[1]}" in pruned.stdout
    reported = {line.split(": ", 1)[0]: printed_bytes(line) for line in lines}
    assert reported["removed emulator node folders of pool prune-pool (2 nodes)"] == pools_before
    # Azurite, started by prune to delete the blobs, rewrote its database files: close, not equal.
    azurite_freed = reported[f"removed Azurite data folder {azurite_data} (only the node bundle was left)"]
    assert abs(azurite_freed - azurite_before) < azurite_before * 0.1, (azurite_freed, azurite_before)
    assert lines[-1].startswith("freed on disk: ")
    assert printed_bytes(lines[-1].split(";")[0]) == pools_before + azurite_freed, pruned.stdout
    assert not azurite_data.exists() and not any(pool.exists() for pool in pools)
    assert (tmp_path / "out" / "summary.json").is_file()  # results are never touched

    again = await anyio.to_thread.run_sync(run_topn, ["local", "prune"], tmp_path, env)
    assert again.exit_code == 0 and "nothing to remove" in again.stdout

    # With --force, a live run does not stop the prune.
    with run_lock(state, "20261206t000000z-0a0b0c"):
        forced = await anyio.to_thread.run_sync(run_topn, ["local", "prune", "--force"], tmp_path, env)
    assert forced.exit_code == 0, forced.stderr


async def test_only_finished_runs_blobs_are_deleted(tmp_path: Path) -> None:
    """Against a real Azurite: the unfinished run's blobs stay, and so does the node bundle."""
    service = await local.start_azurite(tmp_path / "azurite", tmp_path / "logs")
    credential = {"account_name": local.AZURITE_ACCOUNT_NAME, "account_key": local.AZURITE_ACCOUNT_KEY}
    try:
        async with BlobServiceClient(service.endpoint, credential=credential) as client:
            app = await client.create_container("topn-app")
            await app.upload_blob("node/abc/node.pyz", b"bundle")
            inputs = await client.create_container("topn-input")
            for run_id, size in (("finished", 10), ("unfinished", 20)):
                await inputs.upload_blob(f"runs/{run_id}/x.txt", b"i" * size)
                await inputs.upload_blob(f"runs/{run_id}/sub/y.txt", b"j" * size)
                out = await client.create_container(f"topn-out-{run_id}")
                await out.upload_blob("x_OUTPUT.txt", b"o" * (size + 1))
                own_inputs = await client.create_container(f"topn-in-{run_id}")
                await own_inputs.upload_blob(f"runs/{run_id}/z.txt", b"k" * (size + 2))
            removed = await delete_finished_runs_blobs(client, "topn", keep={"unfinished"})
            assert sorted((item.what, item.size_bytes, item.on_disk) for item in removed) == [
                ("Azurite container topn-in-finished", 12, False),
                ("Azurite container topn-out-finished", 11, False),
                ("Azurite inputs of run finished (2 blobs)", 20, False),
            ]
            names = [blob.name async for blob in inputs.list_blobs()]
            assert names == ["runs/unfinished/sub/y.txt", "runs/unfinished/x.txt"]
            containers = sorted([container.name async for container in client.list_containers()])
            assert containers == ["topn-app", "topn-in-unfinished", "topn-input", "topn-out-unfinished"]
            assert await holds_only_the_bundle(client, "topn") is False
            await delete_finished_runs_blobs(client, "topn", keep=set())
            assert await holds_only_the_bundle(client, "topn") is True
            assert [blob.name async for blob in app.list_blobs()] == ["node/abc/node.pyz"]
    finally:
        await local.stop_service(service)
