"""The ONNX path's file handling: bad input, nothing lost, external data, reruns, imports."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optrewrite.api import rewrite_file
from optrewrite.cli import main

from .preview import DOMAIN, Step, generator_cases

GUARD = "version: 1\nguard: {}\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def momentum(tmp_path: Path) -> Step:
    return generator_cases()["test_momentum_multiple"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage\xff" * 10, b"ir_version: 7"])
def test_bytes_that_are_no_model_are_an_input_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   content: bytes) -> None:
    src = tmp_path / "bad.onnx"
    src.write_bytes(content)
    code, err = cli(capsys, src, "--spec", write(tmp_path / "s.yaml", GUARD), "-o", tmp_path / "out.onnx")
    assert code == 2
    assert err.count("\n") == 1 and "not an ONNX model" in err
    assert not (tmp_path / "out.onnx").exists()
    assert src.read_bytes() == content


def test_a_model_without_updates_and_a_selecting_spec_is_an_input_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    src = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)]), src)
    code, err = cli(capsys, src, "--spec", write(tmp_path / "s.yaml", GUARD))
    assert code == 2 and "selects no variable" in err
    code, err = cli(capsys, src, "--spec", write(tmp_path / "l.yaml", "version: 1\nlower: true\n"))
    assert code == 2 and "nothing to lower" in err
    assert list(tmp_path.glob("*.rewritten.onnx")) == []


def _ort_training_artifact(tmp_path: Path) -> Path:
    seq = lambda n: helper.make_node("SequenceConstruct", [f"{n}0", f"{n}1"], [f"{n}_seq"])  # noqa: E731
    node = helper.make_node("AdamWOptimizer", ["lr", "step", "p_seq", "g_seq", "m_seq", "v_seq"],
                            ["updated", "p_out", "m_out", "v_out"], domain="com.microsoft", name="adamw")
    vi = lambda n, t=TensorProto.FLOAT, s=(2,): helper.make_tensor_value_info(n, t, list(s))  # noqa: E731
    inputs = [vi("lr", s=()), vi("step", TensorProto.INT64, ())]
    inputs += [vi(f"{n}{i}") for n in "pgmv" for i in range(2)]
    graph = helper.make_graph([*(seq(n) for n in "pgmv"), node], "artifact", inputs,
                              [helper.make_tensor_value_info("updated", TensorProto.BOOL, [])])
    model = helper.make_model(graph, ir_version=10, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    path = tmp_path / "optimizer_model.onnx"
    onnx.save(model, path)
    return path


def test_onnxruntime_training_optimizers_are_refused_with_the_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _ort_training_artifact(tmp_path)
    code, err = cli(capsys, src, "--spec", write(tmp_path / "s.yaml", GUARD), "-o", tmp_path / "out.onnx")
    assert code == 2
    assert "com.microsoft::AdamWOptimizer" in err and "update_signal" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "out.onnx").exists()


def test_old_opsets_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = replace(momentum(tmp_path), opset=12).save(tmp_path)
    code, err = cli(capsys, src, "--spec", write(tmp_path / "s.yaml", GUARD))
    assert code == 2 and "opset 12" in err


def test_opsets_newer_than_onnx_knows_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    newest = onnx.defs.onnx_opset_version()
    src = replace(momentum(tmp_path), opset=newest + 1).save(tmp_path)
    code, err = cli(capsys, src, "--spec", write(tmp_path / "s.yaml", GUARD), "-o", tmp_path / "out.onnx")
    assert code == 2 and f"opset {newest + 1}; the newest this onnx" in err and err.count("\n") == 1
    assert not (tmp_path / "out.onnx").exists()


def test_spec_updates_are_checked_against_the_graph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = momentum(tmp_path).save(tmp_path)
    spec = write(tmp_path / "s.yaml", "version: 1\nguard: {}\nupdates:\n"
                 "  - {variable: nope, gradient: G0, updated: X0_new}\n")
    code, err = cli(capsys, src, "--spec", spec)
    assert code == 2 and "s.yaml:4: updates[0].variable: 'nope' is not a graph input or initializer" in err
    spec = write(tmp_path / "s.yaml", "version: 1\nguard: {}\nupdates:\n"
                 "  - {variable: X0, gradient: G0, updated: X0_new}\n")
    code, err = cli(capsys, src, "--spec", spec)
    assert code == 2 and "already updated by Momentum 'optimizer'[0]" in err


def test_updates_and_lowering_are_refused_for_tensorflow_graphs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = Path(__file__).parents[2] / "fixtures" / "momentum_ref_dense" / "input.pb"
    code, err = cli(capsys, src, "--spec", write(tmp_path / "s.yaml", GUARD), "--lower", "-o", tmp_path / "o.pb")
    assert code == 2 and "ONNX models only" in err


def test_nothing_is_lost(tmp_path: Path) -> None:
    step = momentum(tmp_path)
    model = step.model()
    model.ir_version = 14
    model.doc_string = "a training step"
    model.producer_name, model.producer_version = "exporter", "9.9"
    model.graph.doc_string = "graph doc"
    model.graph.node[0].doc_string = "the optimizer"
    helper.set_model_props(model, {"owner": "team-a"})
    model.graph.value_info.append(helper.make_tensor_value_info("X0_new", TensorProto.FLOAT, [1]))
    fn = helper.make_function("custom.fn", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 17)])
    model.functions.append(fn)
    model.opset_import.append(helper.make_opsetid("custom.fn", 1))
    src = tmp_path / "step.onnx"
    onnx.save(model, src)
    out = tmp_path / "out.onnx"
    report = rewrite_file(src, write(tmp_path / "s.yaml", GUARD), output=out, lower=True)
    got = onnx.load(out)
    onnx.checker.check_model(got, full_check=True)
    assert got.ir_version == 13 and "IR version 14" in report.note
    assert got.doc_string == model.doc_string and got.graph.doc_string == "graph doc"
    assert (got.producer_name, got.producer_version) == ("exporter", "9.9")
    assert {p.key: p.value for p in got.metadata_props}["owner"] == "team-a"
    assert [f.SerializeToString() for f in got.functions] == [fn.SerializeToString()]
    assert {(o.domain, o.version) for o in got.opset_import} == {(o.domain, o.version) for o in model.opset_import}
    assert "X0_new" in {v.name for v in got.graph.value_info}
    assert [i.SerializeToString() for i in got.graph.input] == [i.SerializeToString() for i in model.graph.input]
    assert [o.SerializeToString() for o in got.graph.output] == [o.SerializeToString() for o in model.graph.output]


def test_untouched_nodes_keep_their_bytes(tmp_path: Path) -> None:
    step = momentum(tmp_path)
    model = step.model()
    extra = helper.make_node("Relu", ["X0"], ["X0_relu"], name="monitor", doc_string="left alone")
    model.graph.node.insert(0, extra)
    model.graph.output.append(helper.make_tensor_value_info("X0_relu", TensorProto.FLOAT, [1]))
    src = tmp_path / "step.onnx"
    onnx.save(model, src)
    out = tmp_path / "out.onnx"
    rewrite_file(src, write(tmp_path / "s.yaml", GUARD), output=out, lower=True)
    (kept,) = [n for n in onnx.load(out).graph.node if n.name == "monitor"]
    assert kept.SerializeToString() == extra.SerializeToString()


def test_reruns_are_deterministic_idempotent_and_refuse_another_spec(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = momentum(tmp_path).save(tmp_path)
    before = digest(src)
    spec = write(tmp_path / "s.yaml", GUARD + "clip: [{variables: [X1], max_norm: 1.0}]\n")
    a, b, again = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "again.onnx"
    rewrite_file(src, spec, output=a, lower=True)
    rewrite_file(src, spec, output=b, lower=True)
    assert a.read_bytes() == b.read_bytes()
    report = rewrite_file(a, spec, output=again, lower=True)
    assert again.read_bytes() == a.read_bytes() and "already rewritten" in report.note
    code, err = cli(capsys, a, "--spec", write(tmp_path / "other.yaml", GUARD), "--lower", "-o", tmp_path / "c.onnx")
    assert code == 2 and "different spec" in err
    assert digest(src) == before


def _external_step(tmp_path: Path, size: int) -> tuple[Path, Step]:
    """A Momentum step whose variable and state are initializers stored in an external file."""
    rng = np.random.default_rng(0)
    x, v = rng.normal(size=size).astype(np.float32), np.zeros(size, np.float32)
    node = helper.make_node("Momentum", ["R", "T", "W", "G", "V"], ["W_new", "V_new"], domain=DOMAIN,
                            alpha=0.9, beta=1.0, mode="standard", norm_coefficient=0.0)
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node], "ext",
        [vi("R", TensorProto.FLOAT, []), vi("T", TensorProto.INT64, []), vi("G", TensorProto.FLOAT, [size])],
        [vi("W_new", TensorProto.FLOAT, [size]), vi("V_new", TensorProto.FLOAT, [size])],
        [numpy_helper.from_array(x, "W"), numpy_helper.from_array(v, "V")])
    model = helper.make_model(graph, ir_version=10, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    src = src_dir / "step.onnx"
    onnx.save(model, src, save_as_external_data=True, location="step.data", size_threshold=0)
    step = Step(name="ext", kind="Momentum", attrs={}, r=np.array(0.1, np.float32), t=np.array(1, np.int64),
                xs=(x,), gs=(np.ones(size, np.float32),), states=((v,),))
    return src, step


@pytest.mark.parametrize("elsewhere", [False, True], ids=["same-dir", "other-dir"])
def test_external_data_is_not_loaded_and_stays_valid(tmp_path: Path, elsewhere: bool) -> None:
    size = 4_000_000  # 16 MB per tensor, 32 MB of external data
    src, step = _external_step(tmp_path, size)
    data_before = digest(src.parent / "step.data")
    out_dir = tmp_path / "out" if elsewhere else src.parent
    out_dir.mkdir(exist_ok=True)
    out = out_dir / "lowered.onnx"
    spec = write(tmp_path / "s.yaml", GUARD)
    tracemalloc.start()
    rewrite_file(src, spec, output=out, lower=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8_000_000, f"the rewrite allocated {peak} bytes for a model with 32 MB of weights"
    assert (out_dir / "step.data").is_file()
    assert digest(src.parent / "step.data") == data_before
    onnx.checker.check_model(str(out), full_check=True)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    zero = session.run(None, {"R": step.r, "T": step.t, "G": np.zeros(size, np.float32)})
    np.testing.assert_array_equal(zero[0], step.xs[0])
    moved = session.run(None, {"R": step.r, "T": step.t, "G": step.gs[0]})
    np.testing.assert_allclose(moved[0], step.xs[0] - np.float32(0.1) * step.gs[0], rtol=1e-6)


def test_missing_external_data_is_an_input_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, _ = _external_step(tmp_path, 8)
    (src.parent / "step.data").unlink()
    code, err = cli(capsys, src, "--spec", write(tmp_path / "s.yaml", GUARD), "-o", tmp_path / "o.onnx")
    assert code == 2 and "external data file 'step.data' is missing" in err
    assert not (tmp_path / "o.onnx").exists()


def test_the_onnx_path_never_imports_tensorflow(tmp_path: Path) -> None:
    src = momentum(tmp_path).save(tmp_path)
    spec = write(tmp_path / "s.yaml", GUARD)
    code = (
        "import sys\n"
        "from optrewrite.cli import main\n"
        f"assert main([{str(src)!r}, '--spec', {str(spec)!r}, '--lower', '-q']) == 0\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorboard', 'onnxruntime'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_malformed_training_node_is_an_input_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = momentum(tmp_path).model()
    del model.graph.node[0].output[-1]
    src = tmp_path / "bad.onnx"
    onnx.save(model, src)
    code, err = cli(capsys, src, "--spec", write(tmp_path / "s.yaml", GUARD))
    assert code == 2 and "Momentum 'optimizer': expected R, T and 3 blocks of N inputs" in err


def test_a_dangling_input_in_the_graph_is_an_input_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = momentum(tmp_path).model()
    model.graph.node.insert(0, helper.make_node("Relu", ["nowhere"], ["r"], name="dangling"))
    src = tmp_path / "bad.onnx"
    onnx.save(model, src)
    code, err = cli(capsys, src, "--spec", write(tmp_path / "s.yaml", GUARD), "--lower")
    assert code == 2 and "'dangling' uses 'nowhere', which nothing defines" in err
    assert not list(tmp_path.glob("*.rewritten.onnx"))


def test_fresh_names_avoid_names_the_model_already_has(tmp_path: Path) -> None:
    model = momentum(tmp_path).model()
    taken = ["optrewrite/const", "optrewrite/X0/guard/ReduceL1", "X0_new/optrewrite_updated"]
    model.graph.node.insert(0, helper.make_node("Relu", ["X0"], [taken[0]], name=taken[1]))
    model.graph.node.insert(1, helper.make_node("Relu", ["X1"], [taken[2]], name="also_taken"))
    model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, [n])
                              for t, n in ((taken[0], 1), (taken[2], 2)))
    src = tmp_path / "step.onnx"
    onnx.save(model, src)
    out = tmp_path / "out.onnx"
    rewrite_file(src, write(tmp_path / "s.yaml", GUARD), output=out, lower=True)
    got = onnx.load(out)
    onnx.checker.check_model(got, full_check=True)
    outputs = [o for n in got.graph.node for o in n.output]
    assert len(outputs) == len(set(outputs))
    assert sum(n.name == taken[1] for n in got.graph.node) == 1
