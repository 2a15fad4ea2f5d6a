"""One tiny training step whose gradients the test feeds, in every format optrewrite reads.

Three variables under plain gradient descent (lr 0.1):

- ``w`` (4 x 3) and ``big`` (3,), dense gradients; ``big`` starts near 5.5e3;
- ``emb`` (6 x 2, TensorFlow only), a sparse gradient (values at indices, one index repeated).

The same step as

- a TensorFlow 1 GraphDef: ``tf.compat.v1`` GradientDescent on resource or ref variables
  (``ResourceApplyGradientDescent`` / ``ApplyGradientDescent``, and the decomposed sparse
  update, a scatter-add of ``-lr * values``), train op ``train``;
- a TensorFlow 2 SavedModel: a ``tf.Module`` holding Keras 3 variables and a Keras 3 SGD,
  signatures ``train(gw, gbig, values, indices)`` and ``state()`` (every variable, and the
  optimizer's ``iterations``);
- an ONNX step (``w`` and ``big``): ai.onnx.preview.training ``Momentum`` with alpha 0 and
  beta 1, which is gradient descent (``V' = G``, ``X' = X - R * V'``).

Every update computes ``v - g * lr`` (a scatter: ``v[i] + -(g * lr)``, index by index), the
same float32 numbers in each, so one numpy reference serves all three.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

f32 = np.float32
LR = f32(0.1)
STEPS = 16
INIT = {
    "w": (np.arange(12, dtype=f32).reshape(4, 3) - 5) / f32(7),
    "big": np.array([5500.0, -5498.25, 5501.5], f32),
    "emb": (np.arange(12, dtype=f32).reshape(6, 2) - 6) / f32(5),
}
DENSE = ["w", "big"]
State = dict[str, np.ndarray]


@dataclass(frozen=True)
class Step:
    w: np.ndarray
    big: np.ndarray
    emb_values: np.ndarray
    emb_indices: np.ndarray

    def grad(self, name: str) -> np.ndarray:
        return {"w": self.w, "big": self.big, "emb": self.emb_values}[name]


def schedule(*, nonfinite: bool = False) -> list[Step]:
    """16 steps; each variable's gradient is all zero (with some -0.0) in some of them, and
    with ``nonfinite`` holds a NaN or an infinity in others."""
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
        if nonfinite:
            if k % 7 == 3:
                w[1, 2] = np.nan
            if k % 6 == 5:
                big[0] = np.inf
            if k % 8 == 6:
                values[1, 0] = -np.inf
        steps.append(Step(w, big, values, indices))
    return steps


def update(state: State, name: str, step: Step) -> None:
    """The optimizer's update of ``name``, in place, as every format computes it."""
    g = step.grad(name)
    if name == "emb":
        np.add.at(state[name], step.emb_indices, -(g * LR))  # in index order, as a scatter does
    else:
        state[name] = state[name] - g * LR


def assert_bitwise(got: list[State], want: list[State], what: str) -> None:
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        for name in w:
            assert g[name].tobytes() == w[name].tobytes(), (
                f"{what}: step {k}, {name}: max |diff| {np.max(np.abs(g[name] - w[name]))}")


def assert_close(got: list[State], want: list[State], what: str, rtol: float = 1e-6) -> None:
    """max |got - want| <= rtol * max |want|, per tensor and step; NaN where the other has NaN."""
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        for name in w:
            scale = float(np.nanmax(np.abs(w[name]))) if np.isfinite(w[name]).any() else 0.0
            assert (np.isnan(g[name]) == np.isnan(w[name])).all(), (what, k, name)
            diff = float(np.nanmax(np.abs(g[name] - w[name]), initial=0.0))
            assert diff <= rtol * scale, f"{what}: step {k}, {name}: max |diff| {diff}"


# --------------------------------------------------------------------------- TensorFlow 1


def tf1_graph(tmp_path: Path, *, resource: bool = True) -> Path:
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


def run_tf1(path: Path, steps: list[Step], *, resource: bool = True) -> list[State]:
    """The graph in a single-threaded Session: every variable after each step."""
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


# --------------------------------------------------------------------------- TensorFlow 2


def keras_savedmodel(export_dir: Path) -> Path:
    """Save the Keras 3 SGD step (module docstring) to ``export_dir``."""
    import keras
    import tensorflow as tf

    class Model(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, value in INIT.items():  # attributes: the SavedModel names a variable by its path
                setattr(self, name, keras.Variable(value, name=name))
            self.opt = keras.optimizers.SGD(learning_rate=float(LR))
            self.opt.build([getattr(self, name) for name in INIT])

        @tf.function(input_signature=[tf.TensorSpec([4, 3]), tf.TensorSpec([3]), tf.TensorSpec([3, 2]),
                                      tf.TensorSpec([3], tf.int32)])
        def train(self, gw: Any, gbig: Any, values: Any, indices: Any) -> dict[str, Any]:
            sparse = tf.IndexedSlices(values, indices, tf.constant([6, 2]))
            self.opt.apply_gradients([(gw, self.w), (gbig, self.big), (sparse, self.emb)])
            return {"done": tf.constant(True)}

        @tf.function(input_signature=[])
        def state(self) -> dict[str, Any]:
            return {**{name: getattr(self, name).value for name in INIT}, "iterations": self.opt.iterations.value}

    model = Model()
    tf.saved_model.save(model, str(export_dir), signatures={"train": model.train, "state": model.state})
    return export_dir


def run_tf2(path: Path, steps: list[Step]) -> list[State]:
    """The loaded SavedModel's ``train``, then its ``state``, per step."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    train, state = loaded.signatures["train"], loaded.signatures["state"]
    out = []
    for s in steps:
        train(gw=tf.constant(s.w), gbig=tf.constant(s.big), values=tf.constant(s.emb_values),
              indices=tf.constant(s.emb_indices))
        out.append({k: v.numpy() for k, v in state().items()})
    return out


# --------------------------------------------------------------------------- ONNX


def onnx_step(tmp_path: Path, *, alpha: float = 0.0) -> Path:
    """ai.onnx.preview.training Momentum over w and big: alpha 0, beta 1 is gradient descent
    (another ``alpha`` is TensorFlow's Momentum with that momentum)."""
    shapes = {name: list(INIT[name].shape) for name in DENSE}
    inputs = [helper.make_tensor_value_info("R", TensorProto.FLOAT, []),
              helper.make_tensor_value_info("T", TensorProto.INT64, [])]
    for prefix in ("", "g_", "v_"):
        inputs += [helper.make_tensor_value_info(f"{prefix}{n}", TensorProto.FLOAT, shapes[n]) for n in DENSE]
    outputs = [helper.make_tensor_value_info(f"{n}_new", TensorProto.FLOAT, shapes[n]) for n in DENSE]
    outputs += [helper.make_tensor_value_info(f"v_{n}_new", TensorProto.FLOAT, shapes[n]) for n in DENSE]
    node = helper.make_node("Momentum", [i.name for i in inputs], [o.name for o in outputs],
                            domain="ai.onnx.preview.training", alpha=alpha, beta=1.0, mode="standard",
                            norm_coefficient=0.0)
    model = helper.make_model(helper.make_graph([node], "sgd", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17),
                                             helper.make_opsetid("ai.onnx.preview.training", 1)])
    model.ir_version = 10
    path = tmp_path / ("sgd.onnx" if alpha == 0 else "momentum.onnx")
    onnx.save(model, str(path))
    return path


def run_onnx(path: Path, steps: list[Step]) -> list[State]:
    """The model in onnxruntime (CPU), each step's outputs fed back as the next one's inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    state = {**{n: INIT[n].copy() for n in DENSE}, **{f"v_{n}": np.zeros_like(INIT[n]) for n in DENSE}}
    out = []
    for k, s in enumerate(steps):
        feed = {"R": np.array(LR, f32), "T": np.array(k + 1, np.int64), "g_w": s.w, "g_big": s.big, **state}
        state = {name.removesuffix("_new"): value for name, value in zip(names, session.run(None, feed))}
        out.append({n: state[n] for n in DENSE})
    return out
