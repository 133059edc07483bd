"""Requests that each Microsoft Batch client's own signer signs for the SharedKey tests.

`client_signatures.json` beside this file holds what those signers produced for these requests
(recorded by tests/integration/emulator/clients/signers.py, which also re-checks it against the
live signers); the unit tests verify the emulator accepts every one.
"""

from __future__ import annotations

import base64
from typing import TypedDict

ACCOUNT = "devaccount"
KEY = base64.b64encode(bytes(range(64))).decode()
OTHER_KEY = base64.b64encode(bytes(range(1, 65))).decode()
OCP_DATE = "Sat, 21 Nov 2026 22:46:13 GMT"
JSON_TYPE = "application/json; odata=minimalmetadata"

# The api-version each client sends, which is part of the signed query.
CLIENT_API_VERSIONS = {
    "javascript-10.2.0": "2022-10-01.16.0",
    "python-14.2.0": "2024-02-01.19.0",
    "python-1.1.0": "2016-07-01.3.1",
    "python-15.0.0b1-az-cli": "2024-02-01.19.0",
}


class RequestCase(TypedDict):
    method: str
    url: str
    headers: dict[str, str]
    body: str | None


class SignedRequest(TypedDict):
    client: str
    method: str
    url: str
    headers: dict[str, str]  # as sent on the wire, Authorization included


def request_cases(api_version: str) -> list[RequestCase]:
    """One request per shape that signers treat differently: bodies, bodiless methods, paths, queries."""
    base = "http://127.0.0.1:1"
    version = f"api-version={api_version}"
    date = {"ocp-date": OCP_DATE}
    json_headers = {**date, "Content-Type": JSON_TYPE}

    def case(method: str, path: str, body: str | None = None, **headers: str) -> RequestCase:
        all_headers = {**(json_headers if body is not None else date), **headers}
        return {"method": method, "url": f"{base}{path}", "headers": all_headers, "body": body}

    return [
        case("GET", f"/pools?{version}&maxresults=2"),
        case("GET", f"/jobs?{version}&%24select=&maxresults=5"),  # a blank value: only JS signs it
        case("GET", f"/jobs/j1/tasks?{version}&%24filter=state%20eq%20%27completed%27&%24select=id%2Cstate"),
        case("HEAD", f"/pools/p1?{version}"),
        case("POST", f"/pools?{version}", '{"id":"p1","vmSize":"standard_d2s_v3","targetDedicatedNodes":1}'),
        case("POST", f"/pools/p1/resize?{version}&timeout=30", '{"targetDedicatedNodes":2}'),
        case("POST", f"/jobs/j1/terminate?{version}"),
        case("PATCH", f"/jobs/j1?{version}", '{"priority":5}'),
        case("DELETE", f"/jobs/j1?{version}"),
        case("DELETE", f"/pools/p%20x?{version}"),
        case("DELETE", f"/jobs/j1/tasks/t%C3%BC1?{version}"),
        case("GET", f"/jobs/j1/tasks/t1/files/wd%2Fout.txt?{version}"),
        case("HEAD", f"/jobs/j1/tasks/t1/files/stdout.txt?{version}"),
        case("GET", f"/jobs/j1/tasks/t1/files/stdout.txt?{version}", **{"ocp-range": "bytes=0-4"}),
        case("DELETE", f"/pools/p1/nodes/n1/files/startup%2Fwd%2Fa.txt?{version}&recursive=false"),
    ]
