"""Sign request descriptions with a track-1 azure-batch SDK's own SharedKeyAuth (run in that SDK's venv).

The request is prepared by `requests` exactly as msrest's session prepares it (body, then auth), so
the headers printed are the ones that go on the wire.
stdin: {"account": ..., "key": ..., "requests": [{"method", "url", "headers", "body"}]}
"""

import json
import sys

import requests
from azure.batch.batch_auth import SharedKeyAuth


def main() -> None:
    spec = json.load(sys.stdin)
    auth = SharedKeyAuth("Authorization", spec["account"], spec["key"])
    signed = []
    for request in spec["requests"]:
        prepared = requests.Request(
            request["method"],
            request["url"],
            headers=request["headers"],
            data=None if request["body"] is None else request["body"].encode("utf-8"),
            auth=auth,
        ).prepare()
        signed.append(dict(prepared.headers))
    json.dump(signed, sys.stdout)


if __name__ == "__main__":
    main()
