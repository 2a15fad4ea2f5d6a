"""``guard: {when: ...}`` on both formats: skip a variable's update when its gradient holds a
NaN or an infinity (``nonfinite``), or when it is all zero or not finite (``zero_or_nonfinite``).

A skipped variable keeps its value and its optimizer slots bit for bit; non-slot state still
advances, as with the zero guard (docs/semantics.md#guard). The references are written here:
numpy for TensorFlow's Momentum, onnx's reference evaluator for the ONNX training ops.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from optrewrite.api import rewrite_file
from tests.onnx.preview import Step

NAN, INF = float("nan"), float("inf")
LR, MOMENTUM = 0.1, 0.9


def _tf_graph(tmp_path: Path) -> Path:
    """Two resource variables under tf.compat.v1 Momentum, each gradient a placeholder."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        a = tf.compat.v1.get_variable("a", initializer=np.array([[1.0, -2.0], [0.5, 3.0]], np.float32),
                                      use_resource=True)
        b = tf.compat.v1.get_variable("b", initializer=np.array([4.0, -1.0], np.float32), use_resource=True)
        ga = tf.compat.v1.placeholder(tf.float32, [2, 2], name="ga")
        gb = tf.compat.v1.placeholder(tf.float32, [2], name="gb")
        opt = tf.compat.v1.train.MomentumOptimizer(LR, MOMENTUM)
        opt.apply_gradients([(ga, a), (gb, b)], name="train")
        tf.compat.v1.global_variables_initializer()
    path = tmp_path / "g.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def _run_tf(path: Path, feeds: list[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The rewritten graph in TensorFlow: every variable and slot after each step."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(tf.compat.v1.GraphDef.FromString(path.read_bytes()), name="")
        handles = {"a": "a", "b": "b", "a_slot": "a/Momentum", "b_slot": "b/Momentum"}
        reads = {k: tf.raw_ops.ReadVariableOp(resource=graph.get_tensor_by_name(f"{v}:0"), dtype=tf.float32)
                 for k, v in handles.items()}
    out = []
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    with tf.compat.v1.Session(graph=graph, config=config) as sess:
        sess.run(graph.get_operation_by_name("init"))
        for ga, gb in feeds:
            sess.run(graph.get_operation_by_name("train"), {"ga:0": ga, "gb:0": gb})
            out.append({k: np.array(v) for k, v in sess.run(reads).items()})
    return out


def _momentum_reference(feeds: list[tuple[np.ndarray, np.ndarray]], when: str) -> list[dict[str, np.ndarray]]:
    """TensorFlow's Momentum (accum = accum * m + g; var -= lr * accum) in float32, skipping a
    variable's step as ``when`` says."""
    state = {"a": np.array([[1.0, -2.0], [0.5, 3.0]], np.float32), "b": np.array([4.0, -1.0], np.float32)}
    state |= {"a_slot": np.zeros((2, 2), np.float32), "b_slot": np.zeros(2, np.float32)}
    out = []
    for ga, gb in feeds:
        for name, g in (("a", ga), ("b", gb)):
            finite, zero = bool(np.isfinite(g).all()), not np.any(g != 0) and not np.isnan(g).any()
            skip = {"nonfinite": not finite, "zero_or_nonfinite": zero or not finite, "zero": zero}[when]
            if skip:
                continue
            accum = state[f"{name}_slot"] * np.float32(MOMENTUM) + g
            state[f"{name}_slot"] = accum
            state[name] = state[name] - np.float32(LR) * accum
        out.append({k: v.copy() for k, v in state.items()})
    return out


FEEDS = [
    (np.full((2, 2), 0.5, np.float32), np.array([1.0, -1.0], np.float32)),
    (np.array([[NAN, 0.1], [0.2, 0.3]], np.float32), np.array([0.5, 0.5], np.float32)),
    (np.array([[0.1, 0.1], [0.1, 0.1]], np.float32), np.array([INF, 0.0], np.float32)),
    (np.zeros((2, 2), np.float32), np.array([-INF, NAN], np.float32)),
    (np.array([[-0.0, 0.0], [0.0, 0.0]], np.float32), np.array([0.25, 0.0], np.float32)),
    (np.full((2, 2), -0.2, np.float32), np.array([0.1, 0.2], np.float32)),
]


@pytest.mark.parametrize("when", ["nonfinite", "zero_or_nonfinite"])
def test_tensorflow_skips_the_steps_the_rule_names(tmp_path: Path, tf_config: object, when: str) -> None:
    src = _tf_graph(tmp_path)
    spec = tmp_path / "s.yaml"
    spec.write_text(f"version: 1\nguard:\n  when: {when}\n")
    out = tmp_path / "out.pb"
    report = rewrite_file(src, spec, output=out)
    assert [s.inserted for s in report.sites] == [["guard"], ["guard"]]
    got, want = _run_tf(out, FEEDS), _momentum_reference(FEEDS, when)
    for step, (g, w) in enumerate(zip(got, want)):
        for name in w:
            np.testing.assert_allclose(g[name], w[name], rtol=1e-6, err_msg=f"step {step} {name}")
            assert np.isfinite(g[name]).all(), (step, name)
    for step in range(1, len(FEEDS)):  # a skipped variable and its slot keep their bits
        for name, grad in (("a", FEEDS[step][0]), ("b", FEEDS[step][1])):
            if not np.isfinite(grad).all():
                for key in (name, f"{name}_slot"):
                    assert got[step][key].tobytes() == got[step - 1][key].tobytes(), (step, key)


def _step(kind: str, g0: np.ndarray) -> Step:
    f = np.float32
    attrs = ({"alpha": 0.9, "beta": 0.999, "epsilon": 1e-6} if kind == "Adam"
             else {"alpha": 0.9, "beta": 1.0, "mode": "standard", "norm_coefficient": 0.0})
    states = 2 if kind == "Adam" else 1
    xs = (np.array([1.0, -2.0, 3.0], f), np.array([[0.5, 0.25]], f))
    gs = (g0, np.array([[0.1, -0.3]], f))
    return Step(f"{kind}_when", kind, attrs, np.array(0.1, f), np.array(3, np.int64), xs, gs,
                tuple((np.full(3, 0.01 * (k + 1), f), np.full((1, 2), 0.02 * (k + 1), f)) for k in range(states)))


@pytest.mark.parametrize("kind", ["Adam", "Momentum"])
@pytest.mark.parametrize("g0", [[NAN, 0.1, 0.2], [0.1, INF, 0.2], [0.0, -0.0, 0.0], [0.3, 0.1, -0.2]],
                         ids=["nan", "inf", "zero", "finite"])
def test_onnx_lowered_skips_a_nonfinite_tensor_alone(tmp_path: Path, kind: str, g0: list[float]) -> None:
    import onnxruntime as ort

    step = _step(kind, np.array(g0, np.float32))
    src = step.save(tmp_path)
    spec = tmp_path / "s.yaml"
    spec.write_text("version: 1\nlower: true\nguard:\n  when: zero_or_nonfinite\n")
    out = tmp_path / "out.onnx"
    rewrite_file(src, spec, output=out)
    onnx.checker.check_model(str(out), full_check=True)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, step.feed())))
    names = step.output_names()
    feed = step.feed()
    expected = dict(zip(names, step.expected()))
    skip0 = not np.isfinite(step.gs[0]).all() or not np.any(step.gs[0] != 0)
    for name in names:
        source = name.removesuffix("_new")
        if skip0 and source.endswith("0"):
            assert got[name].tobytes() == feed[source].tobytes(), name
        else:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, err_msg=name)


def test_the_rule_is_part_of_the_plan(tmp_path: Path) -> None:
    step = _step("Momentum", np.array([0.1, 0.2, 0.3], np.float32))
    src = step.save(tmp_path)
    for when in ("zero", "nonfinite"):
        (tmp_path / f"{when}.yaml").write_text(f"version: 1\nguard:\n  when: {when}\n")
    out = tmp_path / "out.onnx"
    rewrite_file(src, tmp_path / "nonfinite.yaml", output=out)
    assert not rewrite_file(out, tmp_path / "nonfinite.yaml", mode="check").changed
    with pytest.raises(Exception, match="different spec"):
        rewrite_file(out, tmp_path / "zero.yaml", mode="check")

