"""One scanner for every test that checks nothing secret was printed or written."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

# A SAS signature (`sig=` followed by its value) or a bearer token in any text we produced.
_SAS_SIGNATURE = re.compile(r"sig=[A-Za-z0-9%+/=]{10,}")
_BEARER = re.compile(r"Bearer\s+[A-Za-z0-9\-_.]{20,}")
# A work unit's manifest (`topn.unit`, compact JSON as the orchestrator writes it, ranges null): by
# design it carries the read SAS of the run's input container for its node (docs/contracts.md), and
# it lives where the node reads it, a blob in that container and the task's resource file. Those
# whole documents are taken out before scanning; a SAS anywhere else is still a leak.
_MANIFEST = re.compile(r'\{"format":"topn\.unit","version":[12],.*?"inputs":\[.*?\]\}', re.DOTALL)


def find_secrets(texts: Iterable[tuple[str, str]], keys: Iterable[str]) -> list[str]:
    """Describe every leak in (source name, text) pairs: an account key, a SAS signature, a token."""
    keys = [key for key in keys if key]
    leaks: list[str] = []
    for source, text in texts:
        for key in keys:
            # A key can travel inside a URL or a form body, percent-encoded ('+' '/' '=' escaped).
            if key in text or quote(key, safe="") in text:
                leaks.append(f"{source}: contains an account key")
        signature = _SAS_SIGNATURE.search(text)
        if signature:
            leaks.append(f"{source}: contains a SAS signature ({signature.group(0)[:8]}...)")
        if _BEARER.search(text):
            leaks.append(f"{source}: contains a bearer token")
    return leaks


def without_manifests(text: str) -> str:
    """`text` without the unit manifests in it (each carries its node's input SAS by design)."""
    return _MANIFEST.sub("<topn.unit manifest>", text)


def texts_under(folder: Path) -> list[tuple[str, str]]:
    """Every file under `folder` as text (binary files decoded with replacement), manifests taken out."""
    return [
        (str(path), without_manifests(path.read_bytes().decode("utf-8", errors="replace")))
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]
