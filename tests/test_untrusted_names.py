"""Names from untrusted graphs and specs reach the terminal escaped, and JSON exactly.

A node name may hold an ESC sequence (``\\x1b[2J`` clears the screen), a CR or LF (which
forge a line of output) or a bidi override (U+202E shows text reversed). Every human output —
explain's table, diff lines, the rewrite's summary, error messages, DOT labels — shows them as
escapes (:func:`optrewrite.errors.printable`); ``--json`` and ``--report`` keep them exact.
Also here: an update op whose variable input is no variable is refused before anything is written.
"""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pydot
import pytest

from optrewrite.cli import main
from optrewrite.diff import GraphDiff
from optrewrite.errors import InputError, SpecError, printable
from optrewrite.explain import explain_file
from optrewrite.report import Report
from optrewrite.core import Skip
from optrewrite.tf import proto

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EVIL = "\x1b[2J\r\nforged\u202eline\u2028\x7f\x85"  # clear screen, CR LF, RLO, LSEP, DEL, NEL
TF_KERNEL = "dense/ker" + EVIL + "nel"
TF_APPLY = "train/upd" + EVIL + "ate/ApplyMomentum"
GUARD = "version: 1\nguard: {}\n"


def assert_clean(text: str) -> None:
    """No character that drives a terminal, forges a line or reorders text; only the line
    breaks we print ourselves."""
    bad = [ch for ch in text if (ord(ch) < 0x20 and ch != "\n") or 0x7f <= ord(ch) <= 0x9f
           or ch in "\u2028\u2029\u061c\u200e\u200f" or 0x202a <= ord(ch) <= 0x202e or 0x2066 <= ord(ch) <= 0x2069]
    assert not bad, (bad, text)
    assert "forged" not in {line.strip()[:6] for line in text.splitlines()}, text  # no line starts with it


# --------------------------------------------------------------------------- the helper


@pytest.mark.parametrize(("raw", "shown"), [
    ("dense/kernel", "dense/kernel"),
    ("ëmb/日本/Ωmega", "ëmb/日本/Ωmega"),  # letters of any script stay
    ("a\x1b[31mb", "a\\x1b[31mb"),
    ("a\r\nb\tc\x00", "a\\x0d\\x0ab\\x09c\\x00"),
    ("a\x7fb\x85c\x9b", "a\\x7fb\\x85c\\x9b"),
    ("a\u202eb\u2066c\u2069d\u202ae", "a\\u202eb\\u2066c\\u2069d\\u202ae"),
    ("a\u2028b\u2029c\u200fd\u061c", "a\\u2028b\\u2029c\\u200fd\\u061c"),
    ("a\ud800b", "a\\ud800b"),  # a lone surrogate no terminal encoding can write
])
def test_printable_escapes_controls_and_keeps_letters(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert printable(shown) == shown  # escaping twice changes nothing


def test_error_messages_are_printable_whatever_they_interpolate() -> None:
    assert str(InputError(f"node {TF_KERNEL} is bad")) == f"node {printable(TF_KERNEL)} is bad"
    message = str(SpecError("w\n.yaml", "guard.variables[0]", f"selects no variable ({EVIL})", 3))
    assert_clean(message)
    assert message.startswith("w\\x0a.yaml:3: guard.variables[0]: ")


def test_summary_escapes_names_paths_and_reasons() -> None:
    report = Report(input=f"in{EVIL}.pb", format="GraphDef (binary)", output=f"out{EVIL}.pb", changed=True,
                    note=f"note {EVIL}", skipped=[Skip(TF_APPLY, TF_KERNEL, f"reason {EVIL}")],
                    verified=f"ran {EVIL}")
    text = report.summary()
    assert_clean(text)
    assert f"skipped {printable(TF_APPLY)} ({printable(TF_KERNEL)}): reason {printable(EVIL)}" in text
    assert json.loads(report.to_json())["skipped"][0]["update"] == TF_APPLY  # JSON keeps the exact name


def test_diff_render_escapes_labels_and_lines() -> None:
    text = GraphDiff("TensorFlow", (f"- node {TF_KERNEL} (VariableV2)",)).render(f"a{EVIL}.pb", "b.pb")
    assert_clean(text)
    assert len(text.splitlines()) == 2


# --------------------------------------------------------------------------- a TensorFlow graph


def _rename(graph: proto.GraphDef, old: str, new: str) -> None:
    """Rename node ``old`` (and the nodes under its scope) everywhere it is named."""
    def fix(name: str) -> str:
        return new + name[len(old):] if name == old or name.startswith(old + "/") else name

    for node in graph.node:
        node.name = fix(node.name)
        for i, inp in enumerate(node.input):
            control = inp.startswith("^")
            base, sep, port = inp.lstrip("^").partition(":")
            node.input[i] = ("^" if control else "") + fix(base) + sep + port
        if "_class" in node.attr:
            values = [b"loc:@" + fix(v.decode()[5:]).encode() for v in node.attr["_class"].list.s]
            del node.attr["_class"].list.s[:]
            node.attr["_class"].list.s.extend(values)


@pytest.fixture
def evil_tf(tmp_path: Path) -> Path:
    """momentum_ref_dense with its kernel variable and one update op named with controls, and the
    bias made int32, so that its update is skipped with its name in the reason."""
    graph = proto.GraphDef()
    graph.ParseFromString((FIXTURES / "momentum_ref_dense" / "input.pb").read_bytes())
    _rename(graph, "dense/kernel", TF_KERNEL)
    _rename(graph, "train/update_dense/bias/ApplyMomentum", TF_APPLY)
    next(n for n in graph.node if n.name == "dense/bias").attr["dtype"].type = proto.DT_INT32
    path = tmp_path / "evil.pb"
    path.write_bytes(graph.SerializeToString())
    (tmp_path / "spec.yaml").write_text(GUARD)
    return path


def test_tf_explain_table_escapes_and_json_is_exact(evil_tf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = evil_tf.parent / "spec.yaml"
    assert main(["explain", str(evil_tf), "--spec", str(spec)]) == 0
    out = capsys.readouterr().out
    assert_clean(out)
    assert printable(TF_KERNEL) in out and printable(TF_APPLY) in out

    assert main(["explain", str(evil_tf), "--spec", str(spec), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert TF_KERNEL in [row["site"]["variable"] for row in data["rows"]]
    assert [s["update"] for s in data["skipped"]] == [TF_APPLY]


def test_tf_summary_escapes_and_report_is_exact(evil_tf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = evil_tf.parent / "out.pb"
    report = evil_tf.parent / "report.json"
    assert main([str(evil_tf), "--spec", str(evil_tf.parent / "spec.yaml"), "-o", str(out), "--report", str(report)]) == 0
    err = capsys.readouterr().err
    assert_clean(err)
    assert f"skipped {printable(TF_APPLY)} (dense/bias)" in err
    data = json.loads(report.read_text())
    assert [s["variable"] for s in data["sites"]] == [TF_KERNEL]
    assert [s["update"] for s in data["skipped"]] == [TF_APPLY]


def test_tf_diff_escapes_every_line(evil_tf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = FIXTURES / "momentum_ref_dense" / "input.pb"
    assert main(["diff", str(plain), str(evil_tf)]) == 1
    out = capsys.readouterr().out
    assert_clean(out)
    lines = out.splitlines()
    assert int(lines[0].split()[0]) == len(lines) - 1  # one printed line per difference, none forged
    assert f"+ node {printable(TF_KERNEL)} = VariableV2()" in out


def test_tf_drawing_labels_are_escaped_dot_strings(evil_tf: Path) -> None:
    ex = explain_file(evil_tf, evil_tf.parent / "spec.yaml")
    assert ex.drawing is not None
    dot = ex.drawing.to_dot(title=f"t{EVIL}\"\\")
    assert_clean(dot)
    (graph,) = pydot.graph_from_dot_data(dot)
    labels = [n.get_label() for sub in [graph, *graph.get_subgraphs()] for n in sub.get_nodes() if n.get_label()]
    labels += [s.get_label() for s in graph.get_subgraphs()]
    assert any(printable(TF_KERNEL).replace("\\", "\\\\") in label for label in labels), labels
    title = graph.get_node("graph")[0].get_attributes()["label"]  # as written: a DOT string
    assert title.startswith('"t\\\\x1b[2J\\\\x0d\\\\x0aforged\\\\u202eline')  # the escapes, their backslashes quoted
    assert '\\"\\\\\\nblue: inserted' in title  # the title's quote and backslash quoted, then the legend's line


def test_an_error_naming_the_graph_or_the_spec_is_one_clean_line(
        evil_tf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = evil_tf.parent / "evil.yaml"
    spec.write_text('version: 1\nguard:\n  variables: ["nothing\\e[2J\\r\\n\\u202e"]\n')
    assert main([str(evil_tf), "--spec", str(spec), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert_clean(err)
    assert len(err.splitlines()) == 1 and "selects no variable" in err and "\\x1b[2J" in err


# --------------------------------------------------------------------------- an update of no variable


def _momentum() -> proto.GraphDef:
    graph = proto.GraphDef()
    graph.ParseFromString((FIXTURES / "momentum_ref_dense" / "input.pb").read_bytes())
    return graph


def _apply(graph: proto.GraphDef) -> proto.NodeDef:
    return next(n for n in graph.node if n.name == "train/update_dense/kernel/ApplyMomentum")


def _run(graph: proto.GraphDef, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    src = tmp_path / "in.pb"
    src.write_bytes(graph.SerializeToString())
    (tmp_path / "spec.yaml").write_text(GUARD)
    rc = main([str(src), "--spec", str(tmp_path / "spec.yaml"), "-o", str(tmp_path / "out.pb")])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("through_identity", [False, True])
def test_an_apply_op_whose_variable_input_is_no_variable_is_an_input_error(
        through_identity: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was a skip: exit 0 with the op left in a graph that cannot run."""
    graph = _momentum()
    const = graph.node.add(name="not" + EVIL + "a/var", op="Const")
    const.attr["dtype"].type = proto.DT_FLOAT
    source = const.name
    if through_identity:
        graph.node.add(name="not/read", op="Identity", input=[const.name])
        source = "not/read"
    _apply(graph).input[0] = source
    rc, err = _run(graph, tmp_path, capsys)
    assert rc == 2, err
    assert_clean(err)
    assert len(err.splitlines()) == 1
    assert "'train/update_dense/kernel/ApplyMomentum' (ApplyMomentum): its variable input" in err
    assert "a Const node, not a variable" in err
    assert not (tmp_path / "out.pb").exists()


def test_a_slot_input_that_is_no_variable_is_an_input_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = _momentum()
    graph.node.add(name="zeros", op="Const").attr["dtype"].type = proto.DT_FLOAT
    _apply(graph).input[1] = "zeros"
    rc, err = _run(graph, tmp_path, capsys)
    assert rc == 2 and "its slot input 'zeros' is a Const node, not a variable" in err, err


def test_a_long_identity_chain_still_leads_to_the_variable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = _momentum()
    previous = "dense/kernel"
    for i in range(12):  # more links than the old walk followed
        graph.node.add(name=f"chain/{i}", op="Identity", input=[previous])
        previous = f"chain/{i}"
    _apply(graph).input[0] = previous
    rc, err = _run(graph, tmp_path, capsys)
    assert rc == 0, err
    assert "0 skipped" in err


def test_a_captured_resource_placeholder_is_skipped_naming_tf2_savedmodels(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A TF2 concrete function's GraphDef captures variables as DT_RESOURCE placeholders."""
    graph = _momentum()
    handle = graph.node.add(name="dense/kernel/handle", op="Placeholder")
    handle.attr["dtype"].type = proto.DT_RESOURCE
    _apply(graph).input[0] = "dense/kernel/handle"
    rc, err = _run(graph, tmp_path, capsys)
    assert rc == 0, err
    assert ("skipped train/update_dense/kernel/ApplyMomentum (dense/kernel/handle): the variable input "
            "'dense/kernel/handle' is a captured resource placeholder") in err
    assert "TensorFlow 2 SavedModel" in err


@pytest.mark.parametrize("op", ["RefEnter", "RefSwitch", "Merge", "_Arg"])
def test_a_variable_through_control_flow_is_skipped(
        op: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Legitimate (an update in a loop or a cond branch), but not followed: skipped, not refused."""
    graph = _momentum()
    graph.node.add(name="frame/var", op=op, input=["dense/kernel"] if op != "_Arg" else [])
    _apply(graph).input[0] = "frame/var"
    rc, err = _run(graph, tmp_path, capsys)
    assert rc == 0, err
    assert f"'frame/var' is a {op} node, which optrewrite does not follow to a variable" in err


# --------------------------------------------------------------------------- an ONNX model


ONNX_VAR = "head/a" + EVIL  # selected by the fixture spec's "head/*"


def _rename_onnx(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename tensor ``old`` and every tensor and node named after it (``old`` + suffix)."""
    def fix(name: str) -> str:
        return new + name[len(old):] if name.startswith(old) else name

    g = model.graph
    for values in (g.input, g.output, g.value_info):
        for v in values:
            v.name = fix(v.name)
    for t in g.initializer:
        t.name = fix(t.name)
    for node in g.node:
        node.name = fix(node.name)
        node.input[:] = [fix(i) for i in node.input]
        node.output[:] = [fix(o) for o in node.output]


@pytest.fixture
def evil_onnx(tmp_path: Path) -> Path:
    """momentum_preview_guarded's input with the variable head/a named with controls."""
    src = FIXTURES / "momentum_preview_guarded"
    model = onnx.load_from_string((src / "input.onnx").read_bytes())
    _rename_onnx(model, "head/a", ONNX_VAR)
    path = tmp_path / "evil.onnx"
    path.write_bytes(model.SerializeToString())
    (tmp_path / "spec.yaml").write_text((src / "spec.yaml").read_text())
    return path


def test_onnx_explain_diff_and_summary_escape_and_json_is_exact(
        evil_onnx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = evil_onnx
    spec = path.parent / "spec.yaml"
    assert main(["explain", str(path), "--spec", str(spec)]) == 0
    out = capsys.readouterr().out
    assert_clean(out)
    assert printable(ONNX_VAR) in out

    assert main(["explain", str(path), "--spec", str(spec), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert ONNX_VAR in [row["site"]["variable"] for row in rows]

    report = path.parent / "report.json"
    written = path.parent / "out.onnx"
    assert main([str(path), "--spec", str(spec), "-o", str(written), "--report", str(report)]) == 0
    err = capsys.readouterr().err
    assert_clean(err)
    assert ONNX_VAR in [site["variable"] for site in json.loads(report.read_text())["sites"]]

    assert main(["diff", str(path), str(written)]) == 1
    out = capsys.readouterr().out
    assert_clean(out)
    assert printable(ONNX_VAR) in out
    lines = out.splitlines()
    assert int(lines[0].split()[0]) == len(lines) - 1
