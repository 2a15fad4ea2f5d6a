"""Golden fixtures: each fixtures/<case>/input.* rewritten by its spec.yaml must equal the case's
expected graph (expected.pbtxt for TensorFlow inputs of any container, expected.onnx for ONNX),
compared structurally (optrewrite.diff). After a deliberate change, regenerate with
``pytest tests/test_fixtures.py --optrewrite-regen`` (or python tools/regen_fixtures.py) and
review the diff."""
from __future__ import annotations

from pathlib import Path

import pytest

from optrewrite.api import rewrite_file
from optrewrite.pytest_plugin import GraphGolden

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CASES = sorted(p for p in FIXTURES.iterdir() if (p / "spec.yaml").exists())


def input_of(case: Path) -> Path:
    return next(case.glob("input.*"))


def expected_of(case: Path) -> Path:
    """The case's expected graph, as the tests and tools/regen_fixtures.py name it."""
    return case / ("expected.onnx" if input_of(case).suffix == ".onnx" else "expected.pbtxt")


def test_fixtures_cover_every_input_format() -> None:
    suffixes = {input_of(c).suffix for c in CASES}
    assert suffixes >= {".pb", ".pbtxt", ".meta", ".onnx"}


def test_fixtures_hold_only_their_input_spec_and_expected_graph() -> None:
    for case in CASES:
        assert {p.name for p in case.iterdir()} == {input_of(case).name, "spec.yaml", expected_of(case).name}, case


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fixture_rewrites_to_expected_graph(case: Path, tmp_path: Path, graph_golden: GraphGolden) -> None:
    src = input_of(case)
    out = tmp_path / f"out{src.suffix}"
    rewrite_file(src, case / "spec.yaml", output=out)
    graph_golden(out, expected_of(case))
