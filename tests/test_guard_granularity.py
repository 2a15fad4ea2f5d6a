"""``guard: {granularity: row | element}`` on every format, against a construction-time reference.

With ``element`` each element whose gradient the rule skips keeps its value in the variable
and in every slot (OLMo's selective updates); with ``row`` each row along dim 0 whose
gradient slice is skipped does (LazyAdam: an embedding row a batch does not touch keeps its
moments, where TensorFlow's own sparse Adam decays them). Shared state (beta powers, Keras's
``iterations``) advances every step.

The reference runs the *original* step as built here, then puts the old values back where
the rule skips, in numpy: per element (or row) of the variable, ``where(applied, after,
before)`` for the variable and each slot. ``applied`` is ``g != 0`` (NaN counts as non-zero,
-0.0 as zero), and with ``zero_or_nonfinite`` also ``isfinite(g)``; a row applies when any
element is non-zero and all are finite; a sparse gradient's untouched rows are zero; a row
looked up twice applies when either of its entries does.

The steps are tests/fed_step.py's: all-zero gradients in some steps, zero rows and elements
in others, a repeated sparse index, and NaN and infinities in some steps (those only under
``zero_or_nonfinite``, which skips them). TensorFlow 1 (fused ``ResourceApplyAdam`` and the
decomposed sparse Adam, on resource and ref variables; the fused sparse Momentum) and
TensorFlow 2 (Keras 3 Adam and SGD, tf.compat.v1 Adam and Momentum inside the ``tf.function``)
must match bit for bit; ONNX (preview
Momentum, lowered, in onnxruntime) to 1e-6.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from optrewrite.api import rewrite_file
from optrewrite.errors import SpecError
from tests.fed_step import DENSE, INIT, STEPS, State, Step, assert_bitwise, assert_close, onnx_step, schedule

f32 = np.float32
CASES = [("element", "zero"), ("row", "zero"), ("element", "zero_or_nonfinite"), ("row", "zero_or_nonfinite")]
IDS = [f"{g}-{w}" for g, w in CASES]


def spec_text(granularity: str, when: str) -> str:
    return f"version: 1\nguard:\n  granularity: {granularity}\n  when: {when}\n"


def steps_for(when: str) -> list[Step]:
    return schedule(nonfinite=when != "zero")


def applied(step: Step, name: str, granularity: str, when: str, rows: int) -> np.ndarray:
    """Where the update applies, over the variable's shape (module docstring)."""
    g = step.grad(name)
    ok = g != 0
    if when == "zero_or_nonfinite":
        ok = ok & np.isfinite(g) if granularity == "element" else ok
    if granularity == "row" and g.ndim > 1:
        row_ok = ok.any(axis=tuple(range(1, g.ndim)))
        if when == "zero_or_nonfinite":
            row_ok &= np.isfinite(g).all(axis=tuple(range(1, g.ndim)))
        ok = np.broadcast_to(row_ok.reshape(-1, *[1] * (g.ndim - 1)), g.shape)
    elif granularity == "row" and when == "zero_or_nonfinite":
        ok = ok & np.isfinite(g)
    if name != "emb":
        return ok
    dense = np.zeros((rows, *g.shape[1:]), bool)
    for k, i in enumerate(step.emb_indices):
        dense[i] |= ok[k]
    return dense


def restored(before: State, after: State, groups: dict[str, list[str]], step: Step, granularity: str,
             when: str) -> State:
    """``after`` with the old values back where the rule skips; ``groups``: variable -> it
    and its slots' keys."""
    out = dict(after)
    for name, keys in groups.items():
        mask = applied(step, name, granularity, when, INIT[name].shape[0])
        for key in keys:
            out[key] = np.where(mask, after[key], before[key]).astype(after[key].dtype)
    return out


# --------------------------------------------------------------------------- TensorFlow 1


class _TF1:
    """The tf.compat.v1 Adam (or Momentum) step over w, big and emb, built in this process."""

    def __init__(self, resource: bool, optimizer: str = "adam") -> None:
        import tensorflow as tf

        self.graph = tf.Graph()
        with self.graph.as_default():
            self.vars = {name: tf.compat.v1.get_variable(name, initializer=value, use_resource=resource)
                         for name, value in INIT.items()}
            self.gw = tf.compat.v1.placeholder(tf.float32, [4, 3], name="gw")
            self.gbig = tf.compat.v1.placeholder(tf.float32, [3], name="gbig")
            self.values = tf.compat.v1.placeholder(tf.float32, [3, 2], name="emb_values")
            self.indices = tf.compat.v1.placeholder(tf.int32, [3], name="emb_indices")
            adam = optimizer == "adam"
            opt = tf.compat.v1.train.AdamOptimizer(0.05) if adam else tf.compat.v1.train.MomentumOptimizer(0.05, 0.9)
            sparse = tf.IndexedSlices(self.values, self.indices, tf.constant([6, 2]))
            opt.apply_gradients([(self.gw, self.vars["w"]), (self.gbig, self.vars["big"]),
                                 (sparse, self.vars["emb"])], name="train")
            slots = ["Adam", "Adam_1"] if adam else ["Momentum"]
            self.groups = {name: [name, *(f"{name}/{slot}" for slot in slots)] for name in INIT}
            tf.compat.v1.global_variables_initializer()
        self.keys = [k for keys in self.groups.values() for k in keys] + (["beta1_power", "beta2_power"] if adam else [])

    def save(self, path: Path) -> Path:
        path.write_bytes(self.graph.as_graph_def().SerializeToString())
        return path

    def run(self, path: Path | None, steps: list[Step], restore: Callable[[State, State, Step], State] | None = None
            ) -> list[State]:
        """The graph at ``path`` (None: the one built here) step by step; ``restore`` is the
        reference's edit after each step, written back into the variables."""
        import tensorflow as tf

        graph = self.graph
        if path is not None:
            graph = tf.Graph()
            with graph.as_default():
                tf.compat.v1.import_graph_def(tf.compat.v1.GraphDef.FromString(path.read_bytes()), name="")
        with graph.as_default():
            handles = {k: graph.get_tensor_by_name(f"{k}:0") for k in self.keys}
            resource = handles["w"].dtype == tf.resource
            reads = ({k: tf.raw_ops.ReadVariableOp(resource=h, dtype=tf.float32) for k, h in handles.items()}
                     if resource else handles)
            feeds = {k: tf.compat.v1.placeholder(tf.float32, name=f"load/{k.replace('/', '_')}") for k in self.keys}
            loads = {k: (tf.raw_ops.AssignVariableOp(resource=handles[k], value=feeds[k]) if resource
                         else tf.compat.v1.assign(handles[k], feeds[k])) for k in self.keys}
        out = []
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
        with tf.compat.v1.Session(graph=graph, config=config) as sess:
            sess.run(graph.get_operation_by_name("init"))
            for s in steps:
                before = sess.run(reads)
                sess.run(graph.get_operation_by_name("train"), {"gw:0": s.w, "gbig:0": s.big,
                                                                "emb_values:0": s.emb_values,
                                                                "emb_indices:0": s.emb_indices})
                after = {k: np.array(v) for k, v in sess.run(reads).items()}
                if restore is not None:
                    after = restore(before, after, s)
                    sess.run([loads[k] for k in self.keys], {feeds[k]: after[k] for k in self.keys})
                out.append(after)
        return out


@pytest.mark.parametrize("resource", [True, False], ids=["resource", "ref"])
@pytest.mark.parametrize(("granularity", "when"), CASES, ids=IDS)
def test_tensorflow_1_adam(tmp_path: Path, tf_config: object, resource: bool, granularity: str, when: str) -> None:
    """Fused dense ``ApplyAdam`` and the decomposed sparse Adam (dense moment updates)."""
    step_graph = _TF1(resource)
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(granularity, when))
    out = tmp_path / "out.pb"
    report = rewrite_file(step_graph.save(tmp_path / "in.pb"), spec, output=out)
    assert sorted(s.kind for s in report.sites) == ["Adam (decomposed)", "ApplyAdam" if not resource
                                                   else "ResourceApplyAdam"] + ["ApplyAdam" if not resource
                                                                                else "ResourceApplyAdam"]
    steps = steps_for(when)
    want = step_graph.run(None, steps, lambda b, a, s: restored(b, a, step_graph.groups, s, granularity, when))
    got = step_graph.run(out, steps)
    assert_bitwise(got, want, "TF1")
    plain = step_graph.run(None, steps)
    assert any(not np.array_equal(p["emb/Adam"], w["emb/Adam"]) for p, w in zip(plain, want))  # it can fail
    assert [s["beta1_power"].tobytes() for s in got] == [s["beta1_power"].tobytes() for s in plain]


@pytest.mark.parametrize("resource", [True, False], ids=["resource", "ref"])
@pytest.mark.parametrize(("granularity", "when"), CASES, ids=IDS)
def test_tensorflow_1_fused_sparse_momentum(tmp_path: Path, tf_config: object, resource: bool, granularity: str,
                                            when: str) -> None:
    """``SparseApplyMomentum`` writes only the rows at its indices; the guard restores only
    those (each once), and an untouched row keeps its accumulator as the op leaves it."""
    step_graph = _TF1(resource, "momentum")
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(granularity, when))
    out = tmp_path / "out.pb"
    report = rewrite_file(step_graph.save(tmp_path / "in.pb"), spec, output=out)
    prefix = "Resource" if resource else ""
    assert sorted(s.kind for s in report.sites) == sorted([f"{prefix}ApplyMomentum"] * 2 + [f"{prefix}SparseApplyMomentum"])
    steps = steps_for(when)
    want = step_graph.run(None, steps, lambda b, a, s: restored(b, a, step_graph.groups, s, granularity, when))
    assert_bitwise(step_graph.run(out, steps), want, "TF1")
    plain = step_graph.run(None, steps)
    assert any(not np.array_equal(p["emb/Momentum"], w["emb/Momentum"]) for p, w in zip(plain, want))


# --------------------------------------------------------------------------- TensorFlow 2


def _keras_module(optimizer: str) -> Any:
    import keras
    import tensorflow as tf

    class Model(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            v1 = optimizer.startswith("v1-")
            for name, value in INIT.items():
                setattr(self, name, tf.Variable(value, name=name) if v1 else keras.Variable(value, name=name))
            if v1:  # fused ResourceApplyAdam (dense) and the decomposed sparse Adam, in the function
                # tf.saved_model.load cannot restore a tf.compat.v1 optimizer's slots (it calls the
                # Keras-only add_slot): its variables are tracked by name, the optimizer is not
                adam = optimizer == "v1-adam"
                opt = tf.compat.v1.train.AdamOptimizer(0.05) if adam else tf.compat.v1.train.MomentumOptimizer(0.05, 0.9)
                opt._create_slots([getattr(self, name) for name in INIT])  # before saving: they are saved
                self.opt_state = {f"opt_{name}_{slot}": opt.get_slot(getattr(self, name), slot)
                                  for name in INIT for slot in (("m", "v") if adam else ("momentum",))}
                if adam:
                    self.opt_state.update({f"opt_beta{k + 1}_power": v for k, v in enumerate(opt._get_beta_accumulators())})
                self.apply = opt.apply_gradients
            else:
                self.opt = (keras.optimizers.Adam(0.05) if optimizer == "adam" else keras.optimizers.SGD(0.1))
                self.opt.build([getattr(self, name) for name in INIT])
                self.apply = self.opt.apply_gradients

        @tf.function(input_signature=[tf.TensorSpec([4, 3]), tf.TensorSpec([3]), tf.TensorSpec([3, 2]),
                                      tf.TensorSpec([3], tf.int32)])
        def train(self, gw: Any, gbig: Any, values: Any, indices: Any) -> dict[str, Any]:
            sparse = tf.IndexedSlices(values, indices, tf.constant([6, 2]))
            self.apply([(gw, self.w), (gbig, self.big), (sparse, self.emb)])
            return {"done": tf.constant(True)}

        @tf.function(input_signature=[])
        def state(self) -> dict[str, Any]:
            return {key: tf.convert_to_tensor(v) for key, v in keyed(self).items()}

    return Model()


def keyed(model: Any) -> dict[str, Any]:
    """The model's variables and its optimizer's, by a key that does not depend on the
    optimizer's unique name: ``w``, ``opt_w_momentum``, ``opt_iteration``."""
    out = {name: getattr(model, name) for name in INIT}
    if hasattr(model, "opt_state"):  # tf.compat.v1
        return {**out, **model.opt_state}
    out.update({"opt_" + v.path.split("/", 1)[-1].replace("/", "_"): v for v in model.opt.variables})
    return out


def _keras_run(train: Callable[..., Any], state: Callable[[], Any], steps: list[Step],
               edit: Callable[[State, State, Step], State] | None = None,
               load: Callable[[State], None] | None = None) -> list[State]:
    import tensorflow as tf

    out = []
    for s in steps:
        before = {k: v.numpy() for k, v in state().items()}
        train(gw=tf.constant(s.w), gbig=tf.constant(s.big), values=tf.constant(s.emb_values),
              indices=tf.constant(s.emb_indices))
        after = {k: v.numpy() for k, v in state().items()}
        if edit is not None and load is not None:
            after = edit(before, after, s)
            load(after)
        out.append(after)
    return out


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "v1-adam", "v1-momentum"])
@pytest.mark.parametrize(("granularity", "when"), CASES, ids=IDS)
def test_tensorflow_2_keras(tmp_path: Path, optimizer: str, granularity: str, when: str) -> None:
    import tensorflow as tf

    model = _keras_module(optimizer)
    export = tmp_path / "in"
    tf.saved_model.save(model, str(export), signatures={"train": model.train, "state": model.state})
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(granularity, when))
    out = tmp_path / "out"
    report = rewrite_file(export, spec, output=out)
    assert sorted(s.inserted for s in report.sites) == [["guard"]] * 3
    if optimizer == "v1-momentum":  # the fused sparse op, whose touched rows alone are restored
        assert {s.variable: s.kind for s in report.sites}["emb"] == "ResourceSparseApplyMomentum"
    steps = steps_for(when)
    reference = _keras_module(optimizer)
    variables = keyed(reference)
    groups = {name: [k for k in variables if k == name or k.startswith(f"opt_{name}_")] for name in INIT}
    assert sum(map(len, groups.values())) == 3 * {"sgd": 1, "v1-momentum": 2}.get(optimizer, 3)

    def load(values: State) -> None:
        for k, v in values.items():
            variables[k].assign(v)

    want = _keras_run(lambda **kw: reference.train(*kw.values()), reference.state, steps,
                      lambda b, a, s: restored(b, a, groups, s, granularity, when), load)
    loaded = tf.saved_model.load(str(out))
    got = _keras_run(loaded.signatures["train"], loaded.signatures["state"], steps)
    assert_bitwise(got, want, "TF2")
    if optimizer == "v1-adam":  # shared state advances every step
        assert np.allclose([s["opt_beta1_power"] for s in got], 0.9 ** np.arange(2, STEPS + 2))
    elif optimizer != "v1-momentum":
        assert [int(s["opt_iteration"]) for s in got] == list(range(1, STEPS + 1))


# --------------------------------------------------------------------------- ONNX


def _momentum_step(tmp_path: Path) -> Path:
    """Preview Momentum (alpha 0.9, beta 1) over w and big, the fed-step's names."""
    return onnx_step(tmp_path, alpha=0.9)


def _onnx_run(run: Callable[[dict[str, np.ndarray]], list[np.ndarray]], names: list[str], steps: list[Step],
              edit: Callable[[State, State, Step], State] | None = None) -> list[State]:
    state = {**{n: INIT[n].copy() for n in DENSE}, **{f"v_{n}": np.zeros_like(INIT[n]) for n in DENSE}}
    out = []
    for k, s in enumerate(steps):
        feed = {"R": np.array(0.1, f32), "T": np.array(k + 1, np.int64), "g_w": s.w, "g_big": s.big, **state}
        after = {name.removesuffix("_new"): value for name, value in zip(names, run(feed))}
        if edit is not None:
            after = edit(state, after, s)
        state = after
        out.append(dict(after))
    return out


@pytest.mark.parametrize(("granularity", "when"), CASES, ids=IDS)
def test_onnx_lowered(tmp_path: Path, granularity: str, when: str) -> None:
    import onnxruntime as ort

    src = _momentum_step(tmp_path)
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(granularity, when) + "lower: true\n")
    out = tmp_path / "out.onnx"
    rewrite_file(src, spec, output=out)
    onnx.checker.check_model(str(out), full_check=True)
    steps = steps_for(when)
    evaluator = ReferenceEvaluator(str(src))
    names = [o.name for o in onnx.load(str(src)).graph.output]
    groups = {n: [n, f"v_{n}"] for n in DENSE}
    want = _onnx_run(lambda feed: evaluator.run(None, feed), names, steps,
                     lambda b, a, s: restored(b, a, groups, s, granularity, when))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = _onnx_run(lambda feed: session.run(None, feed), names, steps)
    assert_close(got, want, "ONNX")


def test_row_granularity_refuses_a_scalar(tmp_path: Path) -> None:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        s = tf.compat.v1.get_variable("s", initializer=1.0, use_resource=True)
        g = tf.compat.v1.placeholder(tf.float32, [], name="g")
        tf.compat.v1.train.GradientDescentOptimizer(0.1).apply_gradients([(g, s)], name="train")
    src = tmp_path / "g.pb"
    src.write_bytes(graph.as_graph_def().SerializeToString())
    spec = tmp_path / "s.yaml"
    spec.write_text("version: 1\nguard:\n  variables: ['*']\n  granularity: row\n")
    with pytest.raises(SpecError, match=r"s.yaml:4: guard.granularity: row needs variables with rows; 's' has no rows"):
        rewrite_file(src, spec, output=tmp_path / "out.pb")


# --------------------------------------------------------------------------- across formats


def _tf1_momentum(tmp_path: Path) -> Path:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        gw = tf.compat.v1.placeholder(tf.float32, [4, 3], name="gw")
        gbig = tf.compat.v1.placeholder(tf.float32, [3], name="gbig")
        pairs = [(g, tf.compat.v1.get_variable(name, initializer=INIT[name], use_resource=True))
                 for g, name in ((gw, "w"), (gbig, "big"))]
        tf.compat.v1.train.MomentumOptimizer(0.1, 0.9).apply_gradients(pairs, name="train")
        tf.compat.v1.global_variables_initializer()
    path = tmp_path / "momentum.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def _tf2_momentum(export_dir: Path) -> Path:
    """tf.compat.v1 Momentum inside the ``train`` function (fused ResourceApplyMomentum)."""
    import tensorflow as tf

    class Model(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w, self.big = (tf.Variable(INIT[n], name=n) for n in DENSE)
            opt = tf.compat.v1.train.MomentumOptimizer(0.1, 0.9)
            opt._create_slots([self.w, self.big])
            self.opt_state = {n: opt.get_slot(getattr(self, n), "momentum") for n in DENSE}  # saved, by name
            self.apply = opt.apply_gradients

        @tf.function(input_signature=[tf.TensorSpec([4, 3]), tf.TensorSpec([3])])
        def train(self, gw: Any, gbig: Any) -> dict[str, Any]:
            self.apply([(gw, self.w), (gbig, self.big)])
            return {"done": tf.constant(True)}

        @tf.function(input_signature=[])
        def state(self) -> dict[str, Any]:
            return {"w": tf.convert_to_tensor(self.w), "big": tf.convert_to_tensor(self.big)}

    model = Model()
    tf.saved_model.save(model, str(export_dir), signatures={"train": model.train, "state": model.state})
    return export_dir


@pytest.mark.parametrize("granularity", ["element", "row"])
def test_one_spec_trains_alike_on_every_format(tmp_path: Path, tf_config: object, granularity: str) -> None:
    """Momentum (TF ``accum = accum * m + g; var -= lr * accum`` is ONNX Momentum with alpha m,
    beta 1) in TF1, in a SavedModel and in ONNX: w and big agree to 1e-6 after every step."""
    import onnxruntime as ort
    import tensorflow as tf

    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(granularity, "zero_or_nonfinite"))
    lowered = tmp_path / "lowered.yaml"
    lowered.write_text(spec.read_text() + "lower: true\n")
    steps = steps_for("zero_or_nonfinite")
    tf1, tf2, ox = tmp_path / "tf1.pb", tmp_path / "tf2", tmp_path / "out.onnx"
    rewrite_file(_tf1_momentum(tmp_path), spec, output=tf1)
    rewrite_file(_tf2_momentum(tmp_path / "saved"), spec, output=tf2)
    src = _momentum_step(tmp_path)
    rewrite_file(src, lowered, output=ox)

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(tf.compat.v1.GraphDef.FromString(tf1.read_bytes()), name="")
        reads = {n: tf.raw_ops.ReadVariableOp(resource=graph.get_tensor_by_name(f"{n}:0"), dtype=tf.float32)
                 for n in DENSE}
    first = []
    with tf.compat.v1.Session(graph=graph, config=tf_config) as sess:
        sess.run(graph.get_operation_by_name("init"))
        for s in steps:
            sess.run(graph.get_operation_by_name("train"), {"gw:0": s.w, "gbig:0": s.big})
            first.append({k: np.array(v) for k, v in sess.run(reads).items()})
    loaded = tf.saved_model.load(str(tf2))
    second = []
    for s in steps:
        loaded.signatures["train"](gw=tf.constant(s.w), gbig=tf.constant(s.big))
        second.append({k: v.numpy() for k, v in loaded.signatures["state"]().items()})
    session = ort.InferenceSession(str(ox), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    third = [{n: s[n] for n in DENSE} for s in _onnx_run(lambda feed: session.run(None, feed), names, steps)]
    assert_bitwise(second, first, "TF2 vs TF1")
    assert_close(third, first, "ONNX vs TF1")
    evaluator = ReferenceEvaluator(str(src))
    with np.errstate(invalid="ignore"):  # unguarded, the NaN steps poison it
        plain = _onnx_run(lambda feed: evaluator.run(None, feed), names, steps)
    # the guard changed something before the first NaN or infinity (after one, the unguarded run differs anyway)
    finite = next(k for k, s in enumerate(steps) if not all(np.isfinite(s.grad(n)).all() for n in DENSE))
    assert any(not np.array_equal(p["w"], f["w"]) for p, f in zip(plain[:finite], first[:finite]))


@pytest.mark.parametrize("granularity", ["element", "row"])
def test_onnx_declared_step(tmp_path: Path, granularity: str) -> None:
    """A step written in plain ops (its site declared in the spec's ``updates``): the update
    is computed every step and each element (row) of W and m whose gradient is zero keeps
    its value; the reference is the original step in onnxruntime, restored in numpy."""
    import onnxruntime as ort

    src = Path(__file__).resolve().parents[1] / "fixtures" / "decomposed_momentum" / "input.onnx"
    spec = tmp_path / "s.yaml"
    spec.write_text(f"version: 1\nguard: {{granularity: {granularity}}}\nupdates:\n"
                    "  - {variable: W, gradient: dW, updated: W_new, state: [[m, m_new]]}\n")
    out = tmp_path / "out.onnx"
    rewrite_file(src, spec, output=out)
    rng = np.random.default_rng(3)
    feed = {"W": rng.normal(size=(2, 3)).astype(f32), "m": rng.normal(size=(2, 3)).astype(f32),
            "dW": np.array([[0.5, 0.0, -0.0], [0.0, 0.0, 0.0]], f32), "lr": np.array(0.1, f32),
            "momentum": np.array(0.9, f32)}
    plain = dict(zip(["W_new", "m_new"], ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
                     .run(["W_new", "m_new"], feed)))
    got = dict(zip(["W_new", "m_new"], ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
                   .run(["W_new", "m_new"], feed)))
    ok = feed["dW"] != 0
    if granularity == "row":
        ok = np.broadcast_to(ok.any(axis=1, keepdims=True), ok.shape)
    for new, old in (("W_new", "W"), ("m_new", "m")):
        np.testing.assert_array_equal(got[new], np.where(ok, plain[new], feed[old]))
    assert not np.array_equal(plain["m_new"], feed["m"])  # the original moves m everywhere
