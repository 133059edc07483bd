"""A minimal stand-in for node.pyz, speaking the node's documented command line and blob contract.

Integration tests of the pipeline use it so they test the orchestrator, not the node (the e2e tests
run the real node). It counts `words`-tokenizer words and writes the `_OUTPUT` and counts blobs.
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

from azure.storage.blob import ContainerClient


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
    parser = argparse.ArgumentParser()
    parser.add_argument("--filepath", action="append", required=True)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--tokenizer", default="words")
    parser.add_argument("--output-container-url", default=os.environ.get("TOPN_OUTPUT_SAS_URL"))
    parser.add_argument("--output-name", action="append", required=True)
    parser.add_argument("--counts-name", action="append", required=True)
    args = parser.parse_args()
    container = ContainerClient.from_container_url(args.output_container_url)
    status = 0
    for filepath, output_name, counts_name in zip(
        args.filepath, args.output_name, args.counts_name, strict=True
    ):
        try:
            text = Path(filepath).read_text(encoding="utf-8", errors="replace")
        except OSError as error:  # as the node does: this input fails, the others go on (exit 2)
            print(f"stand-in node: cannot read input {filepath!r}: {error.strerror}", file=sys.stderr)
            status = max(status, 2)
            continue
        if "SLEEP-THIS-FILE" in text:
            time.sleep(600)  # a task still running when the run is cancelled
        if "FAIL-THIS-FILE" in text:
            print(f"stand-in node: asked to fail on {filepath}", file=sys.stderr)
            status = 4
            continue
        counts = Counter(re.findall(r"[^\W_]+", text.casefold()))
        rows = [f"{word}:\t{count}" for word, count in counts.most_common(args.top)]
        lines = [
            "Word\tCount",
            "-" * 30,
            *rows,
            "-" * 30,
            f"Node: {variant()}",
            "Task: t",
            "Job:  j",
            "Pool: p",
        ]
        document = {
            "format": "topn.counts",
            "version": 1,
            "file": filepath,
            "tokenizer": args.tokenizer,
            "words": sum(counts.values()),
            "distinct": len(counts),
            "invalid_bytes": 0,
            "counts": [[word, count] for word, count in counts.items()],
        }
        container.upload_blob(output_name, ("\n".join(lines) + "\n").encode("utf-8"), overwrite=True)
        blob = gzip.compress(json.dumps(document).encode("utf-8"))
        container.upload_blob(counts_name, blob, overwrite=True)
    return status


sys.exit(main())
