"""Start the node script from the self-contained bundle (see node.bundle for how it is built).

The bundle is a zipapp holding the `node` package and, per supported CPython minor version, a set
of wheels (`wheels/<tag>.txt` lists them with their SHA-256). On the first run with an interpreter
the matching set is unpacked once into a cache folder named by the hash of that list, so every
later task on the node starts at once; compiled extensions cannot be imported from inside a zip.

This module runs on whatever `python3` a node has, so it imports only the standard library and
keeps to syntax that Python 3.7 parses: an interpreter that is too old gets a clear refusal,
not a SyntaxError. (The bundle's `__main__.py` refuses anything older than 3.7 by itself.)
"""

from __future__ import annotations

import compileall
import hashlib
import io
import os
import platform
import shutil
import stat
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

EXIT_UNSUPPORTED = 4
PLATFORM_DESCRIPTION = "Linux x86_64 with glibc >= 2.17 (manylinux2014)"
MINIMUM_GLIBC = (2, 17)
CACHE_VARIABLE = "TOPN_NODE_CACHE_DIR"
CHECK_FLAG = "--bundle-check"
WHEELS_FOLDER = "wheels/"
_STAGING_PREFIX = ".staging-"
_LOCK_FILE = ".lock"


class Interpreter(NamedTuple):
    """What decides whether the bundle's wheels can load here."""

    implementation: str  # sys.implementation.name
    version: tuple[int, int]
    system: str  # sys.platform
    machine: str  # platform.machine()
    libc: str  # os.confstr("CS_GNU_LIBC_VERSION"), e.g. "glibc 2.36"; "" when unknown (musl)
    free_threaded: bool  # a 3.13t build cannot load the cp313 wheels


class BundleError(Exception):
    """The bundle cannot start on this node; the message says why and what would work."""


def wheel_tag(version: tuple[int, int]) -> str:
    """The CPython tag of a minor version: (3, 12) -> "cp312"."""
    return f"cp{version[0]}{version[1]}"


def describe_tags(tags: Sequence[str]) -> str:
    """The versions a bundle carries wheels for, in words: ["cp310", "cp311"] -> "CPython 3.10, 3.11"."""
    versions = sorted((int(tag[2]), int(tag[3:])) for tag in tags)
    return "CPython " + ", ".join(f"{major}.{minor}" for major, minor in versions)


def _glibc_version(libc: str) -> tuple[int, int] | None:
    name, _, number = libc.partition(" ")
    parts = number.split(".")
    if name != "glibc" or len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return int(parts[0]), int(parts[1])


def interpreter_problem(interpreter: Interpreter, tags: Sequence[str]) -> str | None:
    """Why the wheels for `tags` cannot run on `interpreter`, or None when they can."""
    name = "CPython" if interpreter.implementation == "cpython" else interpreter.implementation
    found = (
        f"this is {name} {interpreter.version[0]}.{interpreter.version[1]}"
        f"{' (free-threaded)' if interpreter.free_threaded else ''}"
        f" on {interpreter.system} {interpreter.machine}"
    )
    needed = f"the node bundle needs {describe_tags(tags)} on {PLATFORM_DESCRIPTION}"
    reasons = []
    if interpreter.implementation != "cpython" or wheel_tag(interpreter.version) not in tags:
        reasons.append("it carries no wheels for this interpreter")
    if interpreter.free_threaded:
        reasons.append("a free-threaded build cannot load its wheels")
    if not interpreter.system.startswith("linux") or interpreter.machine != "x86_64":
        reasons.append("its wheels are for another platform")
    else:
        glibc = _glibc_version(interpreter.libc)
        if glibc is None:
            reasons.append(f"the C library is not glibc ({interpreter.libc or 'unknown'})")
        elif glibc < MINIMUM_GLIBC:
            reasons.append(f"glibc {glibc[0]}.{glibc[1]} is older than 2.17")
    if not reasons:
        return None
    return (
        f"{needed}; {found}: {'; '.join(reasons)}. "
        "Use a pool image whose python3 is one of those (e.g. Ubuntu 22.04 or 24.04)."
    )


def current_interpreter() -> Interpreter:
    """The running interpreter, as `interpreter_problem` sees it."""
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError, AttributeError):
        libc = ""
    return Interpreter(
        implementation=sys.implementation.name,
        version=(sys.version_info[0], sys.version_info[1]),
        system=sys.platform,
        machine=platform.machine(),
        libc=libc,
        free_threaded=bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
    )


def cache_root_candidates(environ: Mapping[str, str], home: str, temporary: str, uid: int) -> list[Path]:
    """Where the unpacked wheels may live, best first.

    An explicit setting wins; on a Batch node the shared folder is read-write for every task and
    lives as long as the node; then the user's cache folder; last a per-user temporary folder.
    """
    candidates = []
    explicit = environ.get(CACHE_VARIABLE)
    if explicit:
        candidates.append(Path(explicit))
    shared = environ.get("AZ_BATCH_NODE_SHARED_DIR")
    if shared:
        candidates.append(Path(shared) / "topn-node-cache")
    cache_home = environ.get("XDG_CACHE_HOME") or (str(Path(home) / ".cache") if home else "")
    if cache_home:
        candidates.append(Path(cache_home) / "topn-node")
    candidates.append(Path(temporary) / f"topn-node-{uid}")
    return candidates


def _usable_root(path: Path) -> bool:
    """Created if missing; usable only if ours and writable by no one else (it will hold code).

    A symbolic link is refused too: in a shared temporary folder its owner could re-point it later.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = path.lstat()
    except OSError:
        return False
    return (
        stat.S_ISDIR(status.st_mode)
        and status.st_uid == os.getuid()
        and not status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        and os.access(path, os.W_OK | os.X_OK)
    )


def choose_cache_root(candidates: Sequence[Path]) -> Path:
    """The first usable candidate."""
    for path in candidates:
        if _usable_root(path):
            return path
    raise BundleError(
        "no folder to unpack the bundle's wheels into: none of "
        + ", ".join(str(path) for path in candidates)
        + f" can be created, is owned by this user and is writable by it alone; set ${CACHE_VARIABLE}"
    )


def parse_manifest(text: str) -> list[tuple[str, str]]:
    """`wheels/<tag>.txt`: one `<sha256> <wheel file name>` per line -> [(sha256, name)]."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 64 or not parts[1].endswith(".whl") or "/" in parts[1]:
            raise BundleError(f"the bundle's wheel list is damaged at line {number}: {line!r}")
        entries.append((parts[0], parts[1]))
    return entries


def _wheel_member_target(name: str) -> str | None:
    """Where a wheel member goes in the site folder; None for files a program never imports."""
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or not parts[-1]:
        raise BundleError(f"a wheel in the bundle holds an unsafe path: {name!r}")
    if len(parts) > 2 and parts[0].endswith(".data"):
        # Wheel spec: <name>.data/purelib and /platlib go to site-packages; scripts, headers and
        # data files are of no use to an imported library.
        if parts[1] in ("purelib", "platlib"):
            return "/".join(parts[2:])
        return None
    return name


def unpack_wheel(wheel: zipfile.ZipFile, site: Path) -> None:
    """Install one wheel's importable files into `site` (what pip would put in site-packages)."""
    for member in wheel.infolist():
        if member.is_dir():
            continue  # folders are made for the files they hold
        relative = _wheel_member_target(member.filename)
        if relative is None:
            continue
        destination = site.joinpath(*relative.split("/"))
        destination.parent.mkdir(parents=True, exist_ok=True)
        with wheel.open(member) as source, destination.open("wb") as target:
            shutil.copyfileobj(source, target)


def site_folder_name(manifest: bytes, tag: str) -> str:
    """Named by the wheel list's hash: a bundle with other wheels never reuses a stale folder."""
    return f"{hashlib.sha256(manifest).hexdigest()[:16]}-{tag}"


def ensure_site(bundle: zipfile.ZipFile, tag: str, root: Path) -> Path:
    """The folder holding the unpacked wheels for `tag`, unpacking them on first use.

    Tasks starting together on one node take turns on a lock file, so one of them unpacks and
    the others wait and use its folder (16 task slots would otherwise unpack 16 copies). The
    wheels go to a staging folder that is renamed into place when complete: a folder with the
    final name is always whole, even after an unpacker was killed half-way.
    """
    manifest = bundle.read(f"{WHEELS_FOLDER}{tag}.txt")
    site = root / site_folder_name(manifest, tag)
    if site.is_dir():
        return site
    import fcntl  # here, not at the top: the orchestrator imports this module on any OS

    with (root / _LOCK_FILE).open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file is closed, or the process dies
        if site.is_dir():
            return site
        for leftover in root.glob(_STAGING_PREFIX + "*"):
            shutil.rmtree(leftover, ignore_errors=True)  # from a killed unpacker: we hold the lock
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=root))
        try:
            _unpack_all(bundle, manifest, staging, site)
            staging.rename(site)
        finally:
            if staging.is_dir():
                shutil.rmtree(staging, ignore_errors=True)
    return site


def _unpack_all(bundle: zipfile.ZipFile, manifest: bytes, staging: Path, site: Path) -> None:
    for digest, name in parse_manifest(manifest.decode("ascii")):
        data = bundle.read(WHEELS_FOLDER + name)
        if hashlib.sha256(data).hexdigest() != digest:
            raise BundleError(f"the bundle is damaged: {name} does not match its SHA-256")
        with zipfile.ZipFile(io.BytesIO(data)) as wheel:
            unpack_wheel(wheel, staging)
    # Compiled once here, named as the final folder, so no task pays for it again (nor needs to
    # write bytecode next to shared files, which PYTHONDONTWRITEBYTECODE may forbid).
    compileall.compile_dir(staging, ddir=site, quiet=2, workers=1)
    staging.chmod(0o755)  # mkdtemp made it 0700; readable (not writable) by others, like any library


def _archive_path() -> str:
    loader = __spec__.loader if __spec__ is not None else None
    archive = getattr(loader, "archive", None)
    if not isinstance(archive, str):
        raise BundleError("node.bootstrap runs only from inside the bundle (python3 node-bundle.pyz ...)")
    return archive


def bundle_tags(bundle: zipfile.ZipFile) -> list[str]:
    """The interpreter tags a bundle carries wheels for."""
    names = bundle.namelist()
    return sorted(
        name[len(WHEELS_FOLDER) : -len(".txt")]
        for name in names
        if name.startswith(WHEELS_FOLDER) and name.endswith(".txt")
    )


def launch(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Check the interpreter, put the unpacked wheels on sys.path and run node.cli.

    `--bundle-check` alone only checks the interpreter (exit 0 or EXIT_UNSUPPORTED) and unpacks
    nothing: a start task can refuse a node whose python3 cannot run the bundle before any task
    is scheduled on it.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    environment = os.environ if environ is None else environ
    interpreter = current_interpreter()
    try:
        with zipfile.ZipFile(_archive_path()) as bundle:
            tags = bundle_tags(bundle)
            problem = interpreter_problem(interpreter, tags)
            if problem is not None:
                raise BundleError(problem)
            tag = wheel_tag(interpreter.version)
            if arguments == [CHECK_FLAG]:
                print(
                    f"node: this interpreter can run the bundle ({describe_tags([tag])}, {interpreter.libc})"
                )
                return 0
            root = choose_cache_root(
                cache_root_candidates(
                    environment, environment.get("HOME", ""), tempfile.gettempdir(), os.getuid()
                )
            )
            site = ensure_site(bundle, tag, root)
    except (BundleError, OSError, zipfile.BadZipFile) as error:
        print(f"node: {error}", file=sys.stderr, flush=True)
        return EXIT_UNSUPPORTED
    # After the archive itself (sys.path[0]), so `node` always comes from the bundle; spawned
    # worker processes inherit this sys.path.
    sys.path.insert(1, str(site))
    from node.cli import main

    return main(arguments)
