"""The original classes' own test numbers (docs/semantics.md#test-numbers), reproduced two ways.

``reference``: the graph is built with tests/tf/reference.py wrapping the optimizer.
``optrewrite``: the plain graph (the optimizer alone) is exported, rewritten by the CLI
with the same spec, and run.

MultitaskOptimizerWrapper's and VariableClippingOptimizer's own tests feed gradients
directly to ``apply_gradients`` (constants or placeholders), and so do these. Numbers as in
those tests (tensorflow/contrib/opt/python/training/multitask_optimizer_wrapper_test.py and
variable_clipping_optimizer_test.py, r1.14).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import tensorflow as tf

from . import model
from .reference import (
    ClipGroup,
    GlobalNormClip,
    RewriteConfig,
    Selection,
    apply_reference,
    clip_by_global_norm,
)

HOW = pytest.mark.parametrize("how", ["reference", "optrewrite"])
KIND = pytest.mark.parametrize("resource", [False, True], ids=["ref", "resource"])
DTYPE = pytest.mark.parametrize(
    "dtype", [np.float16, np.float32, np.float64], ids=["f16", "f32", "f64"]
)

Builder = Callable[[RewriteConfig | None], Any]


def _tolerance(dtype: Any) -> dict[str, float]:
    """assertAllCloseAccordingToType's tolerances."""
    return {"rtol": 1e-3, "atol": 1e-3} if dtype == np.float16 else {"rtol": 1e-6, "atol": 1e-6}


def _graph(build: Builder, config: RewriteConfig, how: str, workdir: Path) -> Any:
    """The graph to run: the reference of ``config``, or the plain graph rewritten with it."""
    if how == "reference":
        return build(config)
    return model.rewrite(build(None), config, workdir)


def _finish(
    graph: tf.Graph, opt: Any, grads_and_vars: list[tuple[Any, Any]], config: RewriteConfig | None
) -> Any:
    with graph.as_default():
        if config is None:
            opt.apply_gradients(grads_and_vars, name="train")
        else:
            apply_reference(opt, grads_and_vars, config)
        tf.compat.v1.global_variables_initializer()
    return graph.as_graph_def()


def _var(name: str, value: Any, dtype: Any, resource: bool) -> Any:
    return model.variable(name, np.array(value, dtype=dtype), resource=resource)


# --------------------------------------------------------------------------- guard

G0, G1, ZERO = [0.1, 0.1], [0.01, 0.01], [0.0, 0.0]
GUARD = RewriteConfig(guard=Selection())

# (fed g0, fed g1) -> expected var0, var1 and their momentum slots after the step
MOMENTUM_STEPS = [
    ((G0, G1), {"var0": [0.8, 1.8], "var1": [2.98, 3.98],
                "var0/Momentum": [0.1, 0.1], "var1/Momentum": [0.01, 0.01]}),
    ((ZERO, G1), {"var0": [0.8, 1.8], "var1": [2.942, 3.942],
                  "var0/Momentum": [0.1, 0.1], "var1/Momentum": [0.019, 0.019]}),
    ((ZERO, ZERO), {"var0": [0.8, 1.8], "var1": [2.942, 3.942],
                    "var0/Momentum": [0.1, 0.1], "var1/Momentum": [0.019, 0.019]}),
]  # fmt: skip


def _momentum_graph(resource: bool) -> Builder:
    """var0=[1,2], var1=[3,4]; gradients fed through placeholders g0, g1; Momentum(2.0, 0.9)."""

    def build(config: RewriteConfig | None) -> Any:
        graph = tf.Graph()
        with graph.as_default():
            var0 = _var("var0", [1.0, 2.0], np.float32, resource)
            var1 = _var("var1", [3.0, 4.0], np.float32, resource)
            g0 = tf.compat.v1.placeholder(tf.float32, [2], name="g0")
            g1 = tf.compat.v1.placeholder(tf.float32, [2], name="g1")
            opt = tf.compat.v1.train.MomentumOptimizer(learning_rate=2.0, momentum=0.9)
        return _finish(graph, opt, [(g0, var0), (g1, var1)], config)

    return build


@HOW
@KIND
def test_guard_keeps_momentum_of_all_zero_gradients(
    how: str, resource: bool, tf_config: Any, tmp_path: Path
) -> None:
    graph_def = _graph(_momentum_graph(resource), GUARD, how, tmp_path)
    sess = model.Session(graph_def, tf_config, variables=sorted(MOMENTUM_STEPS[0][1]))
    for step, ((g0, g1), expected) in enumerate(MOMENTUM_STEPS):
        sess.step({"g0:0": g0, "g1:0": g1})
        state = sess.state()
        for name, value in expected.items():
            np.testing.assert_allclose(
                state[name], value, rtol=1e-6, err_msg=f"step {step}: {name}"
            )
    sess.close()


@HOW
@KIND
def test_guard_counts_negative_zero_as_zero_and_nan_as_nonzero(
    how: str, resource: bool, tf_config: Any, tmp_path: Path
) -> None:
    graph_def = _graph(_momentum_graph(resource), GUARD, how, tmp_path)
    sess = model.Session(graph_def, tf_config, variables=["var0", "var0/Momentum"])
    sess.step({"g0:0": [-0.0, -0.0], "g1:0": G1})
    state = sess.state()
    np.testing.assert_array_equal(state["var0"], [1.0, 2.0])
    np.testing.assert_array_equal(state["var0/Momentum"], [0.0, 0.0])
    sess.step({"g0:0": [np.nan, 0.0], "g1:0": ZERO})
    state = sess.state()
    sess.close()
    np.testing.assert_array_equal(state["var0/Momentum"], [np.nan, 0.0])
    np.testing.assert_array_equal(state["var0"], [np.nan, 2.0])


# --------------------------------------------------------------------------- global norm

GLOBAL_GRADS = [[10.0, 15.0], [0.0, 5.0], [0.0, 0.0], None]
GLOBAL_NORM = float(np.sqrt(350.0))


def _global_norm_graph(resource: bool) -> Builder:
    """var0..var3 = [1,2], [3,4], [3,4], [3,4]; the gradients of clip_gradients_by_global_norm's
    test as constants; SGD(1.0).

    With a learning rate of 1 each variable moves by exactly its (clipped) gradient.
    """

    def build(config: RewriteConfig | None) -> Any:
        graph = tf.Graph()
        with graph.as_default():
            starts = [[1.0, 2.0], [3.0, 4.0], [3.0, 4.0], [3.0, 4.0]]
            variables = [_var(f"var{i}", s, np.float32, resource) for i, s in enumerate(starts)]
            grads = [None if g is None else tf.constant(g, tf.float32) for g in GLOBAL_GRADS]
            opt = tf.compat.v1.train.GradientDescentOptimizer(1.0)
        return _finish(graph, opt, list(zip(grads, variables)), config)

    return build


def test_reference_global_norm_matches_original(tf_config: Any) -> None:
    graph = tf.Graph()
    with graph.as_default():
        variables = [_var(f"var{i}", [0.0, 0.0], np.float32, False) for i in range(4)]
        grads = [None if g is None else tf.constant(g, tf.float32) for g in GLOBAL_GRADS]
        opt = tf.compat.v1.train.GradientDescentOptimizer(1.0)
        clipped, norm = clip_by_global_norm(opt, list(zip(grads, variables)), GlobalNormClip(1.0))
        assert clipped[3][0] is None
        with tf.compat.v1.Session(graph=graph, config=tf_config) as sess:
            values, norm_value = sess.run([[g for g, _ in clipped[:3]], norm])
    np.testing.assert_allclose(norm_value, GLOBAL_NORM, rtol=1e-6)
    np.testing.assert_allclose(values[0], np.array([10.0, 15.0]) / GLOBAL_NORM, rtol=1e-6)
    np.testing.assert_allclose(values[1], np.array([0.0, 5.0]) / GLOBAL_NORM, rtol=1e-6)
    np.testing.assert_array_equal(values[2], [0.0, 0.0])


@HOW
@KIND
def test_global_norm_clip_matches_original(
    how: str, resource: bool, tf_config: Any, tmp_path: Path
) -> None:
    config = RewriteConfig(global_norm_clip=GlobalNormClip(clip_norm=1.0))
    graph_def = _graph(_global_norm_graph(resource), config, how, tmp_path)
    sess = model.Session(graph_def, tf_config, variables=["var0", "var1", "var2", "var3"])
    sess.step({})
    state = sess.state()
    sess.close()
    var0 = [1.0 - 10.0 / GLOBAL_NORM, 2.0 - 15.0 / GLOBAL_NORM]
    np.testing.assert_allclose(state["var0"], var0, rtol=1e-6)
    np.testing.assert_allclose(state["var1"], [3.0, 4.0 - 5.0 / GLOBAL_NORM], rtol=1e-6)
    np.testing.assert_array_equal(state["var2"], [3.0, 4.0])  # all-zero gradient
    np.testing.assert_array_equal(state["var3"], [3.0, 4.0])  # no gradient


# --------------------------------------------------------------------------- clip


def _clipped(row: Any, max_norm: float = 2.0) -> np.ndarray:
    row = np.asarray(row, dtype=np.float64)
    return max_norm * row / np.linalg.norm(row)


def _dense_clip_graph(resource: bool, dtype: Any) -> Builder:
    """var0=[[0,1],[2,3]] (clipped along dim 1), var1=[4,5] (not clipped); SGD(3.0)."""

    def build(config: RewriteConfig | None) -> Any:
        graph = tf.Graph()
        with graph.as_default():
            var0 = _var("var0", [[0.0, 1.0], [2.0, 3.0]], dtype, resource)
            var1 = _var("var1", [4.0, 5.0], dtype, resource)
            grads0 = tf.constant([[0.1, 0.1], [0.1, 0.1]], dtype=dtype)
            grads1 = tf.constant([0.01, 0.01], dtype=dtype)
            opt = tf.compat.v1.train.GradientDescentOptimizer(3.0)
        return _finish(graph, opt, [(grads0, var0), (grads1, var1)], config)

    return build


@HOW
@KIND
@DTYPE
def test_dense_clip_matches_original(
    how: str, resource: bool, dtype: Any, tf_config: Any, tmp_path: Path
) -> None:
    config = RewriteConfig(clip=(ClipGroup(Selection(("var0",)), max_norm=2.0, dims=(1,)),))
    graph_def = _graph(_dense_clip_graph(resource, dtype), config, how, tmp_path)
    sess = model.Session(graph_def, tf_config, variables=["var0", "var1"])
    sess.step({})
    state = sess.state()
    sess.close()
    tol = _tolerance(dtype)
    np.testing.assert_allclose(state["var0"][0], [-0.3, 0.7], **tol)  # norm < 2: not clipped
    np.testing.assert_allclose(state["var0"][1], _clipped([1.7, 2.7]), **tol)
    np.testing.assert_allclose(state["var1"], [3.97, 4.97], **tol)  # not selected


def _sparse_clip_graph(resource: bool, dtype: Any, indices: list[int]) -> Builder:
    """var0=[[0,1],[2,3],[4,5]], var1=[[0,1],[0,3],[0,5]]; both get 0.1-rows at ``indices``."""

    def build(config: RewriteConfig | None) -> Any:
        graph = tf.Graph()
        with graph.as_default():
            var0 = _var("var0", [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], dtype, resource)
            var1 = _var("var1", [[0.0, 1.0], [0.0, 3.0], [0.0, 5.0]], dtype, resource)
            values = tf.constant(np.full((len(indices), 2), 0.1), dtype=dtype)
            grads = tf.IndexedSlices(values, tf.constant(indices), tf.constant([3, 2]))
            opt = tf.compat.v1.train.GradientDescentOptimizer(3.0)
        return _finish(graph, opt, [(grads, var0), (grads, var1)], config)

    return build


SPARSE_CLIP = RewriteConfig(
    clip=(
        ClipGroup(Selection(("var0",)), max_norm=2.0, dims=(1,)),
        ClipGroup(Selection(("var1",)), max_norm=2.0, dims=(0,)),  # dense fallback
    )
)


@HOW
@KIND
@DTYPE
def test_sparse_clip_matches_original(
    how: str, resource: bool, dtype: Any, tf_config: Any, tmp_path: Path
) -> None:
    graph_def = _graph(_sparse_clip_graph(resource, dtype, [0, 2]), SPARSE_CLIP, how, tmp_path)
    sess = model.Session(graph_def, tf_config, variables=["var0", "var1"])
    sess.step({})
    state = sess.state()
    sess.close()
    tol = _tolerance(dtype)
    np.testing.assert_allclose(state["var0"][0], [-0.3, 0.7], **tol)
    np.testing.assert_array_equal(state["var0"][1], [2.0, 3.0])  # untouched: not clipped
    np.testing.assert_allclose(state["var0"][2], _clipped([3.7, 4.7]), **tol)
    np.testing.assert_allclose(state["var1"][:, 0], [-0.3, 0.0, -0.3], **tol)
    np.testing.assert_allclose(state["var1"][:, 1], _clipped([0.7, 3.0, 4.7]), **tol)


@HOW
@KIND
@DTYPE
def test_sparse_clip_clips_a_repeated_row_once(
    how: str, resource: bool, dtype: Any, tf_config: Any, tmp_path: Path
) -> None:
    """Indices [2, 0, 2]: SGD subtracts row 2's gradient twice, the clip applies once.

    VariableClippingOptimizer subtracted the clip delta once per occurrence: 2*clipped - row.
    """
    graph_def = _graph(_sparse_clip_graph(resource, dtype, [2, 0, 2]), SPARSE_CLIP, how, tmp_path)
    sess = model.Session(graph_def, tf_config, variables=["var0", "var1"])
    sess.step({})
    state = sess.state()
    sess.close()
    tol = _tolerance(dtype)
    np.testing.assert_allclose(state["var0"][0], [-0.3, 0.7], **tol)
    np.testing.assert_array_equal(state["var0"][1], [2.0, 3.0])
    np.testing.assert_allclose(state["var0"][2], _clipped([3.4, 4.4]), **tol)
