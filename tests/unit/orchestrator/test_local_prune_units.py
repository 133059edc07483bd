"""The pure parts of `topn local prune`: byte counts as printed, the removal of old node folders."""

from __future__ import annotations

from pathlib import Path

from orchestrator.local.prune import folder_bytes, remove_old_node_folders
from orchestrator.service.localcommands import format_bytes


def test_bytes_are_printed_exactly_with_a_readable_unit_from_one_kib() -> None:
    assert format_bytes(0) == "0 bytes"
    assert format_bytes(1023) == "1,023 bytes"
    assert format_bytes(1024) == "1.0 KiB (1,024 bytes)"
    assert format_bytes(1_258_291) == "1.2 MiB (1,258,291 bytes)"
    assert format_bytes(3 * 1024**4) == "3.0 TiB (3,298,534,883,328 bytes)"
    assert format_bytes(5 * 1024**5) == "5120.0 TiB (5,629,499,534,213,120 bytes)"


def test_old_node_folders_go_and_the_emulators_own_python_stays(tmp_path: Path) -> None:
    root = tmp_path / "emulator"
    (root / ".python-bin").mkdir(parents=True)
    (root / ".python-bin" / "python3").write_bytes(b"#!")
    for node in ("tvm-1", "tvm-2"):
        (root / "pool-a" / node / "workitems" / "job" / "t0").mkdir(parents=True)
        (root / "pool-a" / node / "workitems" / "job" / "t0" / "stdout.txt").write_bytes(b"x" * 100)
    (root / "pool-b" / "tvm-3").mkdir(parents=True)
    (root / "pool-b" / "tvm-3" / "node.pyz").write_bytes(b"y" * 7)
    (root / "pool-b" / "tvm-3" / "link").symlink_to(root / ".python-bin" / "python3")

    removed = remove_old_node_folders(root)

    assert [(item.what, item.size_bytes, item.on_disk) for item in removed] == [
        ("emulator node folders of pool pool-a (2 nodes)", 200, True),
        ("emulator node folders of pool pool-b (1 nodes)", 7, True),  # a symlink counts as nothing
    ]
    assert sorted(path.name for path in root.iterdir()) == [".python-bin"]
    assert folder_bytes(root) == 2
    assert remove_old_node_folders(tmp_path / "missing") == []
