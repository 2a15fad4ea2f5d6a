"""One report row per variable when a SavedModel holds its training step more than once.

A Keras SavedModel saved with a ``train`` signature holds the step twice: the signature's
``__inference_train_*`` function and the object graph's own trace. Both may run, so both are
rewritten; the report and explain list each variable once, the row's update naming both
functions, its inserted nodes (in both copies) counted for that row.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from optrewrite.cli import main
from optrewrite.tf2 import io

from .test_savedmodel_format import _build, _rewrite, _spec

tf = pytest.importorskip("tensorflow")

VARIABLES = {"net/head_a/kernel", "net/head_a/bias", "net/head_b/kernel", "net/head_b/bias"}
SPEC = "version: 1\nguard:\n  variables: ['*']\nclip:\n  - variables: ['net/head_a/kernel']\n    max_norm: 0.5\n"


@pytest.fixture(scope="module")
def adam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("report") / "adam", "adam")


def test_the_step_is_held_twice_and_both_copies_are_rewritten(adam: Path, tmp_path: Path) -> None:
    src = io.load(adam, io.read(adam))
    trains = sorted(f.signature.name for f in src.meta.graph_def.library.function
                    if f.signature.name.startswith("__inference_train_"))
    assert len(trains) == 2, trains
    out = tmp_path / "out"
    report = tmp_path / "r.json"
    assert _rewrite(adam, _spec(tmp_path, SPEC), out, "--report", str(report)) == 0
    dst = io.load(out, io.read(out))
    changed = {f.signature.name for f in dst.meta.graph_def.library.function
               if f.SerializeToString(deterministic=True)
               != src.functions[f.signature.name].SerializeToString(deterministic=True)}
    assert changed == set(trains)
    data = json.loads(report.read_text())
    rows = data["sites"]
    assert sorted(r["variable"] for r in rows) == sorted(VARIABLES), rows
    for row in rows:
        functions = {u.split("/", 1)[0] for u in row["update"].split(", ")}
        assert functions == set(trains), row
        expected = ["guard", "clip[0]"] if row["variable"] == "net/head_a/kernel" else ["guard"]
        assert row["inserted"] == expected, row
    assert data["counts"]["updates_found"] == 4 and data["counts"]["guarded"] == 4
    assert data["counts"]["clipped"] == 1


def test_explain_counts_each_variable_once(adam: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path, SPEC)
    report = tmp_path / "r.json"
    assert _rewrite(adam, spec, tmp_path / "out", "--report", str(report)) == 0
    capsys.readouterr()
    assert main(["explain", str(adam), "--spec", str(spec), "--json"]) == 0
    ex = json.loads(capsys.readouterr().out)
    rows = ex["rows"]
    assert sorted(r["site"]["variable"] for r in rows) == sorted(VARIABLES)
    assert all(r["nodes"] > 0 for r in rows)
    added = json.loads(report.read_text())["nodes_added"]
    assert sum(r["nodes"] for r in rows) + ex["shared_nodes"] == added
    assert ex["shared_nodes"] == 0  # every inserted node belongs to one variable's row
    assert main(["explain", str(adam)]) == 0
    assert "4 update sites" in capsys.readouterr().out
