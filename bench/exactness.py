"""Every `_OUTPUT` file of a bench run checked against an independent count of its input.

The reference is the test suite's (tests/e2e/run_cli: written from the spec, not from node/), so a
benchmark's "every result exact" is not topn checking itself.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.run_cli import output_rows, reference_top


def check_exact(texts: Path, out: Path, tokenizer: str = "words", top: int = 10) -> int:
    """The number of inputs checked; SystemExit naming the first few whose `_OUTPUT` rows differ."""
    wrong: list[str] = []
    checked = 0
    for path in sorted(texts.rglob("*.txt")):
        relative = path.relative_to(texts)
        output = out / relative.with_name(f"{relative.stem}_OUTPUT.txt")
        expected = reference_top([path.read_text(encoding="utf-8")], tokenizer, top)
        if not output.is_file() or output_rows(output) != expected:
            wrong.append(str(relative))
        checked += 1
    if wrong:
        raise SystemExit(f"{len(wrong)} of {checked} results differ from the reference: {wrong[:5]}")
    print(f"every result exact: {checked} _OUTPUT files equal the reference count", flush=True)
    return checked
