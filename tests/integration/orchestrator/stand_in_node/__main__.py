"""A minimal stand-in for node.pyz, speaking the node's documented work-unit contract (docs/contracts.md).

Integration tests of the pipeline use it so they test the orchestrator, not the node (the e2e tests
run the real node). `unit --manifest FILE` reads the `topn.unit` manifest, reads each input blob
through the manifest's container SAS, counts `words`-tokenizer words and writes each `_OUTPUT` blob
and the unit's `topn.result` blob, written here from the documented format (not node/result.py).
"""

import argparse
import gzip
import json
import os
import re
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContainerClient

IDENTITY_VARIABLES = ("AZ_BATCH_NODE_ID", "AZ_BATCH_TASK_ID", "AZ_BATCH_JOB_ID", "AZ_BATCH_POOL_ID")


def variant() -> str:
    """The build's variant name, when the archive carries one (tests tell node script versions apart)."""
    try:
        with zipfile.ZipFile(sys.argv[0]) as archive:
            return archive.read("variant.txt").decode().strip()
    except (KeyError, OSError, zipfile.BadZipFile):
        return "n"


def main() -> int:
    if sys.argv[1:] == ["--bundle-check"]:
        # The real-Azure start task's check (the default outside local mode): this interpreter runs it.
        print("stand-in node: this interpreter can run the bundle")
        return 0
    if sys.argv[1:] == ["--help"]:  # the local start task's check
        print("stand-in node: unit --manifest FILE")
        return 0
    if sys.argv[1:2] != ["unit"]:
        print(f"stand-in node: expected `unit --manifest FILE`, got {sys.argv[1:2]}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser()
    parser.add_argument("--manifest", required=True)
    args = parser.parse_args(sys.argv[2:])
    manifest = json.loads(Path(args.manifest).read_text(encoding="utf-8"))
    assert manifest["format"] == "topn.unit" and manifest["version"] in (1, 2), manifest.get("format")
    output = ContainerClient.from_container_url(os.environ["TOPN_OUTPUT_SAS_URL"])
    sources = [ContainerClient.from_container_url(url) for url in manifest["sources"]]
    identity = {name: os.environ[name] for name in IDENTITY_VARIABLES if name in os.environ}
    identity["AZ_BATCH_NODE_ID"] = variant()  # which build of the script ran, for the tests
    status = 0
    files = []
    for index, unit_input in enumerate(manifest["inputs"]):
        entry = {"index": index, "file": unit_input["relpath"], "output_name": unit_input["output_name"]}
        entry["range"] = None
        try:
            blob = sources[unit_input["source"]].get_blob_client(unit_input["blob"])
            extent = unit_input.get("extent")  # version 2: the input is exactly these bytes of a pack
            if extent is None:
                data = blob.download_blob().readall()
            else:
                data = blob.download_blob(offset=extent[0], length=extent[1]).readall() if extent[1] else b""
                blob.get_blob_properties()  # a missing pack is still not_found for an empty extent
        except ResourceNotFoundError:  # as the node does: this input fails, the others go on (exit 2)
            message = f"stand-in node: no blob {unit_input['blob']!r}"
            print(message, file=sys.stderr)
            files.append({**entry, "status": "failed", "error": {"kind": "not_found", "message": message}})
            status = max(status, 2)
            continue
        text = data.decode("utf-8", errors="replace")
        if "SLEEP-THIS-FILE" in text:
            time.sleep(600)  # a task still running when the run is cancelled
        if "FAIL-THIS-FILE" in text:
            # Left out of the result altogether: the orchestrator must notice the silence.
            print(f"stand-in node: asked to fail on {unit_input['relpath']}", file=sys.stderr)
            status = 4
            continue
        counts = Counter(re.findall(r"[^\W_]+", text.casefold()))
        rows = [f"{word}:\t{count}" for word, count in counts.most_common(manifest["top"])]
        labels = ("Node: ", "Task: ", "Job:  ", "Pool: ")
        lines = ["Word\tCount", "-" * 30, *rows, "-" * 30]
        for label, name in zip(labels, IDENTITY_VARIABLES, strict=True):
            lines.append(label + identity.get(name, "local"))
        text = "\n".join(lines) + "\n"
        output.upload_blob(unit_input["output_name"], text.encode("utf-8"), overwrite=True)
        files.append(
            {
                **entry,
                "status": "ok",
                "counted": [0, len(data)],
                "size": len(data),
                "etag": None,
                "words": sum(counts.values()),
                "distinct": len(counts),
                "invalid_bytes": 0,
                "output_uploaded": True,
                "counts": [[word, count] for word, count in counts.items()],
            }
        )
    document = {
        "format": "topn.result",
        "version": 1,
        "unit": manifest["unit"],
        "tokenizer": manifest["tokenizer"],
        "top": manifest["top"],
        "identity": identity,
        "files": files,
    }
    result = gzip.compress(json.dumps(document).encode("utf-8"))
    output.upload_blob(manifest["result_name"], result, overwrite=True)
    return status


sys.exit(main())
