"""What a run's tasks were given, read back as a node reads it: each task's unit manifest (docs/contracts.md).

A task carries one resource file, its unit's manifest (a blob read through the task's own SAS URL),
which names the unit's inputs and the container SAS they are read through. Tests that check which
inputs went to which task, or which SAS a node got, read the manifests here with a plain HTTP GET,
as Batch would fetch them.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from orchestrator import naming


def manifest_url(task: Any) -> str:
    """The SAS URL of the task's manifest: its one resource file under the manifest's node-side name."""
    urls = [
        str(resource.http_url)
        for resource in task.resource_files or []
        if str(resource.file_path).startswith("unit-") and str(resource.file_path).endswith(".json")
    ]
    assert len(urls) == 1, f"task {task.id} carries {len(urls)} manifests"
    return urls[0]


async def task_manifest(task: Any) -> dict[str, Any]:
    """The manifest the task's node reads (fetched through the task's own SAS)."""
    async with aiohttp.ClientSession() as session, session.get(manifest_url(task)) as response:
        assert response.status == 200, f"manifest of task {task.id}: HTTP {response.status}"
        document: dict[str, Any] = json.loads(await response.read())
    assert document["format"] == "topn.unit" and document["version"] in (1, 2)  # 2: with packed inputs
    assert naming.unit_manifest_file(document["unit"]) in str(task.command_line)
    return document


async def task_input_blobs(task: Any) -> list[str]:
    """`<source container URL without its SAS>/<blob>` of every input of the task's unit, and for a
    packed input its extent in the pack (`#offset+length`): one name per input either way."""
    manifest = await task_manifest(task)
    sources = [str(url).split("?", 1)[0] for url in manifest["sources"]]
    return [
        f"{sources[item['source']]}/{item['blob']}"
        + ("" if item.get("extent") is None else "#{}+{}".format(*item["extent"]))
        for item in manifest["inputs"]
    ]


async def task_input_relpaths(task: Any) -> list[str]:
    """The relative paths of the task's inputs, in manifest order."""
    return [str(item["relpath"]) for item in (await task_manifest(task))["inputs"]]
