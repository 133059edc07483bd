"""A minimal stand-in for node.pyz, speaking the node's documented command line and blob contract.

Integration tests of the pipeline use it so they test the orchestrator, not the node (the e2e tests
run the real node). It counts `words`-tokenizer words and writes the `_OUTPUT` and counts blobs.
"""

import argparse
import gzip
import json
import re
import sys
from collections import Counter
from pathlib import Path

from azure.storage.blob import ContainerClient


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--filepath", action="append", required=True)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--tokenizer", default="words")
    parser.add_argument("--output-container-url", required=True)
    parser.add_argument("--output-name", action="append", required=True)
    parser.add_argument("--counts-name", action="append", required=True)
    args = parser.parse_args()
    text = Path(args.filepath[0]).read_text(encoding="utf-8", errors="replace")
    if "FAIL-THIS-FILE" in text:
        print("stand-in node: asked to fail", file=sys.stderr)
        return 4
    counts = Counter(re.findall(r"[^\W_]+", text.casefold()))
    rows = [f"{word}:\t{count}" for word, count in counts.most_common(args.top)]
    output = (
        "\n".join(["Word\tCount", "-" * 30, *rows, "-" * 30, "Node: n", "Task: t", "Job:  j", "Pool: p"])
        + "\n"
    )
    document = {
        "format": "topn.counts",
        "version": 1,
        "file": args.filepath[0],
        "tokenizer": args.tokenizer,
        "words": sum(counts.values()),
        "distinct": len(counts),
        "invalid_bytes": 0,
        "counts": [[word, count] for word, count in counts.items()],
    }
    container = ContainerClient.from_container_url(args.output_container_url)
    container.upload_blob(args.output_name[0], output.encode("utf-8"), overwrite=True)
    container.upload_blob(
        args.counts_name[0], gzip.compress(json.dumps(document).encode("utf-8")), overwrite=True
    )
    return 0


sys.exit(main())
