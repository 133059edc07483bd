"""Run each Microsoft Batch client's own SharedKey signer over the shared request cases.

`python -m tests.integration.emulator.clients.signers` rewrites tests/unit/emulator/client_signatures.json
from the live signers (it needs the cached client venvs and node_modules, as the tests do).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.integration.emulator.clients import venvs
from tests.unit.emulator.signer_cases import (
    ACCOUNT,
    CLIENT_API_VERSIONS,
    KEY,
    RequestCase,
    SignedRequest,
    request_cases,
)

HERE = Path(__file__).parent
REPO = HERE.parents[3]
VECTORS = REPO / "tests" / "unit" / "emulator" / "client_signatures.json"


def _run_signer(command: Sequence[str], cases: list[RequestCase]) -> list[dict[str, str]]:
    spec = {"account": ACCOUNT, "key": KEY, "requests": cases}
    completed = subprocess.run(
        command, input=json.dumps(spec), capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{command[0]} signer failed: {completed.stderr[-2000:]}")
    headers: list[dict[str, str]] = json.loads(completed.stdout)
    return headers


def _node_fetch_wire_headers(case: RequestCase, signed: dict[str, str]) -> dict[str, str]:
    """The headers node-fetch (ms-rest-js's transport) sends: it adds only Content-Length.

    It sends the body's byte length, `0` for a bodiless POST or PUT, and nothing otherwise (so a
    DELETE carries no Content-Length); the real-client tests check this end to end.
    """
    wire = dict(signed)
    if case["body"] is not None:
        wire["Content-Length"] = str(len(case["body"].encode("utf-8")))
    elif case["method"] in ("POST", "PUT"):
        wire["Content-Length"] = "0"
    return wire


def sign_all() -> list[SignedRequest]:
    """Every request case signed by every client's signer, with the headers it sends."""
    signed: list[SignedRequest] = []
    js_cases = request_cases(CLIENT_API_VERSIONS["javascript-10.2.0"])
    js_headers = _run_signer(["node", str(HERE / "js" / "sign_requests.cjs")], js_cases)
    for case, headers in zip(js_cases, js_headers, strict=True):
        signed.append(
            {
                "client": "javascript-10.2.0",
                "method": case["method"],
                "url": case["url"],
                "headers": _node_fetch_wire_headers(case, headers),
            }
        )
    track1 = HERE / "python" / "sign_requests_track1.py"
    track2 = HERE / "python" / "sign_requests_track2.py"
    for client, venv, script in (
        ("python-14.2.0", venvs.AZURE_BATCH_14, track1),
        ("python-1.1.0", venvs.TUTORIAL, track1),
        ("python-15.0.0b1-az-cli", venvs.AZURE_CLI, track2),
    ):
        cases = request_cases(CLIENT_API_VERSIONS[client])
        headers_list = _run_signer([str(venvs.ensure(venv)), str(script)], cases)
        for case, headers in zip(cases, headers_list, strict=True):
            signed.append(
                {"client": client, "method": case["method"], "url": case["url"], "headers": headers}
            )
    return signed


if __name__ == "__main__":
    VECTORS.write_text(json.dumps(sign_all(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {VECTORS}")
