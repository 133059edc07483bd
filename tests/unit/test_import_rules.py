"""The rooms' import rules (docs/architecture.md), checked on every import statement, nested ones too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# (the room, by path prefix; what it may never import, by module prefix)
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("node/", ("orchestrator", "emulator")),
    ("emulator/", ("orchestrator", "node")),
    (
        "orchestrator/azure/",
        ("orchestrator.run", "orchestrator.service", "orchestrator.cli", "orchestrator.console"),
    ),
    (
        "orchestrator/local/",
        ("orchestrator.run", "orchestrator.service", "orchestrator.cli", "orchestrator.console"),
    ),
    (
        "orchestrator/run/",
        ("orchestrator.service", "orchestrator.cli", "orchestrator.console", "orchestrator.local"),
    ),
    ("orchestrator/service/", ("orchestrator.cli", "orchestrator.console")),
    # Shared packages, like the shared top-level modules.
    (
        "orchestrator/settings/",
        ("orchestrator.run", "orchestrator.service", "orchestrator.cli", "orchestrator.console"),
    ),
    (
        "orchestrator/journal/",
        ("orchestrator.run", "orchestrator.service", "orchestrator.cli", "orchestrator.console"),
    ),
]
# Top-level modules of orchestrator/ other than the CLI's own are shared by every room.
SHARED_TOP_LEVEL_FORBIDDEN = (
    "orchestrator.run",
    "orchestrator.service",
    "orchestrator.cli",
    "orchestrator.console",
)
CLI_MODULES = {"cli.py", "console.py", "progress.py", "__main__.py"}


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            # `from orchestrator import run` names a room too.
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def forbidden_for(relative: str) -> tuple[str, ...]:
    for prefix, forbidden in RULES:
        if relative.startswith(prefix):
            return forbidden
    if (
        relative.startswith("orchestrator/")
        and relative.count("/") == 1
        and Path(relative).name not in CLI_MODULES
    ):
        return SHARED_TOP_LEVEL_FORBIDDEN
    return ()


def breaks(module: str, forbidden: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in forbidden)


SOURCES = sorted(
    path.relative_to(ROOT).as_posix()
    for folder in ("node", "emulator", "orchestrator")
    for path in (ROOT / folder).rglob("*.py")
)


@pytest.mark.parametrize("relative", SOURCES)
def test_no_module_imports_across_a_rule_of_the_architecture(relative: str) -> None:
    forbidden = forbidden_for(relative)
    bad = [module for module in imported_modules(ROOT / relative) if breaks(module, forbidden)]
    assert bad == [], f"{relative} imports {bad} (see docs/architecture.md)"


def test_the_checker_sees_a_forbidden_import_in_a_function_body(tmp_path: Path) -> None:
    sample = tmp_path / "stage.py"
    sample.write_text(
        "def f():\n    from orchestrator.cli import main\n    from orchestrator import service\n"
    )
    assert [m for m in imported_modules(sample) if breaks(m, forbidden_for("orchestrator/run/x.py"))] == [
        "orchestrator.cli",
        "orchestrator.cli.main",
        "orchestrator.service",
    ]
