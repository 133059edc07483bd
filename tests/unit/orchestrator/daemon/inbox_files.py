"""Files arriving in a test's inbox, as the daemon's completeness check hands them on."""

from __future__ import annotations

from orchestrator.service.claims import DaemonFolders
from orchestrator.service.intake import CompleteFile


def complete(folders: DaemonFolders, relpath: str, text: str, source: str = "watch") -> CompleteFile:
    """`text` written at `relpath` in the inbox, found complete by `source`."""
    path = folders.inbox / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return CompleteFile(path, relpath, len(text), source, None)
