"""Sign request descriptions with a track-2 azure-batch's BatchSharedKeyAuthPolicy (the one az batch bundles).

The signed request then goes through `requests` as azure-core's RequestsTransport sends it, so the
headers printed are the wire's: requests adds `Content-Length: 0` to a bodiless write, matching the
"0" the policy signs for it. Run in the azure-cli venv.
stdin: {"account": ..., "key": ..., "requests": [{"method", "url", "headers", "body"}]}
"""

import json
import sys

import requests
from azure.batch._patch import BatchSharedKeyAuthPolicy
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.rest import HttpRequest


def main() -> None:
    spec = json.load(sys.stdin)
    policy = BatchSharedKeyAuthPolicy(AzureNamedKeyCredential(spec["account"], spec["key"]))
    signed = []
    for request in spec["requests"]:
        body = None if request["body"] is None else request["body"].encode("utf-8")
        # azure-core's HttpRequest sets Content-Length itself when there is a body.
        http_request = HttpRequest(
            request["method"], request["url"], headers=request["headers"], content=body
        )
        policy.on_request(PipelineRequest(http_request, PipelineContext(None)))
        prepared = requests.Request(
            request["method"], request["url"], headers=dict(http_request.headers), data=body
        ).prepare()
        signed.append(dict(prepared.headers))
    json.dump(signed, sys.stdout)


if __name__ == "__main__":
    main()
