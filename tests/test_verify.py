"""optrewrite.verify: every fixture input and rewritten output runs one step in its runtime;
graphs the runtime rejects fail with a one-line VerificationFailed; nothing is written."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optrewrite import verify
from optrewrite.api import rewrite_file
from optrewrite.onnx import verify as onnx_verify
from optrewrite.tf import proto
from optrewrite.tf import verify as tf_verify
from optrewrite.verify import VerificationFailed, verify_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
CASES = sorted(p for p in FIXTURES.iterdir() if (p / "spec.yaml").exists())
PREVIEW = "ai.onnx.preview.training"
TF_SUMMARY = re.compile(r"^ran one step \('[^']+'( and \d+ more)?\) in TensorFlow [\d.]+: (\d+) of (\d+) variables changed$")
ONNX_SUMMARY = re.compile(r"^ran one step in (onnxruntime|onnx\.reference) .*: (\d+) of (\d+) outputs finite$")


def _input(case: Path) -> Path:
    return next(case.glob("input.*"))


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out_dir = tmp_path_factory.mktemp("rewritten")
    outputs = {}
    for case in CASES:
        src = _input(case)
        outputs[case.name] = out_dir / f"{case.name}{src.suffix}"
        rewrite_file(src, case / "spec.yaml", output=outputs[case.name])
    return outputs


def _has_preview_ops(path: Path) -> bool:
    def holds(graph: onnx.GraphProto) -> bool:
        return any(
            node.domain == PREVIEW
            or any(holds(a.g) for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
            for node in graph.node
        )

    return holds(onnx.load(str(path)).graph)


def _check_step(path: Path, summary: str, *, like: Path | None = None) -> None:
    if (like or path).suffix == ".onnx":
        m = ONNX_SUMMARY.match(summary)
        assert m, summary
        assert m.group(1) == ("onnx.reference" if _has_preview_ops(path) else "onnxruntime"), summary
        assert int(m.group(2)) == int(m.group(3)) > 0, summary
    else:
        m = TF_SUMMARY.match(summary)
        assert m, summary
        assert int(m.group(2)) == int(m.group(3)) > 0, summary  # the step moved every variable it touches


def _one_line(exc: pytest.ExceptionInfo[VerificationFailed]) -> str:
    message = str(exc.value)
    assert "\n" not in message and 0 < len(message) <= 300, message
    return message


# --------------------------------------------------------------------------- fixtures


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fixture_input_and_output_run_one_step(case: Path, rewritten: dict[str, Path]) -> None:
    out = rewritten[case.name]
    listing = sorted(out.parent.iterdir())
    for path in (_input(case), out):
        _check_step(path, verify_file(path))
    assert sorted(out.parent.iterdir()) == listing


def test_fixtures_cover_both_onnx_runtimes(rewritten: dict[str, Path]) -> None:
    lowered = rewritten["adam_preview_lowered"]
    assert _has_preview_ops(_input(FIXTURES / "adam_preview_lowered")) and not _has_preview_ops(lowered)
    assert "onnxruntime" in verify_file(lowered)
    assert "onnx.reference" in verify_file(rewritten["momentum_preview_guarded"])  # preview ops inside If


# run in TensorFlow, onnx.reference and onnxruntime
@pytest.mark.parametrize("case", ["adam_resource_sparse", "adam_preview_lowered", "decomposed_momentum"])
def test_the_seed_decides_the_values_after_the_step(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The summary hardly depends on the generated data; the values after the step (the
    variables in TensorFlow, the outputs in ONNX), which the summary counts, do."""
    runs: list[list[np.ndarray]] = []
    count_finite = verify.count_finite

    def recording(values: Any) -> tuple[int, int]:
        values = [np.array(v, copy=True) for v in values]
        runs.append(values)
        return count_finite(values)

    for module in (tf_verify, onnx_verify):
        monkeypatch.setattr(module, "count_finite", recording)
    src = _input(FIXTURES / case)
    summaries = [verify_file(src, seed=seed) for seed in (3, 3, 4)]
    assert summaries[0] == summaries[1], summaries
    first, again, other = runs
    assert len(first) == len(again) == len(other) > 0
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(first, again))
    float_values = [(a, b) for a, b in zip(first, other) if a.dtype.kind == "f"]
    assert float_values and not any(np.array_equal(a, b) for a, b in float_values)


# --------------------------------------------------------------------------- like


def test_like_names_the_format_of_a_temporary_file(tmp_path: Path) -> None:
    for case, suffix in (("adam_resource_sparse", ".pbtxt"), ("gd_ref_sparse_meta", ".meta"),
                         ("decomposed_momentum", ".onnx")):  # fmt: skip
        tmp = tmp_path / f".x{suffix}.tmp"
        tmp.write_bytes(_input(FIXTURES / case).read_bytes())
        _check_step(tmp, verify_file(tmp, like=tmp_path / f"x{suffix}"), like=tmp_path / f"x{suffix}")
    with pytest.raises(VerificationFailed) as exc:
        verify_file(tmp_path / ".x.onnx.tmp")  # read as a TensorFlow graph
    assert "cannot load the graph" in _one_line(exc)


def test_onnx_external_data_resolves_beside_path(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])], [w],
    )  # fmt: skip
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    tmp = tmp_path / ".out.onnx.abc.tmp"
    onnx.save_model(model, str(tmp), save_as_external_data=True, location="w.bin", size_threshold=0)
    assert (tmp_path / "w.bin").exists() and b"w.bin" in tmp.read_bytes()
    assert verify_file(tmp, like=tmp_path / "out.onnx").startswith("ran one step in onnxruntime")


# --------------------------------------------------------------------------- failures


def _tf_variant(tmp_path: Path, name: str, edit: Any) -> Path:
    graph = proto.GraphDef.FromString(_input(FIXTURES / "momentum_ref_dense").read_bytes())
    edit({n.name: n for n in graph.node})
    path = tmp_path / f"{name}.pb"
    path.write_bytes(graph.SerializeToString())
    return path


def _unknown_op(nodes: dict[str, Any]) -> None:
    nodes["MatMul"].op = "NoSuchOp"


def _rejected_attr(nodes: dict[str, Any]) -> None:
    nodes["MatMul"].attr["T"].type = proto.DT_BOOL


def _unknown_rank(nodes: dict[str, Any]) -> None:
    nodes["x"].attr["shape"].shape.Clear()
    nodes["x"].attr["shape"].shape.unknown_rank = True  # fed as a scalar, which MatMul rejects at run time


def _huge_dim(nodes: dict[str, Any]) -> None:
    nodes["x"].attr["shape"].shape.dim[0].size = 1 << 40


def _negative_dim(nodes: dict[str, Any]) -> None:
    nodes["x"].attr["shape"].shape.dim[0].size = -7


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_unknown_op, "cannot import the graph: NotFoundError: Op type not registered 'NoSuchOp'"),
        (_rejected_attr, "cannot import the graph at node 'MatMul': ValueError: Value for attr 'T' of bool"),
        (_unknown_rank, "step failed at node 'MatMul' (MatMul): InvalidArgumentError: In[0] and In[1]"),
        (_huge_dim, "placeholder 'x': shape [1099511627776, 3] has 3298534883328 elements"),
        (_negative_dim, "placeholder 'x': invalid dimension -7"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else "",
)
def test_tensorflow_rejects(tmp_path: Path, edit: Any, expected: str) -> None:
    with pytest.raises(VerificationFailed) as exc:
        verify_file(_tf_variant(tmp_path, "bad", edit))
    assert expected in _one_line(exc)


def test_unparsable_bytes(tmp_path: Path) -> None:
    for name in ("bad.pb", "bad.onnx"):
        (tmp_path / name).write_bytes(b"\xff\x00 not a graph")
        with pytest.raises(VerificationFailed) as exc:
            verify_file(tmp_path / name)
        assert "cannot load the" in _one_line(exc)
    with pytest.raises(VerificationFailed) as exc:
        verify_file(tmp_path / "missing.pb")
    assert "cannot read" in _one_line(exc)


def _onnx(tmp_path: Path, nodes: list, inputs: list, outputs: list, *, initializers: tuple = (),
          preview: bool = False) -> Path:  # fmt: skip
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(PREVIEW, 1)] if preview else [])
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    path = tmp_path / f"model{len(list(tmp_path.iterdir()))}.onnx"
    onnx.save(helper.make_model(graph, ir_version=10, opset_imports=opsets), str(path))
    return path


def _info(name: str, elem: int, shape: list | None) -> Any:
    return helper.make_tensor_value_info(name, elem, shape)


def test_onnx_rejects(tmp_path: Path) -> None:
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    type_mismatch = _onnx(tmp_path, [helper.make_node("Add", ["x", "n"], ["y"], name="bad_add")],
                          [_info("x", f, [2]), _info("n", i64, [2])], [_info("y", f, [2])])
    bad_reshape = _onnx(tmp_path, [helper.make_node("Reshape", ["x", "s"], ["y"], name="r")],
                        [_info("x", f, [2])], [_info("y", f, None)],
                        initializers=(helper.make_tensor("s", i64, [1], [3]),))
    adam = helper.make_node("Adam", ["R", "T", "X", "G", "V", "H"], ["X2", "V2", "H2"], domain=PREVIEW)
    bad_adam = _onnx(tmp_path, [adam],
                     [_info("R", f, []), _info("T", i64, []), _info("X", f, [2]), _info("G", f, [3]),
                      _info("V", f, [2]), _info("H", f, [2])],
                     [_info(n, f, None) for n in ("X2", "V2", "H2")], preview=True)
    huge = _onnx(tmp_path, [helper.make_node("Identity", ["x"], ["y"])],
                 [_info("x", f, [1 << 31, 1 << 31])], [_info("y", f, None)])
    negative = _onnx(tmp_path, [helper.make_node("Identity", ["x"], ["y"])],
                     [_info("x", f, [2, -5])], [_info("y", f, None)])
    for path, expected in [
        (type_mismatch, "onnxruntime 1."), (type_mismatch, "(bad_add)"),
        (bad_reshape, "step failed at node 'r' (Reshape): The input tensor cannot be reshaped"),
        (bad_adam, "onnx.reference"), (bad_adam, "could not be broadcast"),
        (huge, "input 'x': shape [2147483648, 2147483648] has"), (negative, "input 'x': negative dimension -5"),
    ]:  # fmt: skip
        with pytest.raises(VerificationFailed) as exc:
            verify_file(path)
        assert expected in _one_line(exc)


def test_onnx_step_counter_is_one(tmp_path: Path) -> None:
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    adam = helper.make_node("Adam", ["R", "T", "X", "G", "V", "H"], ["X2", "V2", "H2"], domain=PREVIEW)
    good = _onnx(tmp_path, [adam, helper.make_node("Div", ["one", "T"], ["inv"])],
                 [_info(n, f, []) if n == "R" else _info(n, i64, []) if n == "T" else _info(n, f, ["n"])
                  for n in ("R", "T", "X", "G", "V", "H")] + [_info("one", i64, [])],
                 [_info(n, f, None) for n in ("X2", "V2", "H2")] + [_info("inv", i64, None)], preview=True)
    assert verify_file(good).endswith("4 of 4 outputs finite")  # Div by a zero int64 would raise


# --------------------------------------------------------------------------- TF graphs built here


def _tf_graph(tmp_path: Path, build: Any) -> Path:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)  # random initializers need one under op determinism
        build(tf)
    path = tmp_path / "graphs" / "built.pb"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def _loss(tf: Any, *, resource: bool) -> Any:
    v = tf.compat.v1.get_variable("v", [2], use_resource=resource)
    x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
    return tf.reduce_sum(x * v)


def test_checkpoint_ops_never_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def build(tf: Any) -> None:
        train = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(_loss(tf, resource=False), name="train")
        saver = tf.compat.v1.train.Saver()
        save = tf.compat.v1.get_default_graph().get_tensor_by_name(saver.saver_def.save_tensor_name)
        with tf.control_dependencies([train, save.op]):
            tf.no_op(name="train_and_save")  # the only sink after the update

    path = _tf_graph(tmp_path, build)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # the saver's file name is relative
    # train_and_save would save a checkpoint: the step is 'train', the last node before it
    assert verify_file(path) == f"ran one step ('train') in TensorFlow {_tf_version()}: 1 of 1 variables changed"
    assert list(work.iterdir()) == [] and [p.name for p in path.parent.iterdir()] == ["built.pb"]


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


def test_no_update_loads_and_runs_nothing(tmp_path: Path) -> None:
    path = _tf_graph(tmp_path, lambda tf: _loss(tf, resource=True))
    assert verify_file(path) == f"loaded in TensorFlow {_tf_version()}; no optimizer update found, nothing run"


def test_a_step_waiting_on_a_queue_times_out(tmp_path: Path) -> None:
    def build(tf: Any) -> None:
        grad = tf.queue.FIFOQueue(1, tf.float32, shapes=[[2]]).dequeue()
        v = tf.compat.v1.get_variable("v", [2], use_resource=True)
        tf.compat.v1.train.GradientDescentOptimizer(0.1).apply_gradients([(grad, v)], name="train")

    with pytest.raises(VerificationFailed) as exc:
        verify_file(_tf_graph(tmp_path, build), timeout_s=0.3)
    assert "did not finish in 0.3 s" in _one_line(exc)


# --------------------------------------------------------------------------- processes


def _python(code: str, *, cwd: Path, env: dict[str, str] | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_runtimes_are_imported_only_when_used(tmp_path: Path) -> None:
    onnx_model = _input(FIXTURES / "decomposed_momentum")
    out = _python(
        "import sys\nfrom optrewrite.verify import verify_file\n"
        "runtimes = lambda: sorted({'tensorflow', 'onnxruntime', 'onnx'} & set(sys.modules))\n"
        f"print(runtimes())\nverify_file({str(onnx_model)!r})\nprint(runtimes())\n",
        cwd=tmp_path,
    )
    assert out.splitlines() == ["[]", "['onnx', 'onnxruntime']"]


def test_nothing_is_written_to_cwd_tmp_or_home(tmp_path: Path) -> None:
    dirs = {name: tmp_path / name for name in ("cwd", "tmp", "home", "cache")}
    for d in dirs.values():
        d.mkdir()
    inputs = [str(_input(case)) for case in CASES]
    out = _python(
        "from optrewrite.verify import verify_file\n"
        f"for p in {inputs!r}:\n    print(verify_file(p))\n",
        cwd=dirs["cwd"],
        env={"TMPDIR": str(dirs["tmp"]), "HOME": str(dirs["home"]), "XDG_CACHE_HOME": str(dirs["cache"])},
    )
    assert out.count("ran one step") == len(CASES)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    # Keras 3, which `import tensorflow` loads, writes its default config once where it is missing.
    assert written == [os.path.join("home", ".keras", "keras.json")]
