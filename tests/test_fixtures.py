"""Golden fixtures: each fixtures/<case>/input.* rewritten by its spec.yaml must print as
its expected.txt (optrewrite.canonical). Regenerate with python tools/regen_fixtures.py."""
from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from optrewrite.api import rewrite_file
from optrewrite.canonical import canonical_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CASES = sorted(p for p in FIXTURES.iterdir() if (p / "expected.txt").exists())


def test_fixtures_cover_every_input_format() -> None:
    suffixes = {next(c.glob("input.*")).suffix for c in CASES}
    assert suffixes >= {".pb", ".pbtxt", ".meta", ".onnx"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fixture_rewrites_to_expected_text(case: Path, tmp_path: Path) -> None:
    src = next(case.glob("input.*"))
    out = tmp_path / f"out{src.suffix}"
    rewrite_file(src, case / "spec.yaml", output=out)
    actual = canonical_file(out)
    expected = (case / "expected.txt").read_text()
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True), actual.splitlines(keepends=True),
                f"{case.name}/expected.txt", "rewritten", n=2,
            )
        )
        pytest.fail(f"{case.name} differs from its golden file "
                    f"(python tools/regen_fixtures.py to accept):\n{diff[:20000]}")
