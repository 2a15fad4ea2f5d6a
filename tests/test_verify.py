"""optrewrite.verify: every fixture input and rewritten output runs one step in its runtime;
graphs the runtime rejects fail with a one-line VerificationFailed; nothing is written.

Graphs are untrusted: an op off the list is refused before anything runs (the file it would
read or write is never touched), the step runs in a child process stopped by its time and
memory limits, and no message quotes a tensor's value."""
from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys
import time
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
from optrewrite.tf.verify_ops import ALLOWED_OPS
from optrewrite.verify import NotVerifiable, OpNotAllowed, VerificationFailed, verify_file

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

    for module in (tf_verify, onnx_verify):  # the step runs here, where count_finite is recorded
        monkeypatch.setattr(module, "count_finite", recording)
        monkeypatch.setattr(module, "run_isolated", _run_here)
    src = _input(FIXTURES / case)
    summaries = [verify_file(src, seed=seed) for seed in (3, 3, 4)]
    assert summaries[0] == summaries[1], summaries
    first, again, other = runs
    assert len(first) == len(again) == len(other) > 0
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(first, again))
    float_values = [(a, b) for a, b in zip(first, other) if a.dtype.kind == "f"]
    assert float_values and not any(np.array_equal(a, b) for a, b in float_values)


def _run_here(module: str, function: str, request: Any, **_: Any) -> Any:
    """run_isolated without the child process: for tests that look inside the step."""
    loaded = importlib.import_module(module)
    loaded.prepare()
    return getattr(loaded, function)(request)


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
        (_unknown_op, "op 'NoSuchOp' (node 'MatMul') is not on the list of ops that verification runs"),
        (_rejected_attr, "cannot import the graph at node 'MatMul' (MatMul): InvalidArgumentError: an attr value the op"),
        (_unknown_rank, "step failed at node 'MatMul' (MatMul): InvalidArgumentError: the operands' shapes do not"),
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
        (type_mismatch, "onnxruntime 1."), (type_mismatch, "at node 'bad_add' (Add): FAIL: a type the op does not"),
        (bad_reshape, "step failed at node 'r' (Reshape): FAIL: the input cannot be reshaped"),
        (bad_adam, "onnx.reference"), (bad_adam, "ValueError: the shapes do not match"),
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
    assert out.splitlines() == ["[]", "['onnx']"]  # onnx reads the model; onnxruntime runs it elsewhere


def test_nothing_is_written_to_cwd_tmp_or_home(tmp_path: Path) -> None:
    dirs = {name: tmp_path / name for name in ("cwd", "tmp", "home", "cache")}
    for d in dirs.values():
        d.mkdir()
    inputs = [str(_input(case)) for case in CASES]
    out = _python(
        "import sys\nfrom optrewrite.verify import verify_file\n"
        f"for p in {inputs!r}:\n    print(verify_file(p))\n"
        "print(sorted({'tensorflow', 'keras', 'onnxruntime'} & set(sys.modules)))\n",
        cwd=dirs["cwd"],
        env={"TMPDIR": str(dirs["tmp"]), "HOME": str(dirs["home"]), "XDG_CACHE_HOME": str(dirs["cache"])},
    )
    assert out.count("ran one step") == len(CASES)
    assert out.splitlines()[-1] == "[]"  # the runtimes run in the verification process only
    # Keras 3, which `import tensorflow` loads, writes its default config where KERAS_HOME
    # says: the verification process's private directory, removed when it ends.
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == sorted(Path(d) for d in dirs)


# --------------------------------------------------------------------------- untrusted graphs


def _train_after(tf: Any, *deps: Any, scale: Any = None) -> None:
    """A GradientDescent step on 'v' whose gradient waits for ``deps`` (ops or tensors) and is
    multiplied by ``scale`` (a float scalar: the data path, which no optimization prunes)."""
    v = tf.compat.v1.get_variable("v", [2], use_resource=True)
    x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
    with tf.control_dependencies([d if hasattr(d, "type") else d.op for d in deps]):
        loss = tf.reduce_sum(x * v) * (1.0 if scale is None else scale)
    tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss, name="train")


def _never_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a refused graph reached the verification process")

    monkeypatch.setattr(tf_verify, "run_isolated", refuse)
    monkeypatch.setattr(onnx_verify, "run_isolated", refuse)


def _read_file(tf: Any, secret: Path, target: Path) -> None:
    _train_after(tf, tf.strings.length(tf.io.read_file(str(secret))))


def _write_file(tf: Any, secret: Path, target: Path) -> None:
    _train_after(tf, tf.io.write_file(str(target), "written"))


def _dataset_to_tfrecord(tf: Any, secret: Path, target: Path) -> None:
    """The probe: a file's contents copied to a path the graph chooses."""
    contents = tf.raw_ops.TensorDataset(components=[tf.io.read_file(str(secret))], output_shapes=[[]])
    _train_after(tf, tf.raw_ops.ExperimentalDatasetToTFRecord(
        input_dataset=contents, filename=str(target), compression_type=""))


def _cache_dataset(tf: Any, secret: Path, target: Path) -> None:
    dataset = tf.data.Dataset.from_tensors(tf.constant([1.0, 2.0])).cache(str(target))
    _train_after(tf, tf.compat.v1.data.make_one_shot_iterator(dataset).get_next())


def _function_body(tf: Any, secret: Path, target: Path) -> None:
    @tf.function
    def leak() -> Any:
        tf.io.write_file(str(target), "written")
        return tf.constant(1.0)

    _train_after(tf, leak())


def _print_to_file(tf: Any, secret: Path, target: Path) -> None:
    _train_after(tf, tf.print("written", output_stream=f"file://{target}"))


@pytest.mark.parametrize(
    ("build", "op"),
    [
        (_read_file, "ReadFile"), (_write_file, "WriteFile"), (_dataset_to_tfrecord, "ReadFile"),
        (_cache_dataset, "OneShotIterator"), (_function_body, "WriteFile"), (_print_to_file, "PrintV2"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else "",
)  # fmt: skip
def test_ops_off_the_list_are_refused_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           build: Any, op: str) -> None:
    secret, target = tmp_path / "secret.txt", tmp_path / "stolen"
    secret.write_text("PRIVATE-CONTENTS")
    path = _tf_graph(tmp_path, lambda tf: build(tf, secret, target))
    _never_runs(monkeypatch)
    with pytest.raises(OpNotAllowed) as exc:
        verify_file(path)
    message = _one_line(exc)
    assert message.startswith(f"op '{op}' (node '") and "is not on the list of ops that verification runs" in message
    assert isinstance(exc.value, NotVerifiable)
    assert not target.exists() and not list(tmp_path.glob("stolen*"))
    if build is _function_body:
        assert "in function '" in message and "which node 'StatefulPartitionedCall' calls" in message
    if build is _print_to_file:
        assert message.endswith("it prints to a file")


def test_the_cli_refuses_to_verify_with_exit_2(tmp_path: Path) -> None:
    from optrewrite.cli import main

    secret, target = tmp_path / "secret.txt", tmp_path / "stolen"
    secret.write_text("PRIVATE-CONTENTS")
    path = _tf_graph(tmp_path, lambda tf: _dataset_to_tfrecord(tf, secret, target))
    (tmp_path / "spec.yaml").write_text("version: 1\nguard: {}\n")
    out = tmp_path / "out.pb"
    err = subprocess.run(
        [sys.executable, "-m", "optrewrite", str(path), "--spec", str(tmp_path / "spec.yaml"), "-o", str(out),
         "--verify"], capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stderr  # fmt: skip
    assert err == (f"optrewrite: error: {path}: --verify cannot run this graph (rewrite without --verify): "
                   "op 'ReadFile' (node 'ReadFile') is not on the list of ops that verification runs\n")
    assert not out.exists() and not target.exists()
    assert main([str(path), "--spec", str(tmp_path / "spec.yaml"), "-o", str(out), "-q"]) == 0


def test_a_call_of_a_function_the_graph_does_not_define_is_refused(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def build(tf: Any) -> None:
        @tf.function
        def f() -> Any:
            return tf.constant(1.0)

        _train_after(tf, f())

    graph = proto.GraphDef.FromString(_tf_graph(tmp_path, build).read_bytes())
    (call,) = [n for n in graph.node if n.op.endswith("PartitionedCall")]
    call.attr["f"].func.name = "elsewhere"
    path = tmp_path / "g.pb"
    path.write_bytes(graph.SerializeToString())
    _never_runs(monkeypatch)
    with pytest.raises(OpNotAllowed) as exc:
        verify_file(path)
    assert _one_line(exc).endswith("it calls 'elsewhere', which the graph does not define")


def test_check_ops_checks_a_function_library() -> None:
    library = proto.FunctionDefLibrary()
    inner = library.function.add()
    inner.signature.name = "inner"
    inner.node_def.add(name="read", op="ReadFile")
    outer = library.function.add()
    outer.signature.name = "outer"
    outer.node_def.add(name="call_inner", op="inner")
    call = proto.NodeDef(name="step", op="StatefulPartitionedCall")
    call.attr["f"].func.name = "outer"
    tf_verify.check_ops([proto.NodeDef(name="c", op="Const")], library)
    with pytest.raises(OpNotAllowed) as exc:
        tf_verify.check_ops([call], library)
    assert str(exc.value) == ("op 'ReadFile' (node 'read' in function 'inner', which node 'step' calls) "
                              "is not on the list of ops that verification runs")
    # a function-valued attr's default is called when the caller passes none
    wrapper = library.function.add()
    wrapper.signature.name = "wrapper"
    default = wrapper.signature.attr.add(name="body", type="func")
    default.default_value.func.name = "inner"
    wrapper.node_def.add(name="call_body", op="PartitionedCall").attr["f"].placeholder = "body"
    call.attr["f"].func.name = "wrapper"
    with pytest.raises(OpNotAllowed, match=r"^op 'ReadFile' \(node 'read' in function 'inner', which node 'step'"):
        tf_verify.check_ops([call], library)
    default.default_value.func.name = "nowhere"
    with pytest.raises(OpNotAllowed) as exc:
        tf_verify.check_ops([call], library)
    assert str(exc.value) == ("function 'wrapper', which node 'step' calls, may not run: its attr 'body' "
                              "defaults to 'nowhere', which the graph does not define")


def test_a_function_of_allowed_ops_runs(tmp_path: Path) -> None:
    def build(tf: Any) -> None:
        @tf.function
        def scale(x: Any) -> Any:
            return tf.cond(tf.reduce_sum(x) > 0, lambda: x * 2.0, lambda: x)

        v = tf.compat.v1.get_variable("v", [2], use_resource=True)
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(tf.reduce_sum(scale(x) * v), name="train")

    assert verify_file(_tf_graph(tmp_path, build)).endswith("1 of 1 variables changed")


def test_the_list_holds_every_op_the_repository_trains_with() -> None:
    """Every op of every graph the tests and the fuzzer train (all optimizers of
    tests/tf/model.py, ref and resource variables, dense and sparse gradients, the fixtures)
    and of their rewrites with every action (the guard's Switch/Merge, clips, global-norm
    clip) may run: the step of each is checked, and the list holds every update op."""
    from optrewrite.api import rewrite_bytes
    from optrewrite.spec import parse_spec
    from optrewrite.tf import io as tf_io
    from optrewrite.tf.sites import UPDATE_OPS

    from tests.tf import model
    from tools import fuzzing

    assert set(UPDATE_OPS) <= ALLOWED_OPS
    # what verification adds: assigns and reads of variables, placeholders
    assert {"AssignVariableOp", "ReadVariableOp", "Assign", "Identity", "Placeholder", "VarHandleOp",
            "VariableV2"} <= ALLOWED_OPS  # fmt: skip
    spec = "version: 1\nguard: {}\nglobal_norm_clip: {clip_norm: 5.0}\nclip:\n  - variables: ['*']\n    max_norm: 1.5\n"
    rows = "  - variables: ['emb']\n    dims: [1]\n    max_norm: 1.0\n"  # sparse updates clip the rows they touch
    graphs = [(s.name, s.data, ".meta" if s.kind == "metagraph" else ".pb")
              for s in fuzzing.seeds() if s.kind in ("graphdef", "metagraph")]  # fmt: skip
    seeded = {optimizer for optimizer, _, _ in fuzzing.TF_BUILDS}
    for i, optimizer in enumerate(o for o in model.OPTIMIZERS if o not in seeded):  # the others, once each
        built = model.build(optimizer, resource=i % 2 == 0, sparse=i % 2 == 0)
        graphs.append((optimizer, built.graph_def.SerializeToString(), ".pb"))
    checked = set()
    for name, data, suffix in graphs:
        versions = [data]
        if not name.endswith(":rewritten"):
            loaded = tf_io.load(Path(f"g{suffix}"), data)
            emb = any(n.name == "emb" for n in loaded.graph.node)
            versions.append(rewrite_bytes(Path(f"g{suffix}"), data, parse_spec(spec + (rows if emb else "")))[0])
        for raw in versions:
            loaded = tf_io.load(Path(f"g{suffix}"), raw)
            plan = tf_verify._plan(loaded.graph, loaded.topology)
            assert plan.targets, name
            runnable = tf_verify._runnable(loaded.graph, loaded.topology, plan)  # raises when refused
            checked |= {n.op for n in runnable.node}
    assert {"Switch", "Merge", "Any", "Cast", "Reshape", "Unique", "ResourceGather", "GatherV2", "ScatterSub",
            "ResourceScatterSub", "Sum", "Sqrt", "Select", "Maximum", "RealDiv", "L2Loss", "Pack", "Minimum",
            "AddV2"} <= checked  # fmt: skip


def test_the_list_is_the_generated_one_and_leaves_out_what_touches_files() -> None:
    import tensorflow as tf

    from tools import gen_tf_verify_ops

    version, by_module = gen_tf_verify_ops.registry()
    if version != tf_verify_ops_version():
        pytest.skip(f"the list comes from TensorFlow {tf_verify_ops_version()}, this is {tf.__version__}")
    assert ALLOWED_OPS == gen_tf_verify_ops._ops(gen_tf_verify_ops.render(version, by_module))
    assert not set(by_module) - set(gen_tf_verify_ops.ALLOWED) - set(gen_tf_verify_ops.REFUSED), "unreviewed"
    for op in ("ReadFile", "WriteFile", "MatchingFiles", "WholeFileReaderV2", "SaveV2", "RestoreV2",
               "MergeV2Checkpoints", "DatasetToTFRecord", "ExperimentalDatasetToTFRecord", "CacheDataset",
               "CacheDatasetV2", "SnapshotDataset", "SnapshotDatasetV2", "DistributedSave", "SaveDatasetV2",
               "DumpTensor", "DebugIdentityV2", "WriteScalarSummary", "CreateSummaryFileWriter", "PyFunc",
               "EagerPyFunc", "ImmutableConst", "InitializeTableFromTextFileV2", "RecordInput", "RemoteCall",
               "CollectiveReduceV2", "Send", "Recv", "_Send", "_Recv", "DecodeProtoV2", "Abort", "PrintV2",
               "LoadAndRemapMatrix", "GenerateVocabRemapping", "OneShotIterator", "IteratorGetNext",
               "FixedUnigramCandidateSampler"):  # fmt: skip
        assert op not in ALLOWED_OPS, op


def tf_verify_ops_version() -> str:
    from optrewrite.tf import verify_ops

    return verify_ops.TENSORFLOW


def test_error_lines_never_quote_tensor_values(tmp_path: Path) -> None:
    """An Assert's data and an InvalidArgument's echoed string are not in the message."""

    def assert_on_data(tf: Any) -> None:
        x = tf.compat.v1.placeholder(tf.float32, [2], name="x")
        leak = tf.strings.join(["SECRET", tf.strings.as_string(x * 1000.0 + 4242.0)])
        _train_after(tf, tf.debugging.Assert(tf.reduce_all(x < 0), [leak, x * 1000.0 + 4242.0, "CONSTSECRET"]))

    def echoed_value(tf: Any) -> None:
        x = tf.compat.v1.placeholder(tf.float32, [2], name="x")
        _train_after(tf, scale=tf.strings.to_number(tf.strings.join(["SECRET", tf.strings.as_string(x + 4242.0)]))[0])

    messages = []
    for build, expected in ((assert_on_data, "InvalidArgumentError: an Assert failed"),
                            (echoed_value, "InvalidArgumentError")):  # fmt: skip
        with pytest.raises(VerificationFailed) as exc:
            verify_file(_tf_graph(tmp_path, build))
        messages.append(_one_line(exc))
        assert "step failed at node '" in messages[-1] and expected in messages[-1], messages[-1]
    f = TensorProto.FLOAT
    shape = [helper.make_node("Mul", ["x", "zero"], ["x0"]), helper.make_node("Add", ["x0", "big"], ["s"]),
             helper.make_node("Cast", ["s"], ["shape"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["x", "shape"], ["y"], name="r")]  # fmt: skip
    reshape = _onnx(tmp_path, shape, [_info("x", f, [2])], [_info("y", f, None)],
                    initializers=(helper.make_tensor("zero", f, [], [0.0]), helper.make_tensor("big", f, [], [4242.0])))
    with pytest.raises(VerificationFailed) as exc:
        verify_file(reshape)
    messages.append(_one_line(exc))
    assert "at node 'r' (Reshape)" in messages[-1]
    for message in messages:
        assert "SECRET" not in message and "4242" not in message and "[" not in message, message


def test_a_node_name_is_quoted_only_when_the_graph_has_it() -> None:
    text = "assertion failed: [{{node stolen-data}}] [[{{node train/Assert}}]]"
    exc = type("InvalidArgumentError", (Exception,), {"message": text})()
    assert str(tf_verify._error("step failed", exc, {"train/Assert": "Assert"})) == (
        "step failed at node 'train/Assert' (Assert): InvalidArgumentError: an Assert failed")
    assert str(tf_verify._error("step failed", exc, {})) == "step failed: InvalidArgumentError: an Assert failed"


def test_a_step_that_never_ends_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def build(tf: Any) -> None:
        i = tf.compat.v1.while_loop(lambda i: tf.constant(True), lambda i: i + 1, [tf.constant(0)])
        _train_after(tf, i)

    path = _tf_graph(tmp_path, build)
    verify_file(_input(FIXTURES / "momentum_ref_dense"))  # the verification process is up
    monkeypatch.setattr(verify, "KILL_GRACE_S", 0.5)
    start = time.monotonic()
    with pytest.raises(VerificationFailed) as exc:
        verify_file(path, timeout_s=1.0)
    assert time.monotonic() - start < 20
    assert "the step did not finish in 1 s" in _one_line(exc)
    assert not isinstance(exc.value, NotVerifiable)  # the input is run too: maybe the rewrite is to blame


def test_the_cli_sets_the_step_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from optrewrite.cli import main

    def build(tf: Any) -> None:
        i = tf.compat.v1.while_loop(lambda i: tf.constant(True), lambda i: i + 1, [tf.constant(0)])
        _train_after(tf, i)

    path = _tf_graph(tmp_path, build)
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\nguard: {}\n")
    out = tmp_path / "out.pb"
    verify_file(_input(FIXTURES / "momentum_ref_dense"))  # the verification process is up
    monkeypatch.setattr(verify, "KILL_GRACE_S", 0.5)
    assert main([str(path), "--spec", str(spec), "-o", str(out), "--verify", "--verify-timeout", "1.5", "-q"]) == 2
    err = capsys.readouterr().err
    assert "the input graph does not run either" in err and "did not finish in 1.5 s" in err, err
    assert not out.exists()
    for bad in ("0", "-3", "nan", "soon"):
        assert main([str(path), "--spec", str(spec), "--verify", "--verify-timeout", bad]) == 2
        assert "--verify-timeout: expected a number of seconds from 1 to 86400" in capsys.readouterr().err
    assert not out.exists()


def test_a_step_past_the_memory_limit_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def build(tf: Any) -> None:
        _train_after(tf, scale=tf.reduce_sum(tf.fill(tf.constant([2**30], tf.int64), 1.0)))  # 4 GiB

    path = _tf_graph(tmp_path, build)
    monkeypatch.setattr(verify, "MEMORY_LIMIT_BYTES", 1 << 30)
    start = time.monotonic()
    with pytest.raises(VerificationFailed) as exc:
        verify_file(path)
    assert time.monotonic() - start < 60
    message = _one_line(exc)
    assert "out of memory" in message or "memory limit" in message, message


def test_an_onnx_op_of_another_domain_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = TensorProto.FLOAT
    contrib = _onnx(tmp_path, [helper.make_node("FusedMatMul", ["x", "x"], ["y"], name="mm", domain="com.microsoft")],
                    [_info("x", f, [2, 2])], [_info("y", f, None)])
    branch = helper.make_graph([helper.make_node("Gelu", ["x"], ["z"], name="g", domain="com.microsoft")], "b", [],
                               [_info("z", f, None)])
    nested = _onnx(tmp_path, [helper.make_node("Cast", ["x"], ["c"], to=TensorProto.BOOL),
                              helper.make_node("ReduceMin", ["c"], ["cond"], keepdims=0),
                              helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch,
                                               else_branch=branch)],
                   [_info("x", f, [2])], [_info("y", f, None)])  # fmt: skip
    _never_runs(monkeypatch)
    for path, expected in ((contrib, "op 'com.microsoft:FusedMatMul' (node 'mm')"),
                           (nested, "op 'com.microsoft:Gelu' (node 'g')")):  # fmt: skip
        with pytest.raises(OpNotAllowed) as exc:
            verify_file(path)
        assert _one_line(exc).startswith(expected + " is not on the list of ops that verification runs")


def test_an_onnx_local_function_is_checked_and_runs(tmp_path: Path) -> None:
    f = TensorProto.FLOAT

    def model_with(body_domain: str, op: str) -> Path:
        body = helper.make_function("local", "Twice", ["a"], ["b"], [helper.make_node(op, ["a", "a"], ["b"],
                                    domain=body_domain)], [helper.make_opsetid("", 17)])  # fmt: skip
        graph = helper.make_graph([helper.make_node("Twice", ["x"], ["y"], name="call", domain="local")], "g",
                                  [_info("x", f, [2])], [_info("y", f, [2])])
        model = helper.make_model(graph, ir_version=10, functions=[body],
                                  opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
        path = tmp_path / f"local_{op}.onnx"
        onnx.save(model, str(path))
        return path

    assert verify_file(model_with("", "Add")) == f"ran one step in onnxruntime {_ort_version()}: 1 of 1 outputs finite"
    with pytest.raises(OpNotAllowed) as exc:
        verify_file(model_with("com.example", "Pow"))
    assert _one_line(exc).startswith("op 'com.example:Pow' (node '' in function 'local:Twice') is not on the list")


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def prepare() -> str:
    """The verification process's set-up when it runs this module's functions (below)."""
    return "test process"


def crash(request: Any) -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def exit_quietly(request: Any) -> None:
    os._exit(3)


def sleep(request: Any) -> None:
    time.sleep(request)


def answer(request: Any) -> Any:
    return {"echo": request}


def test_how_the_child_ended_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the verification process imports this module
    run = verify.run_isolated
    assert run(__name__, "answer", [1, "a"], timeout_s=10) == {"echo": [1, "a"]}
    with pytest.raises(VerificationFailed, match=r"^test process: the step's process crashed \(SIGSEGV\)$"):
        run(__name__, "crash", None, timeout_s=10)
    with pytest.raises(VerificationFailed, match=r"^test process: the step's process exited with status 3 without"):
        run(__name__, "exit_quietly", None, timeout_s=10)
    monkeypatch.setattr(verify, "KILL_GRACE_S", 0.2)
    with pytest.raises(VerificationFailed, match=r"^test process: the step did not finish in 0.5 s; it was stopped$"):
        run(__name__, "sleep", 60, timeout_s=0.5)
    with pytest.raises(VerificationFailed, match=r"^TypeError in the verification process$"):
        run(__name__, "sleep", "x", timeout_s=10)
    assert run(__name__, "answer", "again", timeout_s=10) == {"echo": "again"}  # the worker lives on
