"""Build the self-contained node bundle: `python -m node.bundle OUT` or `build_bundle(OUT)`.

The bundle is a zipapp that runs with a node's own `python3` and needs nothing installed: it holds
the `node` package, the wheels of azure-storage-blob (aio) and everything it imports for each
CPython version in node/bundle.lock (manylinux2014 x86_64), and a bootstrap (node.bootstrap)
that refuses other interpreters and unpacks the matching wheels once per node.

The wheels are the exact files named in the lock, checked against their SHA-256, downloaded with
pip the first time and kept in a cache folder (default `.topn/node-wheels`), so later builds are
offline. The bundle's bytes depend only on the sources and the lock, so its SHA-256 can name the
staged blob, as for node.pyz.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import zipapp
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from node.bootstrap import EXIT_UNSUPPORTED, PLATFORM_DESCRIPTION, WHEELS_FOLDER, describe_tags
from node.pack import INTERPRETER, PACKAGE_DIR, package_files, stored_entry

LOCK_PATH = PACKAGE_DIR / "bundle.lock"
PLATFORM = "manylinux2014_x86_64"
DEFAULT_WHEEL_CACHE = Path(".topn") / "node-wheels"
PIP_TIMEOUT_S = 600.0


class BundleBuildError(Exception):
    """The bundle could not be built (a wheel could not be fetched, or the lock is malformed)."""


@dataclass(frozen=True)
class LockedWheel:
    """One wheel file of one interpreter's set."""

    tag: str  # "cp311"
    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        """`name==version`, from the wheel's file name (PEP 427: name-version-...)."""
        name, version = self.filename.split("-")[:2]
        return f"{name}=={version}"


def parse_lock(text: str) -> dict[str, list[LockedWheel]]:
    """node/bundle.lock: `[cp3X]` sections of `<wheel file name> sha256:<hex>` lines; `#` comments."""
    sets: dict[str, list[LockedWheel]] = {}
    tag: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            tag = line[1:-1]
            if not (tag.startswith("cp3") and tag[3:].isdigit()) or tag in sets:
                raise BundleBuildError(f"bundle.lock line {number}: bad or repeated section {line!r}")
            sets[tag] = []
            continue
        parts = line.split()
        digest = parts[1][len("sha256:") :] if len(parts) == 2 and parts[1].startswith("sha256:") else ""
        if (
            tag is None
            or len(parts) != 2
            or not parts[0].endswith(".whl")
            or parts[0].count("-") < 4
            or len(digest) != 64
            or not all(character in "0123456789abcdef" for character in digest)
        ):
            raise BundleBuildError(
                f"bundle.lock line {number}: expected '<file>.whl sha256:<hex>', got {raw!r}"
            )
        sets[tag].append(LockedWheel(tag, parts[0], digest))
    if not sets or not all(sets.values()):
        raise BundleBuildError("bundle.lock names no wheels (or has an empty section)")
    return sets


def render_lock(sets: dict[str, list[LockedWheel]], header: str) -> str:
    """The lock file's text (sections and lines sorted, so regenerating it gives a clean diff)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for tag in sorted(sets):
        lines += ["", f"[{tag}]"]
        lines += [f"{wheel.filename} sha256:{wheel.sha256}" for wheel in sorted(sets[tag], key=_by_name)]
    return "\n".join(lines) + "\n"


def _by_name(wheel: LockedWheel) -> str:
    return wheel.filename


def read_lock(path: Path = LOCK_PATH) -> dict[str, list[LockedWheel]]:
    return parse_lock(path.read_text(encoding="utf-8"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached(wheel: LockedWheel, cache: Path) -> bool:
    path = cache / wheel.filename
    return path.is_file() and file_sha256(path) == wheel.sha256


def _pip_download_command(tag: str, requirements: Sequence[str], destination: Path) -> list[str]:
    return [
        sys.executable,
        *("-m", "pip", "download", "--disable-pip-version-check", "--quiet", "--no-deps"),
        *("--only-binary=:all:", "--platform", PLATFORM, "--implementation", "cp"),
        *("--python-version", f"{tag[2]}.{tag[3:]}", "--abi", tag),
        *("--dest", str(destination)),
        *requirements,
    ]


def fetch_wheels(sets: dict[str, list[LockedWheel]], cache: Path) -> int:
    """Put every locked wheel in `cache`, checked by SHA-256; returns how many were downloaded.

    `--no-deps` with the exact versions of the lock: what is carried is the lock, never a fresh
    resolution. One pip per interpreter version, all at once (downloads wait on the network).
    """
    cache.mkdir(parents=True, exist_ok=True)
    missing = {tag: [wheel for wheel in wheels if not _cached(wheel, cache)] for tag, wheels in sets.items()}
    missing = {tag: wheels for tag, wheels in missing.items() if wheels}
    if not missing:
        return 0
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as scratch:
        processes: dict[str, subprocess.Popen[str]] = {}
        failures = []
        try:
            for tag, wheels in missing.items():
                destination = Path(scratch) / tag
                destination.mkdir()
                command = _pip_download_command(tag, [wheel.requirement for wheel in wheels], destination)
                processes[tag] = subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            for tag, process in processes.items():
                try:
                    _, stderr = process.communicate(timeout=PIP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    stderr = f"pip download took longer than {PIP_TIMEOUT_S:.0f} s"
                    process.kill()
                    process.communicate()
                if process.returncode != 0:
                    failures.append(f"{tag}: {stderr.strip()[-2000:]}")
        finally:
            # Interrupted (or a pip that failed to start): no download outlives the build.
            for process in processes.values():
                if process.poll() is None:
                    process.kill()
                    process.wait()
        if failures:
            raise BundleBuildError("pip could not download the bundle's wheels:\n" + "\n".join(failures))
        for tag, wheels in missing.items():
            for wheel in wheels:
                _take_download(wheel, Path(scratch) / tag, cache)
    return sum(len(wheels) for wheels in missing.values())


def _take_download(wheel: LockedWheel, folder: Path, cache: Path) -> None:
    downloaded = folder / wheel.filename
    if not downloaded.is_file():
        got = sorted(path.name for path in folder.iterdir())
        raise BundleBuildError(
            f"pip chose other files than the lock's {wheel.filename} for {wheel.tag}: {got}; "
            "regenerate node/bundle.lock (python -m node.bundle_lock)"
        )
    if file_sha256(downloaded) != wheel.sha256:
        raise BundleBuildError(f"{wheel.filename} does not match the SHA-256 in node/bundle.lock")
    downloaded.replace(cache / wheel.filename)


def manifest_text(wheels: Sequence[LockedWheel]) -> str:
    """`wheels/<tag>.txt` in the bundle: what node.bootstrap unpacks for that interpreter."""
    return "".join(f"{wheel.sha256} {wheel.filename}\n" for wheel in sorted(wheels, key=_by_name))


def bundle_main_source(tags: Sequence[str]) -> bytes:
    """The bundle's `__main__.py`: refuses interpreters too old to import node.bootstrap, then starts it."""
    needed = f"the node bundle needs {describe_tags(tags)} on {PLATFORM_DESCRIPTION}"
    return f'''"""topn node bundle: run the node script with the wheels it carries for this interpreter."""

import sys

# Written so that any Python parses it: older ones get a refusal, not a SyntaxError.
if sys.version_info < (3, 7):
    sys.stderr.write("node: %s; this is Python %s.\\n" % ({needed!r}, sys.version.split()[0]))
    sys.exit({EXIT_UNSUPPORTED})

from node.bootstrap import launch

# The guard matters: worker processes (spawn) run this file again as __mp_main__.
if __name__ == "__main__":
    sys.exit(launch())
'''.encode()


def bundle_archive_bytes(sets: dict[str, list[LockedWheel]], cache: Path) -> bytes:
    """The bundle's zip (without the interpreter line); every wheel must already be in `cache`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(stored_entry("__main__.py"), bundle_main_source(sorted(sets)))
        for path in package_files():
            archive.writestr(
                stored_entry("node/" + path.relative_to(PACKAGE_DIR).as_posix()), path.read_bytes()
            )
        for tag in sorted(sets):
            archive.writestr(stored_entry(f"{WHEELS_FOLDER}{tag}.txt"), manifest_text(sets[tag]).encode())
        # Each file once, even when several interpreters share it (pure-Python and abi3 wheels);
        # stored, because a wheel is already compressed.
        for filename in sorted({wheel.filename for wheels in sets.values() for wheel in wheels}):
            archive.writestr(stored_entry(WHEELS_FOLDER + filename), (cache / filename).read_bytes())
    return buffer.getvalue()


def build_bundle(target: Path, wheel_cache: Path | None = None, lock: Path = LOCK_PATH) -> Path:
    """Write the bundle to `target` (folders created as needed) and return its path.

    The orchestrator's entry point. Downloads only wheels missing from `wheel_cache` (default
    `.topn/node-wheels` under the current folder); raises BundleBuildError when one cannot be had.
    """
    cache = Path(wheel_cache) if wheel_cache is not None else DEFAULT_WHEEL_CACHE
    sets = read_lock(lock)
    fetch_wheels(sets, cache)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    zipapp.create_archive(
        io.BytesIO(bundle_archive_bytes(sets, cache)), str(temporary), interpreter=INTERPRETER
    )
    temporary.replace(target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.bundle", description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="where to write the bundle, e.g. dist/node-bundle.pyz")
    parser.add_argument("--wheel-cache", type=Path, default=DEFAULT_WHEEL_CACHE, help="downloaded wheels")
    args = parser.parse_args(argv)
    try:
        path = build_bundle(args.output, args.wheel_cache)
    except BundleBuildError as error:
        print(f"node.bundle: {error}", file=sys.stderr)
        return 1
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB, {describe_tags(sorted(read_lock()))} on {PLATFORM})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
