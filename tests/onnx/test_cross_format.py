"""One model, data, schedule and spec, rewritten in both formats, trains the same.

The two-task model of tests/onnx/models.py is also built in tf.compat.v1 graph mode (its
TF variables carry the ONNX tensor names, so one spec serves both formats), exported as a
GraphDef, rewritten by the optrewrite CLI and trained in TensorFlow (resource variables,
tests/tf/model.py's Session, the tf_config fixture for determinism). The ONNX step is
rewritten with ``--lower`` and trained in onnxruntime. Same initial values, batches, mask
schedule, and spec (guard all, three clip groups, global-norm clip).

Where the optimizers' formulas coincide (docs/semantics.md#onnx-training-ops):

- Momentum: TF ``accum = accum*m + g; var -= lr*accum`` is ONNX Momentum with alpha = m,
  beta = 1 (so the T = 0 special case changes nothing), norm_coefficient = 0; nesterov:
  TF ``var -= lr*g + lr*m*accum``, ONNX ``X -= R*(G + alpha*V')``;
- Adagrad: TF AdagradOptimizer ``accum += g*g; var -= lr*g/sqrt(accum)`` has no epsilon;
  ONNX Adagrad adds epsilon outside the sqrt, so with epsilon = 0 (and decay_factor = 0)
  they coincide; the accumulator starts at 0.1 in both, so nothing divides by zero;
- AdagradV2: TF's ResourceApplyAdagradV2 ``var -= lr*g/(sqrt(accum) + epsilon)`` is ONNX
  Adagrad with the same epsilon (tf.compat.v1 has no such optimizer; _AdagradV2 below is
  AdagradOptimizer updating through that op).

Compared after every step: TF with ONNX, and each with the numpy reference, as max|a - b|
<= 1e-5 * max|b| per tensor (measured: <= 1.1e-6). Both run float32 and compute the
gradients in different op orders (TF's autodiff vs the hand-written backward pass), so they
differ by float32 rounding that 20 fed-back steps carry; an elementwise rtol 1e-5 fails on
elements that come from cancellation (near zero: up to 1.6e-4 measured), as in
test_training.py. The unrewritten TF graph is off the reference by ~5x max|b|, so the
comparison tells rewritten from plain.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import tensorflow as tf

from ..tf import model as tf_model
from . import models
from .reference import ReferenceStep, State, make_batches, onnxruntime_step, train
from .test_training import VARIANTS, assert_trains_alike, check_can_fail, check_guard, rewrite

LR = 0.1
SEMANTICS = VARIANTS["guard+clip+global"]


class _AdagradV2(tf.compat.v1.train.AdagradOptimizer):
    """AdagradOptimizer updating resource variables with ResourceApplyAdagradV2:
    ``accum += g*g; var -= lr*g/(sqrt(accum) + epsilon)``."""

    def __init__(self, learning_rate: float, *, epsilon: float, **kwargs: Any) -> None:
        super().__init__(learning_rate, **kwargs)
        self._epsilon = epsilon

    def _resource_apply_dense(self, grad: Any, var: Any) -> Any:
        acc = self.get_slot(var, "accumulator")
        dtype = grad.dtype.base_dtype
        return tf.raw_ops.ResourceApplyAdagradV2(
            var=var.handle, accum=acc.handle, lr=tf.cast(self._learning_rate_tensor, dtype),
            epsilon=tf.constant(self._epsilon, dtype), grad=grad, use_locking=self._use_locking,
        )  # fmt: skip


@dataclass(frozen=True)
class Twin:
    """A TF optimizer and the ONNX optimizer with the same formula; ``slot`` maps each ONNX
    state block to the TF slot name."""

    tf_optimizer: Callable[[], tf.compat.v1.train.Optimizer]
    onnx_optimizer: models.Optimizer
    slot: dict[str, str]


_v1 = tf.compat.v1.train
_momentum = {"alpha": 0.9, "beta": 1.0, "norm_coefficient": 0.0}
_adagrad = {"decay_factor": 0.0, "norm_coefficient": 0.0}
TWINS: dict[str, Twin] = {
    "Momentum": Twin(
        lambda: _v1.MomentumOptimizer(LR, momentum=0.9),
        models.Optimizer("Momentum", models.attributes(mode="standard", **_momentum), LR, ("V",)),
        {"V": "Momentum"},
    ),
    "Nesterov": Twin(
        lambda: _v1.MomentumOptimizer(LR, momentum=0.9, use_nesterov=True),
        models.Optimizer("Momentum", models.attributes(mode="nesterov", **_momentum), LR, ("V",)),
        {"V": "Momentum"},
    ),
    "Adagrad": Twin(
        lambda: _v1.AdagradOptimizer(LR, initial_accumulator_value=0.1),
        models.Optimizer(
            "Adagrad", models.attributes(epsilon=0.0, **_adagrad), LR, ("H",), initial_state=0.1
        ),
        {"H": "Adagrad"},
    ),
    "AdagradV2": Twin(
        lambda: _AdagradV2(LR, epsilon=1e-3, initial_accumulator_value=0.1),
        models.Optimizer(
            "Adagrad", models.attributes(epsilon=1e-3, **_adagrad), LR, ("H",), initial_state=0.1
        ),
        {"H": "Adagrad"},
    ),
}


def tf_training_graph(twin: Twin) -> Any:
    """The two-task model (models.py) trained by ``twin.tf_optimizer``: a GraphDef with
    ``train`` and ``init``."""
    initial = models.initial_params(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        feeds = {
            name: tf.compat.v1.placeholder(tf.float32, shape, name=name)
            for name, shape in models.DATA_SHAPES.items()
        }
        v = {name: tf_model.variable(name, value, resource=True) for name, value in initial.items()}
        h = tf.tanh(tf.matmul(feeds["x"], v["shared/kernel"]) + v["shared/bias"])
        loss = sum(
            feeds[f"mask_{t}"]
            * tf.reduce_mean(tf.square(tf.matmul(h, v[f"task_{t}/kernel"]) - feeds[f"y_{t}"]))
            for t in ("a", "b")
        )
        global_step = tf.compat.v1.train.get_or_create_global_step()
        twin.tf_optimizer().minimize(loss, global_step=global_step, name="train")
        tf.compat.v1.global_variables_initializer()  # named "init"
    return graph.as_graph_def()


def train_tf(graph_def: Any, model: models.StepModel, twin: Twin, config: Any) -> list[State]:
    """Train in TensorFlow on make_batches' data; states under the ONNX names."""
    tf_names = {p: p for p in models.PARAMS}
    for p in models.PARAMS:
        for block, state in zip(model.optimizer.states, model.states[p]):
            tf_names[state] = f"{p}/{twin.slot[block]}"
    sess = tf_model.Session(graph_def, config, variables=sorted(tf_names.values()))
    try:
        snapshots = [sess.state()]
        for batch in make_batches(np.float32):
            sess.step({f"{name}:0": value for name, value in batch.items()})
            snapshots.append(sess.state())
    finally:
        sess.close()
    return [{onnx_name: s[tf_name] for onnx_name, tf_name in tf_names.items()} for s in snapshots]


@pytest.mark.parametrize("name", list(TWINS))
def test_tf_and_onnx_rewrites_train_alike(name: str, tf_config: Any, tmp_path: Path) -> None:
    twin = TWINS[name]
    model = models.training_step(twin.onnx_optimizer, np.float32)
    batches = make_batches(np.float32)
    reference = ReferenceStep(model, SEMANTICS)
    want = train(reference, model, batches)
    # without norm_coefficient a zero gradient changes nothing in Adagrad
    guard_matters = twin.onnx_optimizer.op != "Adagrad"
    check_can_fail(model, batches, SEMANTICS, reference.log, guard_matters=guard_matters)

    tf_graph = tf_model.rewrite(tf_training_graph(twin), SEMANTICS, tmp_path / "tf")
    tf_run = train_tf(tf_graph, model, twin, tf_config)
    (tmp_path / "onnx").mkdir()
    lowered = rewrite(model, SEMANTICS.to_yaml(), tmp_path / "onnx", "--lower")
    onnx_run = train(onnxruntime_step(lowered), model, batches)

    check_guard(tf_run, reference.log, model, SEMANTICS, "TensorFlow")
    check_guard(onnx_run, reference.log, model, SEMANTICS, "onnxruntime")
    assert_trains_alike(tf_run, want, scaled=True, who="TensorFlow vs reference")
    assert_trains_alike(onnx_run, want, scaled=True, who="onnxruntime vs reference")
    assert_trains_alike(onnx_run, tf_run, scaled=True, who="onnxruntime vs TensorFlow")
