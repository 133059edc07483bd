"""`node unit` (inputs read from Blob Storage by the node) against today's way, side by side on Azurite.

    python bench/node_unit.py [--files 1000] [--files-per-task 58] [--big-mb 200] [--concurrency 8]

Starts a fresh Azurite, uploads `--files` small text blobs and measures, each node run in a fresh
process (wall time and peak RSS from wait4):

* unit: one `python -m node unit` over a manifest of all the blobs (one task start);
* today: per group of `--files-per-task` (what the 8,000-character command line holds), the blobs
  fetched one after another as the Batch agent fetches resource files (one GET each, in order),
  then `python -m node --filepath ...` over them (two uploads per file: `_OUTPUT` and counts).
  Task start costs (about 0.64 s per task on the emulator) are left out of both.

Then one `--big-mb` blob of English-like text (bench/node_throughput.py's corpus): the node
streaming it whole, the same file counted from local disk (`python -m node --json --workers 1`),
and the blob split into 2 ranges counted by 2 `node unit` processes at once, merged with
`node.result.merge_ranges`. Every result is checked against the others.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from azure.storage.blob.aio import BlobServiceClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.node_throughput import corpus
from node.manifest import UnitInput, UnitManifest, encode_manifest, split_ranges
from node.result import decode_result_blob, merge_ranges
from orchestrator.local import processes as local

ROOT = Path(__file__).resolve().parent.parent


def _sas_url(endpoint: str, container: str, permission: ContainerSasPermissions) -> str:
    sas = generate_container_sas(
        local.AZURITE_ACCOUNT_NAME,
        container,
        account_key=local.AZURITE_ACCOUNT_KEY,
        permission=permission,
        expiry=datetime.now(timezone.utc) + timedelta(hours=2),  # noqa: UP017
    )
    return f"{endpoint}/{container}?{sas}"


# Runs the node's entry in this interpreter and reports, on stderr's last line, its own peak RSS
# (VmHWM: ru_maxrss would also count what this benchmark held before the exec) and CPU seconds.
_WRAPPER = """
import os, resource, sys
from pathlib import Path
from node.cli import main
profile_to = os.environ.get("BENCH_PROFILE")
try:
    if profile_to:
        import cProfile
        import time
        profiler = cProfile.Profile(time.process_time)  # CPU, not wall: the machine may be busy
        code = profiler.runcall(main, sys.argv[1:])
        profiler.dump_stats(profile_to)
    else:
        code = main(sys.argv[1:])
finally:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    hwm = [line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:")]
    print("BENCH", int(hwm[0].split()[1]) / 1024, usage.ru_utime + usage.ru_stime, file=sys.stderr)
sys.exit(code)
"""


@dataclass
class NodeRun:
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float


def _run_node(args: Sequence[str], env: dict[str, str]) -> NodeRun:
    """Run the node's entry with ARGS in a fresh process: wall and CPU seconds, its own peak RSS."""
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"node {' '.join(args[:3])} failed: {completed.stderr}")
    _, rss, cpu = completed.stderr.strip().splitlines()[-1].split()
    return NodeRun(elapsed, float(cpu), float(rss))


async def _upload_many(service: BlobServiceClient, container: str, blobs: dict[str, bytes]) -> None:
    client = service.get_container_client(container)
    limiter = asyncio.Semaphore(32)

    async def one(name: str, data: bytes) -> None:
        async with limiter:
            await client.upload_blob(name, data, overwrite=True)

    await asyncio.gather(*(one(name, data) for name, data in blobs.items()))


def _small_file(index: int) -> bytes:
    words = [f"w{(index * 7 + position) % 97}" for position in range(120)]
    return (" ".join(words) + "\n").encode()


async def _today(
    endpoint: str, names: list[str], per_task: int, inputs: str, output_url: str
) -> tuple[float, NodeRun]:
    """Per group: resource files fetched in order, then the per-file node. Download seconds, node totals."""
    input_url = _sas_url(endpoint, inputs, ContainerSasPermissions(read=True))
    base, _, query = input_url.partition("?")
    downloads = 0.0
    total = NodeRun(0.0, 0.0, 0.0)
    async with aiohttp.ClientSession() as session:
        for first in range(0, len(names), per_task):
            group = names[first : first + per_task]
            with tempfile.TemporaryDirectory() as folder:
                started = time.perf_counter()
                for number, name in enumerate(group):
                    async with session.get(f"{base}/{name}?{query}") as response:
                        response.raise_for_status()
                        data = await response.read()
                    await asyncio.to_thread(Path(folder, f"{number}.txt").write_bytes, data)
                downloads += time.perf_counter() - started
                args: list[str] = []
                for number, name in enumerate(group):
                    args += ["--filepath", f"{folder}/{number}.txt", "--output-name", f"today/{name}_OUTPUT"]
                    args += ["--counts-name", f"today/{name}.counts.json.gz"]
                run = await asyncio.to_thread(_run_node, args, {"TOPN_OUTPUT_SAS_URL": output_url})
                total = NodeRun(
                    total.seconds + run.seconds,
                    total.cpu_seconds + run.cpu_seconds,
                    max(total.peak_rss_mb, run.peak_rss_mb),
                )
    return downloads, total


async def _download(service: BlobServiceClient, container: str, name: str) -> bytes:
    data: bytes = await (await service.get_blob_client(container, name).download_blob()).readall()
    return data


async def main_async(options: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        service_process = await local.start_azurite(Path(scratch, "data"), Path(scratch, "logs"))
        try:
            await _measure(service_process.endpoint, options, Path(scratch))
        finally:
            await local.stop_service(service_process)


def _line(label: str, run: NodeRun, rate: str) -> str:
    return (
        f"  {label:<52} {run.seconds:7.2f} s wall {run.cpu_seconds:7.2f} s CPU  {rate}  "
        f"peak RSS {run.peak_rss_mb:4.0f} MB"
    )


async def _measure(endpoint: str, options: argparse.Namespace, scratch: Path) -> None:
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={local.AZURITE_ACCOUNT_NAME};"
        f"AccountKey={local.AZURITE_ACCOUNT_KEY};BlobEndpoint={endpoint};"
    )
    async with BlobServiceClient.from_connection_string(connection) as service:
        for container in ("inputs", "outputs"):
            await service.create_container(container)
        read_url = _sas_url(endpoint, "inputs", ContainerSasPermissions(read=True))
        write_url = _sas_url(endpoint, "outputs", ContainerSasPermissions(create=True, write=True))
        env = {"TOPN_OUTPUT_SAS_URL": write_url}
        if options.files:
            await _small(service, endpoint, options, scratch, read_url, env)
        if options.big_mb:
            await _big(service, options, scratch, read_url, env)


async def _small(
    service: BlobServiceClient,
    endpoint: str,
    options: argparse.Namespace,
    scratch: Path,
    read_url: str,
    env: dict[str, str],
) -> None:
    names = [f"small/{index:06d}.txt" for index in range(options.files)]
    files = {name: _small_file(index) for index, name in enumerate(names)}
    await _upload_many(service, "inputs", files)
    expected_words = sum(len(data.split()) for data in files.values())
    manifest = UnitManifest(
        "bench",
        "words",
        10,
        "results/bench.json.gz",
        (read_url,),
        tuple(UnitInput(name, 0, name, f"unit/{name}_OUTPUT") for name in names),
    )
    manifest_path = scratch / "unit.json"
    await asyncio.to_thread(manifest_path.write_bytes, encode_manifest(manifest))
    unit = await asyncio.to_thread(
        _run_node,
        ["unit", "--manifest", str(manifest_path), "--concurrency", str(options.concurrency)],
        {**env, "BENCH_PROFILE": options.profile} if options.profile else env,
    )
    result = decode_result_blob(await _download(service, "outputs", "results/bench.json.gz"))
    assert sum(entry.words for entry in result.files) == expected_words
    downloads, today = await _today(
        endpoint, names, options.files_per_task, "inputs", env["TOPN_OUTPUT_SAS_URL"]
    )
    tasks = -(-len(names) // options.files_per_task)
    count = len(names)
    print(f"small blobs: {count} files of ~{len(files[names[0]])} B (Azurite, fresh)")
    print(
        _line(
            f"node unit, 1 task, concurrency {options.concurrency}",
            unit,
            f"{count / unit.seconds:6.0f} files/s",
        )
    )
    print(
        _line(
            f"today: {tasks} node runs of {options.files_per_task} files",
            today,
            f"{count / (today.seconds + downloads):6.0f} files/s",
        )
        + f"  (+ {downloads:.2f} s of sequential resource-file GETs)"
    )
    print(f"  wall ratio today / unit: {(today.seconds + downloads) / unit.seconds:.1f}x; "
          f"node CPU ratio: {today.cpu_seconds / unit.cpu_seconds:.1f}x (task starts excluded)")  # fmt: skip


async def _big(
    service: BlobServiceClient,
    options: argparse.Namespace,
    scratch: Path,
    read_url: str,
    env: dict[str, str],
) -> None:
    path = corpus("english", options.big_mb)
    size = path.stat().st_size
    with path.open("rb") as stream:
        await service.get_container_client("inputs").upload_blob("big/english.txt", stream, overwrite=True)
    local_run = await asyncio.to_thread(_run_node, ["--filepath", str(path), "--json", "--workers", "1"], {})

    def manifest_for(unit: str, spans: list[tuple[int, int] | None]) -> Path:
        inputs = tuple(
            UnitInput("big.txt", 0, "big/english.txt", None if span else "big_OUTPUT.txt", span)
            for span in spans
        )
        manifest = UnitManifest(unit, "words", 10, f"results/{unit}.json.gz", (read_url,), inputs)
        target = scratch / f"{unit}.json"
        target.write_bytes(encode_manifest(manifest))
        return target

    whole_run = await asyncio.to_thread(
        _run_node, ["unit", "--manifest", str(manifest_for("whole", [None]))], env
    )
    whole = decode_result_blob(await _download(service, "outputs", "results/whole.json.gz")).files[0]
    spans = split_ranges(size, 2)
    started = time.perf_counter()
    runs = await asyncio.gather(
        *(
            asyncio.to_thread(_run_node, ["unit", "--manifest", str(manifest_for(f"range{i}", [span]))], env)
            for i, span in enumerate(spans)
        )
    )
    split = NodeRun(
        time.perf_counter() - started,
        sum(run.cpu_seconds for run in runs),
        max(run.peak_rss_mb for run in runs),
    )
    parts = [
        decode_result_blob(await _download(service, "outputs", f"results/range{i}.json.gz")).files[0]
        for i in range(len(spans))
    ]
    merged = merge_ranges(parts)
    assert merged.counts == whole.counts and merged.words == whole.words
    mb = size / 1e6
    print(f"big blob: {mb:.0f} MB English-like text, tokenizer words")
    print(
        _line(
            "local file, python -m node --json --workers 1", local_run, f"{mb / local_run.seconds:5.1f} MB/s"
        )
    )
    print(
        _line("node unit, whole blob streamed from Azurite", whole_run, f"{mb / whole_run.seconds:5.1f} MB/s")
    )
    print(_line("node unit, 2 ranges in 2 processes at once", split, f"{mb / split.seconds:5.1f} MB/s"))
    print("  merged range counts equal the whole-blob count")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--files-per-task", type=int, default=58)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--profile", help="write a cProfile of the small-blob `node unit` run to this file")
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
