"""``clip: {formula: exact, on_skipped_steps: false}`` on every format, against numpy.

One step, three variables, plain gradient descent (lr 0.1), gradients fed by the test:

- ``w`` (4 x 3), clipped along dims [1] to 1.3 (not a power of two: ``t * c / c`` moves bits);
- ``big`` (3,), clipped as a whole to 0.3, starting near 5.5e3: the seed formula's
  ``v -= v - clipped`` cancels there (its norm comes out 0.30013), the exact one does not;
- ``emb`` (6 x 2, TensorFlow only), a sparse gradient with repeated indices: only the
  touched rows are clipped, each once.

TensorFlow 1 (``tf.compat.v1`` GradientDescent on resource and ref variables), TensorFlow 2
(a Keras 3 SGD step in a SavedModel) and ONNX (preview ``Momentum`` with alpha 0 and beta 1,
which is gradient descent, lowered to standard ops and run in onnxruntime) are rewritten by
one spec and trained for 16 steps, in which each variable's gradient is all zero (masked) in
some. The reference below is numpy float32 with the formulas written out: TensorFlow must
match it bit for bit, ONNX to 1e-6 relative.

The formulas (optrewrite/tf/passes/clip_by_norm.py):

- seed: ``l2norm = sqrt(sum(t * t))`` (0 stays 0), ``v = t - (t - t * c / max(l2norm, c))``;
- exact: ``norm = sqrt(sum(t * t))``, ``v = t * where(norm > c, c / norm, 1)``, written only
  when some norm exceeds c (``t * 1`` is ``t``).

A masked step skips the update (the guard); with ``on_skipped_steps: false`` it skips the
clip too, so the variable keeps its bits.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from optrewrite.api import rewrite_file

f32 = np.float32
LR = f32(0.1)
STEPS = 16
INIT = {
    "w": (np.arange(12, dtype=f32).reshape(4, 3) - 5) / f32(7),
    "big": np.array([5500.0, -5498.25, 5501.5], f32),
    "emb": (np.arange(12, dtype=f32).reshape(6, 2) - 6) / f32(5),
}
CLIPS = {"w": ([1], 1.3), "big": (None, 0.3), "emb": ([1], 1.0)}  # dims, max_norm
State = dict[str, np.ndarray]


@dataclass(frozen=True)
class Step:
    w: np.ndarray
    big: np.ndarray
    emb_values: np.ndarray
    emb_indices: np.ndarray

    def grad(self, name: str) -> np.ndarray:
        return {"w": self.w, "big": self.big, "emb": self.emb_values}[name]


def schedule() -> list[Step]:
    """16 steps; each variable's gradient is all zero (with some -0.0) in some of them."""
    rnd = np.random.default_rng(11)
    steps = []
    for k in range(STEPS):
        w = rnd.normal(0, 3, (4, 3)).astype(f32)
        big = rnd.normal(0, 2, 3).astype(f32)
        values = rnd.normal(0, 4, (3, 2)).astype(f32)
        indices = rnd.choice([0, 2, 3, 5], 3).astype(np.int32)
        indices[2] = indices[0]  # a row looked up twice
        if k % 4 == 1:
            w = np.where(w > 0, f32(0.0), f32(-0.0))
        if k % 5 == 2:
            big = np.zeros_like(big)
        if k % 3 == 0:
            values = np.zeros_like(values)
        steps.append(Step(w, big, values, indices))
    return steps


def spec_text(formula: str, on_skipped_steps: bool, variables: list[str]) -> str:
    text = "version: 1\nguard:\nclip:\n"
    for name in variables:
        dims, max_norm = CLIPS[name]
        text += f"  - variables: [{name}]\n    max_norm: {max_norm}\n    formula: {formula}\n"
        text += f"    on_skipped_steps: {str(on_skipped_steps).lower()}\n"
        if dims is not None:
            text += f"    dims: {dims}\n"
    return text


# --------------------------------------------------------------------------- the reference


def _sum(x: np.ndarray, axes: list[int] | None) -> np.ndarray:
    """Sum over ``axes`` (all when None), keeping them, element after element in float32."""
    axes = list(range(x.ndim)) if axes is None else axes
    moved = np.moveaxis(x, axes, list(range(x.ndim - len(axes), x.ndim)))
    flat = moved.reshape(*moved.shape[: x.ndim - len(axes)], -1)
    total = np.zeros(flat.shape[:-1], f32)
    for k in range(flat.shape[-1]):
        total = total + flat[..., k]
    return np.expand_dims(total, tuple(axes)) if x.ndim else total


def clip(t: np.ndarray, max_norm: float, dims: list[int] | None, formula: str) -> np.ndarray:
    c = f32(max_norm)
    l2sum = _sum(t * t, dims)
    with np.errstate(divide="ignore", invalid="ignore"):
        if formula == "exact":
            norm = np.sqrt(l2sum)
            return t * np.where(norm > c, c / norm, f32(1))
        pred = l2sum > 0
        l2norm = np.where(pred, np.sqrt(np.where(pred, l2sum, f32(1))), l2sum)
        return t - (t - t * c / np.maximum(l2norm, c))


def reference(steps: list[Step], formula: str, on_skipped_steps: bool, variables: list[str]) -> list[State]:
    state = {name: INIT[name].copy() for name in variables}
    out = []
    for step in steps:
        for name in variables:
            g = step.grad(name)
            applied = bool(np.any(g != 0))
            dims, max_norm = CLIPS[name]
            v = state[name]
            if name == "emb":
                rows = np.unique(step.emb_indices)
                if applied:
                    np.add.at(v, step.emb_indices, -(g * LR))  # in index order, as a scatter does
                if applied or on_skipped_steps:
                    v[rows] = clip(v[rows], max_norm, dims, formula)
            else:
                if applied:
                    v = v - g * LR
                if applied or on_skipped_steps:
                    v = clip(v, max_norm, dims, formula)
            state[name] = v
        out.append({k: v.copy() for k, v in state.items()})
    return out


# --------------------------------------------------------------------------- TensorFlow 1


def _tf1_graph(tmp_path: Path, resource: bool) -> Path:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        variables = {name: tf.compat.v1.get_variable(name, initializer=value, use_resource=resource)
                     for name, value in INIT.items()}
        gw = tf.compat.v1.placeholder(tf.float32, [4, 3], name="gw")
        gbig = tf.compat.v1.placeholder(tf.float32, [3], name="gbig")
        values = tf.compat.v1.placeholder(tf.float32, [3, 2], name="emb_values")
        indices = tf.compat.v1.placeholder(tf.int32, [3], name="emb_indices")
        opt = tf.compat.v1.train.GradientDescentOptimizer(LR)
        opt.apply_gradients([(gw, variables["w"]), (gbig, variables["big"]),
                             (tf.IndexedSlices(values, indices, tf.constant([6, 2])), variables["emb"])], name="train")
        tf.compat.v1.global_variables_initializer()
    path = tmp_path / f"tf1_{'resource' if resource else 'ref'}.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def _run_tf1(path: Path, steps: list[Step], resource: bool) -> list[State]:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(tf.compat.v1.GraphDef.FromString(path.read_bytes()), name="")
        handles = {name: graph.get_tensor_by_name(f"{name}:0") for name in INIT}
        reads = ({k: tf.raw_ops.ReadVariableOp(resource=h, dtype=tf.float32) for k, h in handles.items()}
                 if resource else handles)
    out = []
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    with tf.compat.v1.Session(graph=graph, config=config) as sess:
        sess.run(graph.get_operation_by_name("init"))
        for s in steps:
            sess.run(graph.get_operation_by_name("train"),
                     {"gw:0": s.w, "gbig:0": s.big, "emb_values:0": s.emb_values, "emb_indices:0": s.emb_indices})
            out.append({k: np.array(v) for k, v in sess.run(reads).items()})
    return out


def assert_bitwise(got: list[State], want: list[State], what: str) -> None:
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        for name in w:
            assert g[name].tobytes() == w[name].tobytes(), (
                f"{what}: step {k}, {name}: max |diff| {np.max(np.abs(g[name] - w[name]))}")


CASES = [("exact", True), ("exact", False), ("seed", False)]


@pytest.mark.parametrize("resource", [True, False], ids=["resource", "ref"])
@pytest.mark.parametrize(("formula", "on_skipped"), CASES, ids=[f"{f}-{o}" for f, o in CASES])
def test_tensorflow_1_matches_the_reference_bit_for_bit(tmp_path: Path, tf_config: object, resource: bool,
                                                         formula: str, on_skipped: bool) -> None:
    src = _tf1_graph(tmp_path, resource)
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(formula, on_skipped, list(INIT)))
    out = tmp_path / "out.pb"
    report = rewrite_file(src, spec, output=out)
    assert sorted(label for s in report.sites for label in s.inserted) == sorted(
        ["guard"] * 3 + ["clip[0]", "clip[1]", "clip[2]"])
    steps = schedule()
    assert_bitwise(_run_tf1(out, steps, resource), reference(steps, formula, on_skipped, list(INIT)), "TF1")


def test_the_reference_tells_the_formulas_and_the_options_apart() -> None:
    """The checks above could fail: the original clip, every step, gives other numbers."""
    steps = schedule()
    names = list(INIT)
    exact = reference(steps, "exact", True, names)
    for other in (reference(steps, "seed", True, names), reference(steps, "exact", False, names)):
        assert any(a[n].tobytes() != b[n].tobytes() for a, b in zip(exact, other) for n in names)
    # the seed's cancellation at |v| ~ 5.5e3 and the exact clip's norm, after the first step
    seed_norm = float(np.linalg.norm(reference(steps[:1], "seed", True, names)[0]["big"].astype(np.float64)))
    exact_norm = float(np.linalg.norm(exact[0]["big"].astype(np.float64)))
    assert seed_norm > 0.3001
    assert exact_norm <= 0.3 * (1 + 2**-21)


def test_not_on_skipped_steps_keeps_a_masked_variable_bit_for_bit(tmp_path: Path, tf_config: object) -> None:
    src = _tf1_graph(tmp_path, True)
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text("seed", False, list(INIT)))
    out = tmp_path / "out.pb"
    rewrite_file(src, spec, output=out)
    steps = schedule()
    got = _run_tf1(out, steps, True)
    masked = 0
    for k in range(1, STEPS):
        for name in ("w", "big"):
            if not np.any(steps[k].grad(name) != 0):
                masked += 1
                assert got[k][name].tobytes() == got[k - 1][name].tobytes(), (k, name)
    assert masked >= 5


# --------------------------------------------------------------------------- TensorFlow 2


@pytest.fixture(scope="module")
def keras_savedmodel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Keras 3 SGD step over the three variables, gradients as the ``train`` signature's inputs."""
    import keras
    import tensorflow as tf

    class Model(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, value in INIT.items():  # attributes: the SavedModel names a variable by its path
                setattr(self, name, keras.Variable(value, name=name))
            self.vars = {name: getattr(self, name) for name in INIT}
            self.opt = keras.optimizers.SGD(learning_rate=float(LR))
            self.opt.build(list(self.vars.values()))

        @tf.function(input_signature=[tf.TensorSpec([4, 3]), tf.TensorSpec([3]), tf.TensorSpec([3, 2]),
                                      tf.TensorSpec([3], tf.int32)])
        def train(self, gw: Any, gbig: Any, values: Any, indices: Any) -> dict[str, Any]:
            v = self.vars
            self.opt.apply_gradients([(gw, v["w"]), (gbig, v["big"]),
                                      (tf.IndexedSlices(values, indices, tf.constant([6, 2])), v["emb"])])
            return {"done": tf.constant(True)}

        @tf.function(input_signature=[])
        def state(self) -> dict[str, Any]:
            return {name: var.value for name, var in self.vars.items()}

    model = Model()
    path = tmp_path_factory.mktemp("keras") / "sgd"
    tf.saved_model.save(model, str(path), signatures={"train": model.train, "state": model.state})
    return path


def _run_tf2(path: Path, steps: list[Step]) -> list[State]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    train, state = loaded.signatures["train"], loaded.signatures["state"]
    out = []
    for s in steps:
        train(gw=tf.constant(s.w), gbig=tf.constant(s.big), values=tf.constant(s.emb_values),
              indices=tf.constant(s.emb_indices))
        out.append({k: v.numpy() for k, v in state().items()})
    return out


@pytest.mark.parametrize(("formula", "on_skipped"), CASES, ids=[f"{f}-{o}" for f, o in CASES])
def test_tensorflow_2_matches_the_reference_bit_for_bit(tmp_path: Path, keras_savedmodel: Path, formula: str,
                                                         on_skipped: bool) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(formula, on_skipped, list(INIT)))
    out = tmp_path / "out"
    report = rewrite_file(keras_savedmodel, spec, output=out)
    assert sorted(label for s in report.sites for label in s.inserted) == sorted(
        ["guard"] * 3 + ["clip[0]", "clip[1]", "clip[2]"])
    steps = schedule()
    assert_bitwise(_run_tf2(out, steps), reference(steps, formula, on_skipped, list(INIT)), "TF2")


# --------------------------------------------------------------------------- ONNX


def _onnx_step(tmp_path: Path) -> Path:
    """ai.onnx.preview.training Momentum over w and big: alpha 0, beta 1 is gradient descent."""
    names = ["w", "big"]
    shapes = {name: list(INIT[name].shape) for name in names}
    inputs = [helper.make_tensor_value_info("R", TensorProto.FLOAT, []),
              helper.make_tensor_value_info("T", TensorProto.INT64, [])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes[n]) for n in names]
    inputs += [helper.make_tensor_value_info(f"g_{n}", TensorProto.FLOAT, shapes[n]) for n in names]
    inputs += [helper.make_tensor_value_info(f"v_{n}", TensorProto.FLOAT, shapes[n]) for n in names]
    outputs = [helper.make_tensor_value_info(f"{n}_new", TensorProto.FLOAT, shapes[n]) for n in names]
    outputs += [helper.make_tensor_value_info(f"v_{n}_new", TensorProto.FLOAT, shapes[n]) for n in names]
    node = helper.make_node("Momentum", [i.name for i in inputs], [o.name for o in outputs],
                            domain="ai.onnx.preview.training", alpha=0.0, beta=1.0, mode="standard",
                            norm_coefficient=0.0)
    model = helper.make_model(helper.make_graph([node], "sgd", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17),
                                             helper.make_opsetid("ai.onnx.preview.training", 1)])
    model.ir_version = 10
    path = tmp_path / "sgd.onnx"
    onnx.save(model, str(path))
    return path


def _run_onnx(path: Path, steps: list[Step]) -> list[State]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    state = {"w": INIT["w"].copy(), "big": INIT["big"].copy(),
             "v_w": np.zeros((4, 3), f32), "v_big": np.zeros(3, f32)}
    out = []
    for k, s in enumerate(steps):
        feed = {"R": np.array(LR, f32), "T": np.array(k + 1, np.int64), "g_w": s.w, "g_big": s.big, **state}
        state = {name.removesuffix("_new"): value for name, value in zip(names, session.run(None, feed))}
        out.append({"w": state["w"], "big": state["big"]})
    return out


@pytest.mark.parametrize(("formula", "on_skipped"), CASES, ids=[f"{f}-{o}" for f, o in CASES])
def test_onnx_lowered_matches_the_reference(tmp_path: Path, formula: str, on_skipped: bool) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(formula, on_skipped, ["w", "big"]) + "lower: true\n")
    out = tmp_path / "out.onnx"
    rewrite_file(_onnx_step(tmp_path), spec, output=out)
    onnx.checker.check_model(str(out), full_check=True)
    steps = schedule()
    got = _run_onnx(out, steps)
    want = reference(steps, formula, on_skipped, ["w", "big"])
    for k, (g, w) in enumerate(zip(got, want)):
        for name in w:
            scale = float(np.max(np.abs(w[name])))
            assert float(np.max(np.abs(g[name] - w[name]))) <= 1e-6 * scale, (k, name)
    kept = 0  # a step that neither updates nor clips a tensor leaves its bits, as in TensorFlow
    for k in range(1, STEPS):
        for name in want[k]:
            if want[k][name].tobytes() == want[k - 1][name].tobytes():
                kept += 1
                assert got[k][name].tobytes() == got[k - 1][name].tobytes(), (k, name)
    assert kept >= 3


def test_one_spec_trains_alike_on_every_format(tmp_path: Path, tf_config: object, keras_savedmodel: Path) -> None:
    """The exact clip, not on skipped steps: TF1, TF2 and ONNX agree to 1e-6 on w and big."""
    names = ["w", "big"]
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text("exact", False, names))
    steps = schedule()
    tf1 = tmp_path / "tf1.pb"
    rewrite_file(_tf1_graph(tmp_path, True), spec, output=tf1)
    tf2 = tmp_path / "tf2"
    rewrite_file(keras_savedmodel, spec, output=tf2)
    lowered = tmp_path / "lowered.yaml"
    lowered.write_text(spec.read_text() + "lower: true\n")
    ox = tmp_path / "out.onnx"
    rewrite_file(_onnx_step(tmp_path), lowered, output=ox)
    runs = {"TF1": _run_tf1(tf1, steps, True), "TF2": _run_tf2(tf2, steps), "ONNX": _run_onnx(ox, steps)}
    for k in range(STEPS):
        for name in names:
            base = runs["TF1"][k][name]
            for fmt in ("TF2", "ONNX"):
                diff = float(np.max(np.abs(runs[fmt][k][name] - base)))
                assert diff <= 1e-6 * float(np.max(np.abs(base))), (fmt, k, name, diff)
