"""node.bundle's build side: the lock format, what the committed lock carries, the bundle's entry point."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.bootstrap import EXIT_UNSUPPORTED
from node.bundle import (
    BundleBuildError,
    LockedWheel,
    bundle_main_source,
    fetch_wheels,
    manifest_text,
    parse_lock,
    read_lock,
    render_lock,
)

_names = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
_versions = st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){0,2}", fullmatch=True)
_wheels = st.builds(
    lambda name, version, digest: (f"{name}-{version}-py3-none-any.whl", digest),
    _names,
    _versions,
    st.binary(min_size=1, max_size=8).map(lambda data: hashlib.sha256(data).hexdigest()),
)


@given(
    st.dictionaries(
        st.sampled_from(["cp310", "cp311", "cp312", "cp313", "cp39"]),
        st.lists(_wheels, min_size=1, max_size=5, unique_by=lambda wheel: wheel[0]),
        min_size=1,
    )
)
def test_lock_text_reads_back_as_written(sets: dict[str, list[tuple[str, str]]]) -> None:
    locked = {
        tag: [LockedWheel(tag, name, digest) for name, digest in wheels] for tag, wheels in sets.items()
    }
    parsed = parse_lock(render_lock(locked, "a header\nover two lines"))
    assert {tag: sorted(wheels, key=str) for tag, wheels in parsed.items()} == {
        tag: sorted(wheels, key=str) for tag, wheels in locked.items()
    }


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# only a comment\n",
        "x-1.0-py3-none-any.whl sha256:" + "a" * 64,  # a line before any section
        "[cp311]\n",  # an empty section
        "[cp311]\nx-1.0-py3-none-any.whl sha256:" + "a" * 63,
        "[cp311]\nx-1.0-py3-none-any.whl " + "a" * 64,
        "[cp311]\nx-1.0.tar.gz sha256:" + "a" * 64,
        "[cp311]\nx-1.0-py3-none-any.whl sha256:" + "A" * 64,
        "[py311]\nx-1.0-py3-none-any.whl sha256:" + "a" * 64,
        "[cp311]\nx-1.0-py3-none-any.whl sha256:" + "a" * 64 + "\n[cp311]\n",
    ],
)
def test_a_malformed_lock_is_refused(text: str) -> None:
    with pytest.raises(BundleBuildError):
        parse_lock(text)


def test_requirement_comes_from_the_wheel_file_name() -> None:
    wheel = LockedWheel("cp311", "azure_storage_blob-12.31.1-py3-none-any.whl", "a" * 64)
    assert wheel.requirement == "azure_storage_blob==12.31.1"


def _glibc_needed(filename: str) -> tuple[int, int] | None:
    """The oldest glibc a wheel's platform tags accept (None: any platform)."""
    platforms = filename[: -len(".whl")].split("-")[-1].split(".")
    if platforms == ["any"]:
        return None
    legacy = {"manylinux1_x86_64": (2, 5), "manylinux2010_x86_64": (2, 12), "manylinux2014_x86_64": (2, 17)}
    needed = []
    for platform in platforms:
        match = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", platform)
        if match:
            needed.append((int(match[1]), int(match[2])))
        elif platform in legacy:
            needed.append(legacy[platform])
        else:
            raise AssertionError(f"{filename}: platform {platform} is not manylinux x86_64")
    return min(needed)


def test_the_committed_lock_carries_the_storage_sdk_for_every_supported_version() -> None:
    sets = read_lock()
    assert sorted(sets) == ["cp310", "cp311", "cp312", "cp313"]
    for tag, wheels in sets.items():
        names = {wheel.filename.split("-")[0] for wheel in wheels}
        assert {"azure_storage_blob", "azure_core", "aiohttp", "cryptography", "cffi", "multidict"} <= names
        assert len(names) == len(wheels), f"{tag}: one wheel per distribution"
        for wheel in wheels:
            python, abi = wheel.filename.split("-")[-3:-1]
            assert (python, abi) in {("py3", "none"), (tag, tag)} or (
                abi == "abi3" and int(python[3:]) <= int(tag[3:])
            ), f"{wheel.filename} cannot load on {tag}"
            needed = _glibc_needed(wheel.filename)
            assert needed is None or needed <= (2, 17), f"{wheel.filename} needs glibc {needed}"
    # Resolved by a real 3.10 (markers are evaluated on the resolving interpreter): aiohttp needs
    # async-timeout there, and only there.
    assert any(wheel.filename.startswith("async_timeout-") for wheel in sets["cp310"])
    assert not any(wheel.filename.startswith("async_timeout-") for wheel in sets["cp313"])


def test_manifest_lists_each_wheel_with_its_digest_in_name_order() -> None:
    wheels = [
        LockedWheel("cp311", "b-1-py3-none-any.whl", "b" * 64),
        LockedWheel("cp311", "a-1-py3-none-any.whl", "a" * 64),
    ]
    assert manifest_text(wheels) == f"{'a' * 64} a-1-py3-none-any.whl\n{'b' * 64} b-1-py3-none-any.whl\n"


def test_bundle_entry_point_refuses_interpreters_too_old_for_the_bootstrap(tmp_path: Path) -> None:
    source = bundle_main_source(["cp311", "cp310"])
    compile(source, "__main__.py", "exec")
    # Run it as an interpreter older than 3.7 would: with sys.version_info patched low.
    probe = tmp_path / "probe.py"
    probe.write_bytes(b"import sys\nsys.version_info = (3, 6, 15)\n" + source)
    completed = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=30)
    assert completed.returncode == EXIT_UNSUPPORTED
    assert completed.stderr.startswith(
        "node: the node bundle needs CPython 3.10, 3.11 on Linux x86_64 with glibc >= 2.17 (manylinux2014); "
        "this is Python "
    )


def test_wheels_already_in_the_cache_are_not_downloaded_again(tmp_path: Path) -> None:
    data = b"pretend wheel"
    name = "x-1.0-py3-none-any.whl"
    (tmp_path / name).write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    sets = {tag: [LockedWheel(tag, name, digest)] for tag in ("cp310", "cp313")}
    assert fetch_wheels(sets, tmp_path) == 0
