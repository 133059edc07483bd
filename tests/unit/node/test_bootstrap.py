"""node.bootstrap: the interpreter gate, the cache folder choice and the one-time unpacking."""

from __future__ import annotations

import compileall
import hashlib
import io
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.bootstrap import (
    CACHE_VARIABLE,
    BundleError,
    Interpreter,
    cache_root_candidates,
    choose_cache_root,
    describe_tags,
    ensure_site,
    interpreter_problem,
    parse_manifest,
    site_folder_name,
    unpack_wheel,
)

TAGS = ["cp310", "cp311", "cp312", "cp313"]
NEEDED = (
    "the node bundle needs CPython 3.10, 3.11, 3.12, 3.13 on Linux x86_64 with glibc >= 2.17 (manylinux2014)"
)


def _ubuntu(version: tuple[int, int], **changes: object) -> Interpreter:
    base = Interpreter("cpython", version, "linux", "x86_64", "glibc 2.35", False)
    return base._replace(**changes)


@pytest.mark.parametrize("minor", [10, 11, 12, 13])
def test_supported_interpreters_pass(minor: int) -> None:
    assert interpreter_problem(_ubuntu((3, minor)), TAGS) is None
    assert interpreter_problem(_ubuntu((3, minor), libc="glibc 2.17"), TAGS) is None


@pytest.mark.parametrize(
    ("interpreter", "expected"),
    [
        (_ubuntu((3, 8)), "this is CPython 3.8 on linux x86_64: it carries no wheels for this interpreter."),
        (
            _ubuntu((3, 14)),
            "this is CPython 3.14 on linux x86_64: it carries no wheels for this interpreter.",
        ),
        (
            _ubuntu((3, 13), free_threaded=True),
            "this is CPython 3.13 (free-threaded) on linux x86_64: "
            "a free-threaded build cannot load its wheels.",
        ),
        (
            _ubuntu((3, 11), implementation="pypy"),
            "this is pypy 3.11 on linux x86_64: it carries no wheels for this interpreter.",
        ),
        (
            _ubuntu((3, 12), machine="aarch64"),
            "this is CPython 3.12 on linux aarch64: its wheels are for another platform.",
        ),
        (
            _ubuntu((3, 12), system="darwin"),
            "this is CPython 3.12 on darwin x86_64: its wheels are for another",
        ),
        (_ubuntu((3, 12), libc=""), "the C library is not glibc (unknown)."),
        (_ubuntu((3, 12), libc="glibc 2.12"), "glibc 2.12 is older than 2.17."),
    ],
)
def test_refusals_say_what_was_found_and_what_is_needed(interpreter: Interpreter, expected: str) -> None:
    problem = interpreter_problem(interpreter, TAGS)
    assert problem is not None
    assert problem.startswith(NEEDED + "; ")
    assert expected in problem
    assert problem.endswith("Use a pool image whose python3 is one of those (e.g. Ubuntu 22.04 or 24.04).")


@given(
    implementation=st.sampled_from(["cpython", "pypy", "graalpy"]),
    version=st.tuples(st.integers(2, 4), st.integers(0, 20)),
    system=st.sampled_from(["linux", "darwin", "win32", "freebsd14"]),
    machine=st.sampled_from(["x86_64", "aarch64", "i686"]),
    libc=st.one_of(
        st.just(""), st.just("musl"), st.builds("glibc {}.{}".format, st.integers(1, 3), st.integers(0, 40))
    ),
    free_threaded=st.booleans(),
)
def test_the_gate_passes_exactly_the_interpreters_the_wheels_fit(
    implementation: str,
    version: tuple[int, int],
    system: str,
    machine: str,
    libc: str,
    free_threaded: bool,
) -> None:
    interpreter = Interpreter(implementation, version, system, machine, libc, free_threaded)
    glibc = tuple(int(part) for part in libc[6:].split(".")) if libc.startswith("glibc ") else None
    fits = (
        implementation == "cpython"
        and version[0] == 3
        and 10 <= version[1] <= 13
        and not free_threaded
        and system == "linux"
        and machine == "x86_64"
        and glibc is not None
        and glibc >= (2, 17)
    )
    problem = interpreter_problem(interpreter, TAGS)
    assert (problem is None) == fits
    if problem is not None:
        assert problem.startswith(NEEDED)
        assert f" {version[0]}.{version[1]}" in problem


def test_tags_are_described_in_version_order() -> None:
    assert describe_tags(["cp310", "cp39", "cp313"]) == "CPython 3.9, 3.10, 3.13"


def test_cache_candidates_prefer_the_setting_then_the_batch_shared_folder() -> None:
    environ = {CACHE_VARIABLE: "/explicit", "AZ_BATCH_NODE_SHARED_DIR": "/mnt/batch/tasks/shared"}
    assert cache_root_candidates(environ, "/home/u", "/tmp", 1000) == [
        Path("/explicit"),
        Path("/mnt/batch/tasks/shared/topn-node-cache"),
        Path("/home/u/.cache/topn-node"),
        Path("/tmp/topn-node-1000"),
    ]
    assert cache_root_candidates({"XDG_CACHE_HOME": "/xdg"}, "", "/tmp", 7) == [
        Path("/xdg/topn-node"),
        Path("/tmp/topn-node-7"),
    ]


def test_a_cache_folder_others_can_write_or_that_cannot_be_made_is_passed_over(tmp_path: Path) -> None:
    shared = tmp_path / "group-writable"
    shared.mkdir()
    shared.chmod(0o775)
    blocked = tmp_path / "a-file" / "cache"
    (tmp_path / "a-file").write_text("not a folder", encoding="utf-8")
    usable = tmp_path / "fresh" / "cache"
    assert choose_cache_root([shared, blocked, usable]) == usable
    assert usable.stat().st_mode & 0o777 == 0o700
    with pytest.raises(BundleError, match=CACHE_VARIABLE) as refused:
        choose_cache_root([shared, blocked])
    assert str(shared) in str(refused.value) and str(blocked) in str(refused.value)


def test_a_symbolic_link_is_not_a_cache_folder(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    fallback = tmp_path / "fallback"
    assert choose_cache_root([link, fallback]) == fallback


def test_manifest_lines_are_checked() -> None:
    digest = "a" * 64
    assert parse_manifest(f"{digest} x-1.0-py3-none-any.whl\n") == [(digest, "x-1.0-py3-none-any.whl")]
    for damaged in (f"{digest[:-1]} x.whl", f"{digest} ../x.whl", f"{digest} x.tar.gz", digest):
        with pytest.raises(BundleError, match="damaged at line 1"):
            parse_manifest(damaged)


def _wheel(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_unpack_wheel_keeps_importable_files_only(tmp_path: Path) -> None:
    wheel = _wheel(
        {
            "pkg/": b"",
            "pkg/__init__.py": b"VALUE = 1\n",
            "pkg-1.0.dist-info/METADATA": b"Name: pkg\n",
            "pkg-1.0.data/platlib/pkg_ext.py": b"EXT = 2\n",
            "pkg-1.0.data/scripts/pkg-tool": b"#!/bin/sh\n",
        }
    )
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        unpack_wheel(archive, tmp_path)
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if path.is_file()) == [
        "pkg-1.0.dist-info/METADATA",
        "pkg/__init__.py",
        "pkg_ext.py",
    ]


@pytest.mark.parametrize("unsafe", ["../escape.py", "/etc/passwd", "pkg/../../escape.py"])
def test_unpack_wheel_refuses_paths_leaving_the_folder(tmp_path: Path, unsafe: str) -> None:
    with zipfile.ZipFile(io.BytesIO(_wheel({unsafe: b"x"}))) as archive, pytest.raises(BundleError):
        unpack_wheel(archive, tmp_path / "site")
    assert not (tmp_path / "escape.py").exists()


def _bundle(path: Path, wheels: dict[str, bytes], tamper: bool = False) -> Path:
    manifest = "".join(
        f"{hashlib.sha256(data).hexdigest()} {name}\n" for name, data in sorted(wheels.items())
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("wheels/cp311.txt", manifest)
        for name, data in wheels.items():
            archive.writestr("wheels/" + name, data + (b"!" if tamper else b""))
    return path


WHEELS = {
    "alpha-1.0-py3-none-any.whl": _wheel({"alpha/__init__.py": b"NAME = 'alpha'\n"}),
    "beta-2.0-py3-none-any.whl": _wheel({"beta.py": b"NAME = 'beta'\n"}),
}


def test_wheels_are_unpacked_and_compiled_once_into_a_folder_named_by_their_list(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    with zipfile.ZipFile(_bundle(tmp_path / "b.pyz", WHEELS)) as bundle:
        site = ensure_site(bundle, "cp311", root)
        assert site.name == site_folder_name(bundle.read("wheels/cp311.txt"), "cp311")
        assert (site / "alpha" / "__init__.py").read_text(encoding="utf-8") == "NAME = 'alpha'\n"
        assert list((site / "alpha" / "__pycache__").glob("__init__.cpython-*.pyc"))
        (site / "beta.py").write_text("NAME = 'kept'\n", encoding="utf-8")
        assert ensure_site(bundle, "cp311", root) == site
    assert (site / "beta.py").read_text(encoding="utf-8") == "NAME = 'kept'\n", "not unpacked again"
    assert sorted(path.name for path in root.iterdir()) == [".lock", site.name]
    other = {**WHEELS, "gamma-3.0-py3-none-any.whl": _wheel({"gamma.py": b""})}
    with zipfile.ZipFile(_bundle(tmp_path / "c.pyz", other)) as bundle:
        assert ensure_site(bundle, "cp311", root) != site


def test_a_damaged_wheel_stops_the_unpacking_and_leaves_nothing_behind(tmp_path: Path) -> None:
    with (
        zipfile.ZipFile(_bundle(tmp_path / "b.pyz", WHEELS, tamper=True)) as bundle,
        pytest.raises(BundleError, match="does not match its SHA-256"),
    ):
        ensure_site(bundle, "cp311", tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == [".lock", "b.pyz"]


def test_unpackers_starting_together_unpack_once_and_share_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle_path = _bundle(tmp_path / "b.pyz", WHEELS)
    root = tmp_path / "cache"
    root.mkdir()
    (root / ".staging-from-a-killed-unpacker").mkdir()
    start = threading.Barrier(4)
    results: list[Path] = []
    compiled: list[Path] = []
    compile_dir = compileall.compile_dir

    def slow_compile(folder: Path, *args: Any, **kwargs: Any) -> bool:
        compiled.append(folder)
        time.sleep(0.3)  # every other thread has long reached the lock by now
        return compile_dir(folder, *args, **kwargs)

    monkeypatch.setattr(compileall, "compile_dir", slow_compile)

    def unpack() -> None:
        start.wait(timeout=30)
        with zipfile.ZipFile(bundle_path) as bundle:
            results.append(ensure_site(bundle, "cp311", root))

    threads = [threading.Thread(target=unpack) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 4 and len(set(results)) == 1
    assert len(compiled) == 1, "one unpacker; the others waited for its folder"
    assert sorted(path.name for path in root.iterdir()) == [".lock", results[0].name]
    assert (results[0] / "beta.py").is_file()
