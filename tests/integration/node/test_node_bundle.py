"""The self-contained node bundle, run by interpreters with nothing installed, uploads to Azurite.

The bundle is built from node/bundle.lock (wheels cached in .topn/node-wheels, so only the first
build on a machine downloads). Other interpreters are taken from pyenv (`PYENV_ROOT`, default
~/.pyenv): the supported CPython 3.10, 3.12 and 3.13 a pool image would bring, and the unsupported
2.7 and 3.6-3.9 the bundle must refuse. A missing one skips its test with the reason, except in CI
(CI=true, as .ci/run runs), where it fails instead: CI must prove the refusal with real interpreters.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shlex
import shutil
import subprocess
import tomllib
import uuid
import venv
import zipfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from azure.storage.blob.aio import BlobServiceClient

from node.bootstrap import EXIT_UNSUPPORTED
from node.bundle import build_bundle
from node.report import decode_counts_blob
from node.result import decode_result_blob
from orchestrator import naming
from orchestrator.run.units import UnitEntry, build_manifest
from tests.conftest import StorageEndpoint
from tests.e2e.run_cli import project_wheel_cache
from tests.secret_scan import find_secrets

REPOSITORY = Path(__file__).resolve().parents[3]
PYENV_VERSIONS = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"


# Set in CI (CI=true): there a missing interpreter fails its test instead of skipping it.
# Not a TOPN_ variable: topn refuses TOPN_ variables that name no settings section.
REQUIRE_INTERPRETERS = "CI"


def _in_ci() -> bool:
    return os.environ.get(REQUIRE_INTERPRETERS, "").strip().lower() not in ("", "0", "false", "no")


def _require(python: Path | None, version: str, still_ran: str) -> Path:
    """The interpreter, or a loud failure in CI and a skip with the reason elsewhere."""
    if python is not None:
        return python
    missing = f"Python {version} is not installed under {PYENV_VERSIONS} (`pyenv install {version}`)"
    if _in_ci():
        pytest.fail(f"{missing}; {REQUIRE_INTERPRETERS} is set, so this test may not skip", pytrace=False)
    pytest.skip(f"{missing}; {still_ran}")


def _interpreter(minor: int) -> Path | None:
    """A CPython 3.<minor> from pyenv (newest patch release), or None."""
    found = sorted(
        PYENV_VERSIONS.glob(f"3.{minor}.*/bin/python3"),
        key=lambda path: int(path.parts[-3].split(".")[2]) if path.parts[-3].split(".")[2].isdigit() else -1,
    )
    return found[-1] if found else None


def _python_2() -> Path | None:
    found = sorted(PYENV_VERSIONS.glob("2.7.*/bin/python"))
    return found[-1] if found else None


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("bundle") / "node-bundle.pyz", project_wheel_cache())


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One unpack cache for the tests that are not about unpacking (each version unpacks once)."""
    return tmp_path_factory.mktemp("shared-cache") / "cache"


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test's own CPython (3.11) in a fresh virtual environment with no packages, not even pip."""
    folder = tmp_path_factory.mktemp("bare-venv")
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(folder)
    python = folder / "bin" / "python"
    probe = subprocess.run(
        [str(python), "-c", "import azure.storage.blob"], capture_output=True, text=True, timeout=60
    )
    assert probe.returncode != 0 and "No module named 'azure'" in probe.stderr, probe
    return python


def _clean_environment(cache: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """What a Batch task would see: no PYTHONPATH or virtual environment leaking in from the test run."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTHON", "VIRTUAL_ENV", "AZ_BATCH_"))
    }
    return {**environment, "TOPN_NODE_CACHE_DIR": str(cache), **extra}


async def _run(
    python: Path, bundle: Path, args: Sequence[str], cwd: Path, cache: Path, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [str(python), str(bundle), *args],
        cwd=cwd,
        env=_clean_environment(cache, env),
        capture_output=True,
        text=True,
        timeout=180,
    )


async def _container_sas_url(
    azurite: StorageEndpoint,
    blobs: Mapping[str, bytes] | None = None,
    permission: ContainerSasPermissions | None = None,
) -> tuple[str, str]:
    """A fresh container holding `blobs`, and its URL with a SAS (create and write unless told)."""
    name = f"bundle-{uuid.uuid4().hex[:12]}"
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        container = await service.create_container(name)
        for blob_name, data in (blobs or {}).items():
            await container.upload_blob(blob_name, data)
    sas = generate_container_sas(
        azurite.account_name,
        name,
        account_key=azurite.account_key,
        permission=permission or ContainerSasPermissions(create=True, write=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),  # noqa: UP017 (node code targets 3.10)
    )
    return name, f"{azurite.endpoint}/{name}?{sas}"


async def _blobs(azurite: StorageEndpoint, container: str) -> dict[str, bytes]:
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        client = service.get_container_client(container)
        names = [blob.name async for blob in client.list_blobs()]
        return {name: await (await client.download_blob(name)).readall() for name in names}


def _site_folders(cache: Path) -> list[str]:
    """Everything in an unpack cache (a staging folder left behind would show here too)."""
    return sorted(path.name for path in cache.iterdir())


def _no_secrets(completed: subprocess.CompletedProcess[str], azurite: StorageEndpoint) -> None:
    leaks = find_secrets([("stdout", completed.stdout), ("stderr", completed.stderr)], [azurite.account_key])
    assert not leaks, leaks


def test_bundle_bytes_depend_only_on_sources_and_lock(bundle: Path, tmp_path: Path) -> None:
    again = build_bundle(tmp_path / "again.pyz", project_wheel_cache())
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(bundle.read_bytes()).digest()
    assert bundle.stat().st_mode & 0o111, "the bundle is executable like node.pyz"


async def test_bundle_in_a_bare_venv_uploads_both_blobs_and_unpacks_once(
    azurite: StorageEndpoint, bundle: Path, bare_python: Path, tmp_path: Path
) -> None:
    container, sas_url = await _container_sas_url(azurite)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("Kůň kůň, pes. KŮŇ\n", encoding="utf-8")
    (tmp_path / "in" / "b.txt").write_text("one two two\n", encoding="utf-8")
    cache = tmp_path / "cache"
    for name in ("a", "b"):
        completed = await _run(
            bare_python,
            bundle,
            ["--filepath", f"in/{name}.txt", "--top", "2", "--output-name", f"{name}_OUTPUT.txt"],
            cwd=tmp_path,
            cache=cache,
            env={"TOPN_OUTPUT_SAS_URL": sas_url, "AZ_BATCH_NODE_ID": "tvm-1"},
        )
        assert completed.returncode == 0, completed.stderr
        _no_secrets(completed, azurite)
    blobs = await _blobs(azurite, container)
    assert sorted(blobs) == [
        "a_OUTPUT.txt",
        "a_OUTPUT.txt.counts.json.gz",
        "b_OUTPUT.txt",
        "b_OUTPUT.txt.counts.json.gz",
    ]
    assert (
        blobs["a_OUTPUT.txt"]
        .decode("utf-8")
        .startswith("Word\tCount\n------------------------------\nkůň:\t3\npes:\t1\n")
    )
    assert decode_counts_blob(blobs["b_OUTPUT.txt.counts.json.gz"])["counts"] == [["one", 1], ["two", 2]]
    # The second task reused the first one's unpacked wheels: one folder, no staging left over.
    assert [name[-6:] for name in _site_folders(cache)] == [".lock", "-cp311"]


async def test_tasks_starting_at_once_share_one_unpacked_copy(
    azurite: StorageEndpoint, bundle: Path, bare_python: Path, tmp_path: Path
) -> None:
    container, sas_url = await _container_sas_url(azurite)
    shared = tmp_path / "shared"
    for index in range(3):
        (tmp_path / f"in{index}.txt").write_text(f"w{index} w{index} x\n", encoding="utf-8")
    # As on a node: no TOPN_NODE_CACHE_DIR, so the cache goes to the Batch shared folder.
    environment = _clean_environment(tmp_path / "unused", {})
    del environment["TOPN_NODE_CACHE_DIR"]
    environment.update({"AZ_BATCH_NODE_SHARED_DIR": str(shared), "TOPN_OUTPUT_SAS_URL": sas_url})
    results = await asyncio.gather(
        *(
            asyncio.to_thread(
                subprocess.run,
                [str(bare_python), str(bundle), "--filepath", f"in{index}.txt"],
                cwd=tmp_path,
                env=environment,
                capture_output=True,
                text=True,
                timeout=180,
            )
            for index in range(3)
        )
    )
    for completed in results:
        assert completed.returncode == 0, completed.stderr
    assert len(await _blobs(azurite, container)) == 6
    # Whoever lost the race removed its staging copy.
    assert [name[-6:] for name in _site_folders(shared / "topn-node-cache")] == [".lock", "-cp311"]
    assert not (tmp_path / "unused").exists()


async def test_worker_processes_start_from_the_bundle(
    azurite: StorageEndpoint, bundle: Path, bare_python: Path, shared_cache: Path, tmp_path: Path
) -> None:
    container, sas_url = await _container_sas_url(azurite)
    repeats = 1_400_000  # 35 MB: counted by two processes (spawn re-runs the bundle's __main__)
    with (tmp_path / "big.txt").open("w", encoding="utf-8") as stream:
        stream.write("alpha Beta gamma, delta.\n" * repeats)
    completed = await _run(
        bare_python,
        bundle,
        ["--filepath", "big.txt", "--top", "2", "--workers", "2"],
        cwd=tmp_path,
        cache=shared_cache,
        env={"TOPN_OUTPUT_SAS_URL": sas_url},
    )
    assert completed.returncode == 0, completed.stderr
    document = decode_counts_blob((await _blobs(azurite, container))["big_OUTPUT.txt.counts.json.gz"])
    assert document["counts"] == [
        ["alpha", repeats],
        ["beta", repeats],
        ["gamma", repeats],
        ["delta", repeats],
    ]


@pytest.mark.parametrize("minor", [10, 12, 13])
async def test_other_supported_versions_upload_with_their_own_wheels(
    azurite: StorageEndpoint, bundle: Path, shared_cache: Path, tmp_path: Path, minor: int
) -> None:
    python = _require(_interpreter(minor), f"3.{minor}", "the bundle's 3.11 runs still ran")
    container, sas_url = await _container_sas_url(azurite)
    (tmp_path / "in.txt").write_text("b a b\n", encoding="utf-8")
    completed = await _run(
        python,
        bundle,
        ["--filepath", "in.txt"],
        cwd=tmp_path,
        cache=shared_cache,
        env={"TOPN_OUTPUT_SAS_URL": sas_url},
    )
    assert completed.returncode == 0, completed.stderr
    blobs = await _blobs(azurite, container)
    assert decode_counts_blob(blobs["in_OUTPUT.txt.counts.json.gz"])["counts"] == [["b", 2], ["a", 1]]
    assert len([name for name in _site_folders(shared_cache) if name.endswith(f"-cp3{minor}")]) == 1


@pytest.mark.parametrize("version", ["2.7", "3.6", "3.7", "3.8", "3.9"])
def test_unsupported_interpreter_is_refused_with_the_versions_that_work(
    bundle: Path, tmp_path: Path, version: str
) -> None:
    python = _require(
        _python_2() if version == "2.7" else _interpreter(int(version.split(".")[1])),
        version,
        "the gate's unit tests still ran",
    )
    (tmp_path / "in.txt").write_text("a\n", encoding="utf-8")
    cache = tmp_path / "cache"
    for arguments in (["--filepath", "in.txt", "--json"], ["--bundle-check"]):
        completed = subprocess.run(
            [str(python), str(bundle), *arguments],
            cwd=tmp_path,
            env=_clean_environment(cache, {}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert completed.returncode == EXIT_UNSUPPORTED, completed
        assert completed.stdout == ""
        assert completed.stderr.startswith(
            "node: the node bundle needs CPython 3.10, 3.11, 3.12, 3.13 on Linux x86_64 with glibc >= 2.17"
        ), completed.stderr
        assert f"this is {'Python' if version in ('2.7', '3.6') else 'CPython'} {version}" in completed.stderr
        assert "Traceback" not in completed.stderr
    assert not cache.exists(), "nothing is unpacked for an interpreter that cannot load it"


def test_bundle_check_accepts_a_supported_interpreter_without_unpacking(
    bundle: Path, bare_python: Path, tmp_path: Path
) -> None:
    # What a start task can run (as the admin user) before any task lands on the node.
    cache = tmp_path / "cache"
    completed = subprocess.run(
        [str(bare_python), str(bundle), "--bundle-check"],
        env=_clean_environment(cache, {}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("node: this interpreter can run the bundle (CPython 3.11, glibc ")
    assert not cache.exists()


def _template_start_task() -> str:
    with (REPOSITORY / "config" / "azure.toml").open("rb") as stream:
        command = tomllib.load(stream)["pool"]["start_task_command"]
    assert isinstance(command, str)
    return command


def _node_folders(tmp_path: Path, bundle: Path, python: Path) -> dict[str, str]:
    """A Batch-like node: the start task's folder holding the downloaded bundle, a shared folder,
    and `python3` on PATH being the interpreter under test."""
    startup = tmp_path / "startup" / "wd"
    startup.mkdir(parents=True)
    shutil.copyfile(bundle, startup / "node.pyz")  # as the resource file lands: no executable bit
    (tmp_path / "shared").mkdir()
    path = tmp_path / "bin"
    path.mkdir()
    (path / "python3").symlink_to(python)
    environment = _clean_environment(tmp_path / "unused", {})
    del environment["TOPN_NODE_CACHE_DIR"]
    return {
        **environment,
        "PATH": f"{path}{os.pathsep}{environment['PATH']}",
        "AZ_BATCH_NODE_SHARED_DIR": str(tmp_path / "shared"),
    }


async def _run_template_start_task(
    node: Path, environment: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """The azure template's start task, run as Batch runs it: `/bin/sh -c` in the start task's folder."""
    return await asyncio.to_thread(
        subprocess.run,
        ["/bin/sh", "-c", _template_start_task()],
        cwd=node / "startup" / "wd",
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_azure_templates_start_task_places_the_bundle_for_the_tasks(
    azurite: StorageEndpoint, bundle: Path, bare_python: Path, tmp_path: Path
) -> None:
    environment = _node_folders(tmp_path, bundle, bare_python)
    started = await _run_template_start_task(tmp_path, environment)
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("Python 3.11.")
    placed = tmp_path / "shared" / "node.pyz"
    assert placed.stat().st_mode & 0o777 == 0o755, "readable and executable by the non-admin task user"
    # A task as the orchestrator words it: the image's python3, the SAS URL in the environment.
    container, sas_url = await _container_sas_url(azurite)
    (tmp_path / "in.txt").write_text("x y y\n", encoding="utf-8")
    task = await asyncio.to_thread(
        subprocess.run,
        ["/bin/sh", "-c", 'exec python3 "$AZ_BATCH_NODE_SHARED_DIR/node.pyz" --filepath in.txt --top 1'],
        cwd=tmp_path,
        env={**environment, "TOPN_OUTPUT_SAS_URL": sas_url},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert task.returncode == 0, task.stderr
    assert sorted(await _blobs(azurite, container)) == ["in_OUTPUT.txt", "in_OUTPUT.txt.counts.json.gz"]
    assert [name[-6:] for name in _site_folders(tmp_path / "shared" / "topn-node-cache")] == [
        ".lock",
        "-cp311",
    ]


async def test_a_work_unit_runs_from_the_bundle_as_a_real_task_does_and_uploads_its_result(
    azurite: StorageEndpoint, bundle: Path, bare_python: Path, tmp_path: Path
) -> None:
    """The mode real tasks use: the template's start task places the bundle, then the task's own
    command line (`unit --manifest=...`, as the orchestrator words it) runs it with a `python3` that
    has no packages, reading a manifest the orchestrator's code built: two small files packed into
    one blob and one whole blob, read through a read-only SAS, results written through a write-only one."""
    environment = _node_folders(tmp_path, bundle, bare_python)
    started = await _run_template_start_task(tmp_path, environment)
    assert started.returncode == 0, started.stderr
    packed = {"a.txt": b"alpha beta alpha\n", "b/c.txt": "Kůň kůň, pes.\n".encode()}
    pack = b"".join(packed.values())
    whole = b"one two two three three three\n"
    task_id = "t000007"
    _, source_url = await _container_sas_url(
        azurite,
        {naming.unit_pack_blob(task_id): pack, "runs/r1/d.txt": whole},
        ContainerSasPermissions(read=True),
    )
    output, output_url = await _container_sas_url(azurite)
    offset_of_c = len(packed["a.txt"])
    entries = [
        UnitEntry("a.txt", naming.unit_pack_blob(task_id), len(pack), extent=(0, offset_of_c)),
        UnitEntry(
            "b/c.txt",
            naming.unit_pack_blob(task_id),
            len(pack),
            extent=(offset_of_c, len(packed["b/c.txt"])),
        ),
        UnitEntry("d.txt", "runs/r1/d.txt", len(whole)),
    ]
    task_folder = tmp_path / "task" / "wd"
    task_folder.mkdir(parents=True)
    # As Batch brings it: the task's resource file, under the name its command line gives.
    (task_folder / naming.unit_manifest_file(task_id)).write_bytes(
        build_manifest(task_id, tokenizer="words", top=2, source_url=source_url, entries=entries)
    )
    identity = {
        "AZ_BATCH_NODE_ID": "tvm-3",
        "AZ_BATCH_TASK_ID": task_id,
        "AZ_BATCH_JOB_ID": "topn-job",
        "AZ_BATCH_POOL_ID": "topn-pool",
    }
    task = await asyncio.to_thread(
        subprocess.run,
        shlex.split(naming.task_command_line(task_id)),
        cwd=task_folder,
        env={**environment, **identity, naming.OUTPUT_SAS_VARIABLE: output_url},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert task.returncode == 0, task.stderr
    _no_secrets(task, azurite)
    blobs = await _blobs(azurite, output)
    assert sorted(blobs) == ["a_OUTPUT.txt", "b/c_OUTPUT.txt", "d_OUTPUT.txt", "results/t000007.json.gz"]
    result = decode_result_blob(blobs["results/t000007.json.gz"])
    assert (result.unit, result.tokenizer, result.top, result.identity) == (task_id, "words", 2, identity)
    assert [(entry.relpath, entry.status, entry.counts) for entry in result.files] == [
        ("a.txt", "ok", [("alpha", 2), ("beta", 1)]),
        ("b/c.txt", "ok", [("kůň", 2), ("pes", 1)]),
        ("d.txt", "ok", [("one", 1), ("two", 2), ("three", 3)]),
    ]
    rendered = blobs["d_OUTPUT.txt"].decode("utf-8")
    assert rendered.startswith("Word\tCount\n------------------------------\nthree:\t3\ntwo:\t2\n")
    assert rendered.endswith("Node: tvm-3\nTask: t000007\nJob:  topn-job\nPool: topn-pool\n")
    # The task unpacked its interpreter's wheels once, into the node's shared folder.
    assert [name[-6:] for name in _site_folders(tmp_path / "shared" / "topn-node-cache")] == [
        ".lock",
        "-cp311",
    ]


def test_the_azure_templates_start_task_fails_a_node_whose_python3_cannot_run_the_bundle(
    bundle: Path, tmp_path: Path
) -> None:
    python = _require(_interpreter(9), "3.9", "the gate's unit tests still ran")
    started = subprocess.run(
        ["/bin/sh", "-c", _template_start_task()],
        cwd=tmp_path / "startup" / "wd",
        env=_node_folders(tmp_path, bundle, python),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == EXIT_UNSUPPORTED, started
    assert "this is CPython 3.9 on linux x86_64: it carries no wheels for this interpreter" in started.stderr
    assert not (tmp_path / "shared" / "topn-node-cache").exists()


def test_the_orchestrator_stages_the_bundle_for_real_nodes_and_the_plain_zipapp_locally(bundle: Path) -> None:
    from orchestrator.azure.staging import build_node_script

    for_azure = build_node_script(project_wheel_cache())
    assert for_azure == bundle.read_bytes()  # the very bytes `make node-bundle` builds
    local = build_node_script(None)
    with zipfile.ZipFile(io.BytesIO(local)) as archive:
        assert not [name for name in archive.namelist() if name.endswith(".whl")]
    with zipfile.ZipFile(io.BytesIO(for_azure)) as archive:
        assert any("azure_storage_blob" in name for name in archive.namelist())
