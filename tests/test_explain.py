"""``optrewrite explain``: the site table, the rules that select each site, the drawing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pydot
import pytest
from onnx import TensorProto, helper

from optrewrite.api import rewrite_file
from optrewrite.cli import main
from optrewrite.explain import explain_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CASES = sorted(p for p in FIXTURES.iterdir() if (p / "spec.yaml").exists())


def _input(case: Path) -> Path:
    return next(case.glob("input.*"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_explain_counts_what_the_rewrite_inserts(case: Path, tmp_path: Path) -> None:
    """Per-site and shared node counts add up to the real rewrite's, and the actions agree."""
    src = _input(case)
    ex = explain_file(src, case / "spec.yaml")
    report = rewrite_file(src, case / "spec.yaml", output=tmp_path / f"out{src.suffix}")
    assert {r.site.update: r.inserted for r in ex.rows} == {s.update: s.inserted for s in report.sites}
    assert sum(r.nodes for r in ex.rows) + ex.shared_nodes == report.nodes_added
    for row in ex.rows:
        assert (row.nodes > 0) == bool(row.inserted), row
        actions = [rule.split(":")[0] for rule in row.selected_by]
        assert actions == row.inserted


def test_table_names_rules_patterns_and_exclusions(capsys: pytest.CaptureFixture[str]) -> None:
    case = FIXTURES / "adam_resource_sparse"
    assert main(["explain", str(_input(case)), "--spec", str(case / "spec.yaml")]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}
    assert "guard: excluded by 're:.*/bias'" in lines["dense/bias"]
    assert "clip[0]: 'emb' (max_norm 1, dims [1])" in lines["emb"]
    assert "ResourceApplyAdam" in lines["dense/kernel"] and "dense/kernel/Adam, dense/kernel/Adam_1" in lines["dense/kernel"]
    assert "sparse" in lines["emb"] and "[5, 2]" in lines["emb"]
    assert "guard, clip[0] (+" in lines["emb"]


def test_without_a_spec_it_lists_the_sites_only(capsys: pytest.CaptureFixture[str]) -> None:
    src = _input(FIXTURES / "gd_ref_sparse_meta")
    assert main(["explain", str(src)]) == 0
    out = capsys.readouterr().out
    assert "3 update sites" in out and "selected by" not in out
    assert "GradientDescent (decomposed)" in out and "ApplyGradientDescent" in out


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    case = FIXTURES / "decomposed_momentum"
    assert main(["explain", str(_input(case)), "--spec", str(case / "spec.yaml"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == "optrewrite.explain/1"
    (row,) = data["rows"]
    assert row["site"]["variable"] == "W" and row["site"]["slots"] == ["m"] and row["inserted"] == ["guard", "clip[0]"]


def test_skipped_updates_are_listed_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A training node inside an If branch is not rewritten; explain says so."""
    f = TensorProto.FLOAT
    inner = helper.make_node("Momentum", ["r", "t", "w", "g", "v"], ["w2", "v2"], domain="ai.onnx.preview.training",
                             alpha=0.9, beta=1.0, mode="standard", norm_coefficient=0.0)
    branch = helper.make_graph([inner], "then", [], [helper.make_tensor_value_info("w2", f, [2])])
    other = helper.make_graph([helper.make_node("Identity", ["w"], ["w3"])], "else", [],
                              [helper.make_tensor_value_info("w3", f, [2])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=other)], "step",
        [helper.make_tensor_value_info(n, f, [2]) for n in ("w", "g", "v")]
        + [helper.make_tensor_value_info("r", f, []), helper.make_tensor_value_info("t", TensorProto.INT64, []),
           helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", f, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.preview.training", 1)])
    onnx.save(model, tmp_path / "nested.onnx")
    assert main(["explain", str(tmp_path / "nested.onnx")]) == 0
    out = capsys.readouterr().out
    assert "(no optimizer update found)" in out
    assert "skipped (1):" in out and "updates in subgraphs are not rewritten" in out


def test_dot_draws_each_site_with_its_neighbours(tmp_path: Path) -> None:
    case = FIXTURES / "momentum_ref_dense"
    dot = tmp_path / "sites.dot"
    assert main(["explain", str(_input(case)), "--spec", str(case / "spec.yaml"), "--dot", str(dot)]) == 0
    (graph,) = pydot.graph_from_dot_file(str(dot))
    clusters = {sub.get_label().strip('"'): sub for sub in graph.get_subgraphs()}
    assert set(clusters) == {"dense/kernel: guard, clip[0]", "dense/bias: guard", "shared"}
    labels = {n.get_name(): (n.get_label() or "").strip('"') for n in graph.get_nodes()}
    labels.update({n.get_name(): (n.get_label() or "").strip('"')
                   for sub in graph.get_subgraphs() for n in sub.get_nodes()})
    kernel = [labels[n.get_name()] for n in clusters["dense/kernel: guard, clip[0]"].get_nodes()]
    assert any("optrewrite_guard/merge" in label for label in kernel)
    assert any("optrewrite_clip_0" in label for label in kernel)
    # The neighbours: the guarded update (changed: it waits for the guard now) and the gradient.
    outside = [label for name, label in labels.items()
               if not any(name == n.get_name() for sub in clusters.values() for n in sub.get_nodes())]
    assert any(label.startswith("train/update_dense/kernel/ApplyMomentum") and "(changed)" in label
               for label in outside)
    edges = graph.get_edges()
    assert any(e.get_style() == "dashed" for e in edges), "control edges are drawn dashed"
    ids = set(labels)
    assert all(e.get_source() in ids and e.get_destination() in ids for e in edges)


def test_dot_of_an_onnx_model_shows_the_if_branch_sizes(tmp_path: Path) -> None:
    case = FIXTURES / "momentum_preview_guarded"
    dot = tmp_path / "m.dot"
    assert main(["explain", str(_input(case)), "--spec", str(case / "spec.yaml"), "--dot", str(dot)]) == 0
    text = dot.read_text()
    assert "If (" in text and "nodes inside)" in text
    assert pydot.graph_from_dot_data(text)


def test_dot_needs_a_spec_and_svg_needs_graphviz(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    case = FIXTURES / "momentum_ref_dense"
    assert main(["explain", str(_input(case)), "--dot", str(tmp_path / "x.dot")]) == 2
    assert "give --spec" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # no graphviz here
    assert main(["explain", str(_input(case)), "--spec", str(case / "spec.yaml"), "--dot", str(tmp_path / "x.svg")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs graphviz's dot" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not any(Path(p, "dot").exists() for p in os.environ.get("PATH", "").split(os.pathsep)),
                    reason="graphviz's dot is not installed")
def test_svg_is_rendered_beside_the_dot_file(tmp_path: Path) -> None:
    case = FIXTURES / "momentum_ref_dense"
    assert main(["explain", str(_input(case)), "--spec", str(case / "spec.yaml"), "--dot", str(tmp_path / "x.dot")]) == 0
    assert (tmp_path / "x.dot.svg").read_text().lstrip().startswith(("<?xml", "<svg"))


def test_spec_errors_exit_2_with_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "wrap.yaml"
    spec.write_text("version: 1\nguard:\n  variables: [a]\nclip:\n  - variables: [b]\n    max_norm: -1\n")
    assert main(["explain", str(_input(FIXTURES / "momentum_ref_dense")), "--spec", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"optrewrite: error: {spec}:6: clip[0].max_norm: must be a positive") and err.count("\n") == 1


def test_a_selector_that_matches_nothing_is_marked_under_the_table(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """explain is where selectors are debugged: the table shows what the rest of the spec
    does, and each selector that matches no update is named with its line."""
    spec = tmp_path / "wrap.yaml"
    spec.write_text("version: 1\nguard:\n  variables: [nothing_matches]\n"
                    "clip:\n  - variables: ['*']\n    max_norm: 1.0\n  - variables: [nor_this]\n    max_norm: 1.0\n")
    assert main(["explain", str(_input(FIXTURES / "momentum_ref_dense")), "--spec", str(spec)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert f"matches nothing: {spec}:3: guard: selects no variable with an optimizer update (nothing_matches)" in lines
    assert f"matches nothing: {spec}:7: clip[1]: selects no variable with an optimizer update (nor_this)" in lines
    rows = [line for line in lines[2:] if line.split() and line.split()[0] in ("w", "b", "w1", "b1")] or lines[2:4]
    assert all("clip[0]" in row for row in rows), out
    assert "guard" not in "".join(rows), out
    assert main(["explain", str(_input(FIXTURES / "momentum_ref_dense")), "--spec", str(spec), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["unmatched"]) == 2 and all(r["inserted"] == ["clip[0]"] for r in data["rows"]), data


@pytest.mark.parametrize("case", ["adam_resource_sparse", "adam_preview_lowered"])
def test_explain_imports_neither_runtime(case: str) -> None:
    c = FIXTURES / case
    code = (
        "import sys\nfrom optrewrite.cli import main\n"
        f"rc = main(['explain', {str(_input(c))!r}, '--spec', {str(c / 'spec.yaml')!r}])\n"
        "loaded = [m for m in ('tensorflow', 'onnxruntime') if m in sys.modules]\n"
        "assert rc == 0 and not loaded, (rc, loaded)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(not any(Path(p, "dot").exists() for p in os.environ.get("PATH", "").split(os.pathsep)),
                    reason="graphviz's dot is not installed")
def test_a_very_large_drawing_is_not_rendered_unless_svg_is_asked_for(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import optrewrite.explain as explain

    monkeypatch.setattr(explain, "AUTO_SVG_MAX_LINES", 10)
    case = FIXTURES / "momentum_ref_dense"
    args = ["explain", str(_input(case)), "--spec", str(case / "spec.yaml"), "--dot"]
    assert main([*args, str(tmp_path / "x.dot")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.dot"]
    assert main([*args, str(tmp_path / "x.svg")]) == 0
    assert (tmp_path / "x.svg").exists()


def test_onnx_only_requests_on_a_tensorflow_graph_are_refused(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    src = _input(FIXTURES / "momentum_ref_dense")
    spec = tmp_path / "wrap.yaml"
    spec.write_text("version: 1\nguard: {}\nupdates:\n  - {variable: W, gradient: dW, updated: W_new}\n")
    assert main(["explain", str(src), "--spec", str(spec)]) == 2
    assert "updates: names update sites of ONNX models only" in capsys.readouterr().err
    assert main(["explain", str(src), "--lower"]) == 2
    assert "lowering applies to ONNX models only" in capsys.readouterr().err


def test_the_table_fits_columns_unless_wide(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    case = FIXTURES / "adam_resource_sparse"
    argv = ["explain", str(_input(case)), "--spec", str(case / "spec.yaml")]
    monkeypatch.setenv("COLUMNS", "120")
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    table = lines[1:5]
    assert max(len(line) for line in table) <= 120, table
    assert all(line.split()[0] in ("variable", "dense/kernel", "dense/bias", "emb") for line in table), table
    assert any("…" in line for line in table)
    assert main([*argv, "--wide"]) == 0
    wide = capsys.readouterr().out.splitlines()[1:5]
    assert max(len(line) for line in wide) > 120 and not any("…" in line for line in wide)
    monkeypatch.delenv("COLUMNS")
    assert main(argv) == 0  # a pipe: whole rows
    assert capsys.readouterr().out.splitlines()[1:5] == wide
