"""Task script for the tutorial-style client: count a file's words, upload the top N with a SAS.

Runs on an (emulated) compute node with nothing but the standard library, as the seed tutorial's
task ran with only what its start task installed.
"""

import argparse
import collections
import os
import string
import urllib.request
from pathlib import Path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--filepath", required=True)
    parser.add_argument("--numwords", type=int, required=True)
    parser.add_argument("--outputurl", required=True, help="output container URL with a write SAS")
    args = parser.parse_args()

    source = Path(args.filepath)
    words = [token.strip(string.punctuation) for token in source.read_text(encoding="utf-8").split()]
    counts = collections.Counter(word for word in words if word)
    lines = [f"{word}:\t{count}" for word, count in counts.most_common(args.numwords)]
    lines.append(f"Task: {os.environ['AZ_BATCH_TASK_ID']}")
    stem, ext = source.stem, source.suffix
    container, _, sas = args.outputurl.partition("?")
    if not container.startswith(("http://", "https://")):
        parser.error("--outputurl must be an http(s) URL")
    upload = urllib.request.Request(  # noqa: S310 (scheme checked above)
        f"{container}/{stem}_OUTPUT{ext}?{sas}",
        data=("\n".join(lines) + "\n").encode("utf-8"),
        method="PUT",
        headers={"x-ms-blob-type": "BlockBlob"},
    )
    with urllib.request.urlopen(upload, timeout=30) as response:  # noqa: S310 (scheme checked above)
        print(f"uploaded {stem}_OUTPUT{ext}: HTTP {response.status}")


if __name__ == "__main__":
    main()
