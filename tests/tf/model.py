"""A small two-task model in tf.compat.v1 graph mode, its data, a trainer and the CLI call.

The model (all variables start from fixed numpy constants, so every graph starts equal)::

    emb            [6, 2]   looked up with tf.gather (sparse gradient) or one_hot @ emb (dense)
    shared/kernel  [5, 4]   h = tanh(concat(x, emb[ids]) @ kernel + bias)
    shared/bias    [4]
    task_a/kernel  [4, 1]   loss_a = sum(mask_a * (h @ kernel - y_a)^2) / batch
    task_b/kernel  [4, 1]   loss_b likewise; loss = loss_a + loss_b

The masks are fed per step (SCHEDULE): a step without task ``a`` gives ``task_a/kernel`` an
all-zero gradient, a step without any task gives every variable (the embedding rows too)
an all-zero gradient. Ids repeat within a batch, so a sparse gradient has duplicate indices.

Every graph is trained the same way: imported from its GraphDef into a fresh graph, ``init``
run once, then ``train`` once per batch, with a snapshot of every variable (slots,
global_step and Adam's beta powers included) after init and after each step.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from . import reference  # noqa: E402
from .reference import RewriteConfig  # noqa: E402

VOCAB, EMB, FEATURES, HIDDEN, BATCH = 6, 2, 3, 4, 4
STEPS = 20
VARIABLE_OPS = ("VariableV2", "VarHandleOp")

# Tasks present in each step ("" = none: every gradient is all zero).
SCHEDULE = ("a", "ab", "", "b", "ab", "a", "ab", "", "b", "ab",
            "a", "b", "ab", "", "a", "ab", "b", "", "ab", "a")  # fmt: skip


def _initial_values() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20240611)
    return {
        "emb": rng.normal(0.0, 0.9, (VOCAB, EMB)).astype(np.float32),
        "shared/kernel": rng.normal(0.0, 0.6, (FEATURES + EMB, HIDDEN)).astype(np.float32),
        "shared/bias": rng.normal(0.0, 0.1, (HIDDEN,)).astype(np.float32),
        "task_a/kernel": rng.normal(0.0, 0.5, (HIDDEN, 1)).astype(np.float32),
        "task_b/kernel": rng.normal(0.0, 0.5, (HIDDEN, 1)).astype(np.float32),
    }


INITIAL = _initial_values()

OptimizerFactory = Callable[[Any], tf.compat.v1.train.Optimizer]
_train = tf.compat.v1.train
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "GradientDescent": lambda gs: _train.GradientDescentOptimizer(0.1),
    "Momentum": lambda gs: _train.MomentumOptimizer(0.05, momentum=0.9),
    "Nesterov": lambda gs: _train.MomentumOptimizer(0.05, momentum=0.9, use_nesterov=True),
    "Adam": lambda gs: _train.AdamOptimizer(0.02),
    "Adagrad": lambda gs: _train.AdagradOptimizer(0.1, initial_accumulator_value=0.1),
    "AdagradDA": lambda gs: _train.AdagradDAOptimizer(
        0.1, gs, initial_gradient_squared_accumulator_value=0.1,
        l1_regularization_strength=0.001, l2_regularization_strength=0.001,
    ),
    "RMSProp": lambda gs: _train.RMSPropOptimizer(0.01, decay=0.9, momentum=0.5),
    "RMSPropCentered": lambda gs: _train.RMSPropOptimizer(
        0.01, decay=0.9, momentum=0.5, centered=True
    ),
    "Ftrl": lambda gs: _train.FtrlOptimizer(
        0.1, l1_regularization_strength=0.001, l2_regularization_strength=0.001
    ),
    "FtrlShrinkage": lambda gs: _train.FtrlOptimizer(
        0.1, l1_regularization_strength=0.001, l2_regularization_strength=0.001,
        l2_shrinkage_regularization_strength=0.01,
    ),
    "Adadelta": lambda gs: _train.AdadeltaOptimizer(1.0, rho=0.9, epsilon=1e-3),
    "ProximalAdagrad": lambda gs: _train.ProximalAdagradOptimizer(
        0.1, l1_regularization_strength=0.001, l2_regularization_strength=0.001
    ),
    "ProximalGradientDescent": lambda gs: _train.ProximalGradientDescentOptimizer(
        0.1, l1_regularization_strength=0.001, l2_regularization_strength=0.001
    ),
}  # fmt: skip


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Batch:
    x: np.ndarray
    ids: np.ndarray
    y_a: np.ndarray
    y_b: np.ndarray
    mask_a: np.ndarray
    mask_b: np.ndarray

    def feed(self) -> dict[str, np.ndarray]:
        return {
            "x:0": self.x, "ids:0": self.ids, "y_a:0": self.y_a, "y_b:0": self.y_b,
            "mask_a:0": self.mask_a, "mask_b:0": self.mask_b,
        }  # fmt: skip


def _mask(rng: np.random.Generator, present: bool, step: int) -> np.ndarray:
    if not present:
        return np.zeros(BATCH, np.float32)
    mask = rng.integers(0, 2, BATCH).astype(np.float32)
    mask[step % BATCH] = 1.0
    return mask


def make_batches(schedule: Sequence[str] = SCHEDULE, seed: int = 7) -> list[Batch]:
    """One batch per schedule entry; ids repeat in every batch (ids[1] == ids[0])."""
    rng = np.random.default_rng(seed)
    batches = []
    for step, tasks in enumerate(schedule):
        ids = rng.integers(0, VOCAB, BATCH).astype(np.int32)
        ids[1] = ids[0]
        batches.append(
            Batch(
                x=rng.normal(0.0, 1.0, (BATCH, FEATURES)).astype(np.float32),
                ids=ids,
                y_a=rng.normal(0.0, 1.0, BATCH).astype(np.float32),
                y_b=rng.normal(0.0, 1.0, BATCH).astype(np.float32),
                mask_a=_mask(rng, "a" in tasks, step),
                mask_b=_mask(rng, "b" in tasks, step),
            )
        )
    return batches


# --------------------------------------------------------------------------- graphs


@dataclass(frozen=True)
class Built:
    """An exported training graph and the names a trainer needs."""

    graph_def: Any
    grads: dict[str, str]  # variable -> gradient tensor (the values of a sparse gradient)
    sparse: frozenset[str]  # variables whose gradient is an IndexedSlices


def variable(name: str, value: np.ndarray, *, resource: bool) -> Any:
    return tf.compat.v1.get_variable(
        name, shape=value.shape, dtype=tf.as_dtype(value.dtype),
        initializer=tf.compat.v1.constant_initializer(value), use_resource=resource,
    )  # fmt: skip


def _two_task_loss(*, resource: bool, sparse: bool) -> tf.Tensor:
    x = tf.compat.v1.placeholder(tf.float32, [BATCH, FEATURES], name="x")
    ids = tf.compat.v1.placeholder(tf.int32, [BATCH], name="ids")
    y_a = tf.compat.v1.placeholder(tf.float32, [BATCH], name="y_a")
    y_b = tf.compat.v1.placeholder(tf.float32, [BATCH], name="y_b")
    mask_a = tf.compat.v1.placeholder(tf.float32, [BATCH], name="mask_a")
    mask_b = tf.compat.v1.placeholder(tf.float32, [BATCH], name="mask_b")
    v = {name: variable(name, value, resource=resource) for name, value in INITIAL.items()}
    if sparse:
        looked_up = tf.nn.embedding_lookup(v["emb"], ids)
    else:
        looked_up = tf.matmul(tf.one_hot(ids, VOCAB), v["emb"])
    features = tf.concat([x, looked_up], axis=1)
    h = tf.tanh(tf.matmul(features, v["shared/kernel"]) + v["shared/bias"])

    def task_loss(kernel: Any, y: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        err = tf.squeeze(tf.matmul(h, kernel), axis=1) - y
        return tf.reduce_sum(mask * err * err) / BATCH

    return task_loss(v["task_a/kernel"], y_a, mask_a) + task_loss(v["task_b/kernel"], y_b, mask_b)


def _export(graph: tf.Graph, grads_and_vars: reference.GradsAndVars) -> Built:
    grads: dict[str, str] = {}
    sparse: set[str] = set()
    for grad, var in grads_and_vars:
        if grad is None:
            continue
        name = reference.var_name(var)
        if isinstance(grad, tf.IndexedSlices):
            sparse.add(name)
            grad = grad.values
        grads[name] = grad.name
    return Built(graph.as_graph_def(), grads, frozenset(sparse))


def build(
    optimizer: str, *, resource: bool, sparse: bool, config: RewriteConfig | None = None
) -> Built:
    """The two-task model trained by ``optimizer``: plain, or the reference of ``config``."""
    graph = tf.Graph()
    with graph.as_default():
        loss = _two_task_loss(resource=resource, sparse=sparse)
        global_step = tf.compat.v1.train.get_or_create_global_step()
        opt = OPTIMIZERS[optimizer](global_step)
        grads_and_vars = opt.compute_gradients(loss)
        if config is None:
            opt.apply_gradients(grads_and_vars, global_step=global_step, name="train")
        else:
            reference.apply_reference(opt, grads_and_vars, config, global_step=global_step)
        tf.compat.v1.global_variables_initializer()  # named "init"
    return _export(graph, grads_and_vars)


# --------------------------------------------------------------------------- training


State = dict[str, np.ndarray]


@dataclass(frozen=True)
class Run:
    """states[0]: after init; states[t + 1]: after step t. zero_grad[t]: the variables whose
    gradient was all zero in step t, grad_sq[t]: each gradient's sum of squares (a sparse
    one's values, duplicates not summed), both as fetched in the same run."""

    states: list[State]
    zero_grad: list[frozenset[str]]
    grad_sq: list[dict[str, float]]


def variable_names(graph_def: Any) -> list[str]:
    return sorted(n.name for n in graph_def.node if n.op in VARIABLE_OPS)


def _readers(graph: tf.Graph, names: Sequence[str]) -> dict[str, tf.Tensor]:
    out = {}
    for name in names:
        op = graph.get_operation_by_name(name)
        if op.type == "VarHandleOp":
            dtype = op.get_attr("dtype")
            out[name] = tf.raw_ops.ReadVariableOp(resource=op.outputs[0], dtype=dtype)
        else:
            out[name] = tf.identity(op.outputs[0])
    return out


class Session:
    """A session over an imported GraphDef; ``init`` has run once."""

    def __init__(
        self, graph_def: Any, config: Any, *, variables: Sequence[str] | None = None
    ) -> None:
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
            self.reads = _readers(self.graph, variables or variable_names(graph_def))
        self.train_op = self.graph.get_operation_by_name("train")
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        self.session.run(self.graph.get_operation_by_name("init"))

    def state(self) -> State:
        return self.session.run(self.reads)

    def step(
        self, feed: Mapping[str, Any], fetch: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Run ``train`` once; return the tensors named in ``fetch``, from the same run."""
        tensors = {k: self.graph.get_tensor_by_name(v) for k, v in (fetch or {}).items()}
        _, fetched = self.session.run([self.train_op, tensors], feed_dict=dict(feed))
        return fetched

    def close(self) -> None:
        self.session.close()


def _sum_of_squares(value: np.ndarray) -> float:
    return float(np.sum(np.square(value, dtype=np.float64)))


def train(
    graph_def: Any,
    batches: Sequence[Batch],
    *,
    config: Any,
    grads: Mapping[str, str],
    variables: Sequence[str] | None = None,
) -> Run:
    """Train ``graph_def`` on ``batches``, snapshotting every variable after each step."""
    sess = Session(graph_def, config, variables=variables)
    try:
        states = [sess.state()]
        zero_grad, grad_sq = [], []
        for batch in batches:
            fetched = sess.step(batch.feed(), grads)
            zero_grad.append(frozenset(v for v, g in fetched.items() if not np.any(g)))
            grad_sq.append({v: _sum_of_squares(g) for v, g in fetched.items()})
            states.append(sess.state())
    finally:
        sess.close()
    return Run(states, zero_grad, grad_sq)


# --------------------------------------------------------------------------- the rewriter


def rewrite(graph_def: Any, config: RewriteConfig, workdir: Path) -> Any:
    """Run the optrewrite CLI on ``graph_def`` with ``config`` as its spec."""
    from optrewrite.cli import main  # the thing under test; imported late on purpose

    workdir.mkdir(parents=True, exist_ok=True)
    source, spec, target = workdir / "plain.pb", workdir / "spec.yaml", workdir / "rewritten.pb"
    source.write_bytes(graph_def.SerializeToString(deterministic=True))
    spec.write_text(config.to_yaml())
    rc = main([str(source), "--spec", str(spec), "-o", str(target)])
    assert rc == 0, f"optrewrite exited with {rc} on spec:\n{config.to_yaml()}"
    out = tf.compat.v1.GraphDef()
    out.ParseFromString(target.read_bytes())
    return out
