"""Build `node.pyz`, a zipapp of the `node` package: `python -m node.pack OUT` or `build_zipapp(OUT)`.

The archive's bytes depend only on the source files (fixed timestamps and permissions, sorted
entries, no compression), so its SHA-256 is stable across builds and machines: the orchestrator
names the staged blob by that hash.
"""

from __future__ import annotations

import io
import sys
import zipapp
import zipfile
from pathlib import Path

INTERPRETER = "/usr/bin/env python3"
PACKAGE_DIR = Path(__file__).resolve().parent
# The zip format cannot store times before 1980; any fixed time makes the bytes reproducible.
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_ARCHIVE_MAIN = b'''"""node.pyz: run the topn node script."""

import sys

from node.cli import main

# The guard matters: worker processes (spawn) run this file again as __mp_main__.
if __name__ == "__main__":
    sys.exit(main())
'''


def package_files() -> list[Path]:
    """The package's Python sources, in a fixed order."""
    return sorted(path for path in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in path.parts)


def stored_entry(name: str) -> zipfile.ZipInfo:
    """A zip entry with fixed time and mode, stored uncompressed (so the bytes are reproducible)."""
    info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def archive_bytes() -> bytes:
    """The zip (without the interpreter line) holding `__main__.py` and the `node` package."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(stored_entry("__main__.py"), _ARCHIVE_MAIN)
        for path in package_files():
            name = "node/" + path.relative_to(PACKAGE_DIR).as_posix()
            archive.writestr(stored_entry(name), path.read_bytes())
    return buffer.getvalue()


def build_zipapp(target: Path) -> Path:
    """Write `node.pyz` to `target` (folders created as needed) and return its path."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    # Through zipapp, which adds the interpreter line and the executable bit; written aside and
    # renamed so a reader never sees half a file.
    zipapp.create_archive(io.BytesIO(archive_bytes()), str(temporary), interpreter=INTERPRETER)
    temporary.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1:
        print("usage: python -m node.pack OUTPUT.pyz", file=sys.stderr)
        return 2
    print(build_zipapp(Path(arguments[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
