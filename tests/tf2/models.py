"""Small two-task training steps exported as TensorFlow 2 SavedModels.

Every model here has the same shape: an embedding ``net/emb/embeddings`` (VOCAB x EMB_DIM,
looked up at BATCH x SEQ ids, so rows repeat within a batch), a shared tanh layer
``net/shared`` and two linear heads ``net/head_a`` and ``net/head_b``. The loss is
``loss_weights[0] * mse(head_a) + loss_weights[1] * mse(head_b)``; a zero loss weight masks a
head out, and its gradient is then exactly zero (some elements -0.0). Static shapes, no ReLU.

A built model is a ``tf.Module`` with

- ``net``: the model, saved as the attribute named like the model, so that the SavedModel
  object-graph path of a Keras 3 variable equals its ``variable.path`` (``net/head_a/kernel``);
- ``opt``: the optimizer (built before saving, so its slots are in the SavedModel);
- ``train``: a ``tf.function`` with a fixed input signature (ids, targets, loss_weights)
  that does one training step and returns ``{"loss": ...}``, exported as the ``train``
  signature;
- ``infer``: ``tf.function`` (ids) -> ``{"a": ..., "b": ...}``, the ``infer`` signature;
- ``state``: ``tf.function`` () -> a list with the value of every model variable and every
  optimizer variable, in the order of :attr:`Built.state_names`. It is how the tests read the
  variables and slots of a loaded (rewritten) SavedModel: tf.compat.v1 slot variables are in
  the SavedModel but not reachable through attributes of the loaded object.

Three kinds of step:

- :func:`build_keras`: a Keras 3 model and a Keras 3 optimizer (:data:`KERAS_CASES`, one
  per built-in optimizer class and its main variants);
- :func:`build_v1`: a ``tf.Module`` model of resource variables and a ``tf.compat.v1.train``
  optimizer (:data:`V1_CASES`), whose updates are fused ``ResourceApply*`` /
  ``ResourceSparseApply*`` ops (or the decomposed sparse Adam / GradientDescent updates)
  inside the ``train`` FunctionDef;
- :func:`build_loss_scaled`: a loss-scaled step (:data:`LOSS_SCALED_CASES`): Keras 3
  ``LossScaleOptimizer`` around Adam, and tf.compat.v1
  ``MixedPrecisionLossScaleOptimizer`` around AdamOptimizer; their updates sit in the
  branch functions of an ``If`` that skips non-finite steps.

:meth:`Built.loss_and_grads` and :meth:`Built.apply` are the two halves of ``train``; the
construction-time reference (tests/tf2/reference.py) calls them with its own code in between.

:class:`SavedModels` builds and saves each case once per test session (a module-level cache,
so that every test module shares the saved models and their initial values).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

BATCH = 4
SEQ = 2
VOCAB = 10
EMB_DIM = 3
HIDDEN = 5
SEED = 1234

SIGNATURE = (
    tf.TensorSpec([BATCH, SEQ], tf.int32, name="ids"),
    tf.TensorSpec([BATCH, 2], tf.float32, name="targets"),
    tf.TensorSpec([2], tf.float32, name="loss_weights"),
)

State = dict[str, np.ndarray]


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Step:
    ids: np.ndarray
    targets: np.ndarray
    loss_weights: np.ndarray

    def feed(self) -> dict[str, tf.Tensor]:
        """Keyword arguments of the ``train`` signature."""
        return {
            "ids": tf.constant(self.ids),
            "targets": tf.constant(self.targets),
            "loss_weights": tf.constant(self.loss_weights),
        }

    def args(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        f = self.feed()
        return f["ids"], f["targets"], f["loss_weights"]


# Loss weights of a masked schedule, one per step: head_b masked, head_a masked, both
# trained, both masked (every gradient all zero), unequal weights.
MASKED_WEIGHTS = (
    (1.0, 1.0),
    (1.0, 0.0),
    (0.0, 1.0),
    (1.0, 1.0),
    (0.0, 1.0),
    (1.0, 0.0),
    (0.0, 0.0),
    (0.5, 2.0),
    (1.0, 0.0),
    (1.0, 0.0),
    (0.0, 1.0),
    (1.0, 1.0),
    (0.0, 1.0),
    (2.0, 0.0),
    (1.0, 1.0),
    (0.0, 1.0),
)


def schedule(steps: int = 16, *, warmup: int = 0, seed: int = 7) -> list[Step]:
    """A fixed, seeded schedule: ``warmup`` steps where nothing is masked (both loss
    weights in [0.5, 1.5], so no gradient is zero), then ``steps`` steps with the loss
    weights of MASKED_WEIGHTS (cycled)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(warmup + steps):
        ids = rng.integers(0, VOCAB, size=(BATCH, SEQ)).astype(np.int32)
        targets = rng.normal(0.0, 1.0, size=(BATCH, 2)).astype(np.float32)
        if t < warmup:
            weights = rng.uniform(0.5, 1.5, size=2).astype(np.float32)
        else:
            weights = np.asarray(MASKED_WEIGHTS[(t - warmup) % len(MASKED_WEIGHTS)], np.float32)
        out.append(Step(ids, targets, weights))
    return out


def task_loss(pred_a: Any, pred_b: Any, targets: Any, loss_weights: Any) -> tf.Tensor:
    loss_a = tf.reduce_mean(tf.square(pred_a[:, 0] - targets[:, 0]))
    loss_b = tf.reduce_mean(tf.square(pred_b[:, 0] - targets[:, 1]))
    return loss_weights[0] * loss_a + loss_weights[1] * loss_b


# --------------------------------------------------------------------------- the built step


@dataclass
class Built:
    """One model with its optimizer, ready to save or to drive from the reference.

    ``variables``: the trainable variables' paths (the spec's names), in gradient order.
    ``state_names``: names of the values ``module.state()`` returns: the model variables'
    paths, then the optimizer's variables (Keras: ``opt<k>/<name>``; tf.compat.v1:
    ``<var path>/<slot>`` and ``<opt>/<non-slot name>``).
    ``slots``: for each trainable variable, the state names of its optimizer slots.
    ``tf_vars``: the tf.Variable behind every state name.
    ``inner_iterations``/``scale_names``: loss-scaled steps only.
    """

    case: str
    module: tf.Module
    variables: list[str]
    state_names: list[str]
    slots: dict[str, list[str]]
    tf_vars: dict[str, tf.Variable]
    loss_and_grads: Callable[[Any, Any, Any], tuple[Any, list[Any]]]
    apply: Callable[[list[Any]], Any]
    shared_state: list[str] = field(default_factory=list)
    scale_names: list[str] = field(default_factory=list)

    def snapshot(self) -> State:
        return {n: self.tf_vars[n].numpy().copy() for n in self.state_names}

    def assign(self, state: State) -> None:
        for n in self.state_names:
            self.tf_vars[n].assign(state[n])


def read_state(loaded: Any, names: list[str]) -> State:
    """The values of a loaded SavedModel's variables and slots, by state name."""
    values = loaded.state()
    assert len(values) == len(names), (len(values), len(names))
    return {n: np.asarray(v).copy() for n, v in zip(names, values)}


def _attach_functions(built: Built) -> None:
    module = built.module
    names = list(built.state_names)
    variables = [built.tf_vars[n] for n in names]

    @tf.function(input_signature=SIGNATURE)
    def train(ids: Any, targets: Any, loss_weights: Any) -> dict[str, tf.Tensor]:
        loss, grads = built.loss_and_grads(ids, targets, loss_weights)
        built.apply(grads)
        return {"loss": loss}

    @tf.function(input_signature=[])
    def state() -> list[tf.Tensor]:
        return [v.read_value() for v in variables]

    module.train = train
    module.state = state


def save(built: Built, export_dir: Path) -> Path:
    """Save ``built.module`` as a SavedModel with ``train`` and ``infer`` signatures."""
    module = built.module
    tf.saved_model.save(
        module,
        str(export_dir),
        signatures={
            "train": module.train.get_concrete_function(),
            "infer": module.infer.get_concrete_function(),
        },
    )
    return export_dir


# --------------------------------------------------------------------------- Keras 3 models


def _keras() -> Any:
    import keras

    return keras


def _keras_net() -> Any:
    keras = _keras()

    class Net(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="net")
            init = keras.initializers
            self.emb = keras.layers.Embedding(
                VOCAB, EMB_DIM, name="emb",
                embeddings_initializer=init.RandomNormal(stddev=0.6, seed=SEED),
            )  # fmt: skip
            self.shared = keras.layers.Dense(
                HIDDEN, activation="tanh", name="shared",
                kernel_initializer=init.GlorotUniform(seed=SEED + 1),
                bias_initializer=init.RandomNormal(stddev=0.1, seed=SEED + 2),
            )  # fmt: skip
            self.head_a = keras.layers.Dense(
                1, name="head_a", kernel_initializer=init.GlorotUniform(seed=SEED + 3),
                bias_initializer=init.Constant(0.1),
            )  # fmt: skip
            self.head_b = keras.layers.Dense(
                1, name="head_b", kernel_initializer=init.GlorotUniform(seed=SEED + 4),
                bias_initializer=init.Constant(-0.1),
            )  # fmt: skip

        def call(self, ids: Any) -> tuple[Any, Any]:
            e = tf.reshape(self.emb(ids), [BATCH, SEQ * EMB_DIM])
            h = self.shared(e)
            return self.head_a(h), self.head_b(h)

    net = Net()
    net(tf.zeros([BATCH, SEQ], tf.int32))
    return net


def _keras_optimizer_cases() -> dict[str, Callable[[], Any]]:
    keras = _keras()
    o = keras.optimizers

    def multi() -> Any:
        return o.MultiOptimizer(
            o.OptimizerMap(o.SGD(0.1, momentum=0.9), {"net/emb/.*": o.Adam(0.05)})
        )

    return {
        "SGD": lambda: o.SGD(0.1),
        "SGD-momentum": lambda: o.SGD(0.1, momentum=0.9),
        "SGD-nesterov": lambda: o.SGD(0.1, momentum=0.9, nesterov=True),
        "Adam": lambda: o.Adam(0.05),
        "Adam-amsgrad": lambda: o.Adam(0.05, amsgrad=True),
        "AdamW": lambda: o.AdamW(0.05, weight_decay=0.1),
        "Adamax": lambda: o.Adamax(0.05),
        "Nadam": lambda: o.Nadam(0.05),
        "Adagrad": lambda: o.Adagrad(0.2),
        "Adadelta": lambda: o.Adadelta(5.0),
        "RMSprop": lambda: o.RMSprop(0.02),
        "RMSprop-momentum": lambda: o.RMSprop(0.02, momentum=0.9),
        "RMSprop-centered": lambda: o.RMSprop(0.02, centered=True),
        "Ftrl": lambda: o.Ftrl(0.2, l1_regularization_strength=0.01),
        "Lion": lambda: o.Lion(0.01),
        "Lamb": lambda: o.Lamb(0.05),
        "Adafactor": lambda: o.Adafactor(0.05),
        "Muon": lambda: o.Muon(0.05),
        "ScheduleFreeAdamW": lambda: o.ScheduleFreeAdamW(0.05),
        "MultiOptimizer": multi,
    }


KERAS_CASES = tuple(_keras_optimizer_cases())

# Classes of keras.optimizers that are no optimizer of their own: the base class, and the
# loss-scaling wrapper, which tests/tf2/test_loss_scaled.py covers.
KERAS_NOT_A_CASE = {"Optimizer", "LossScaleOptimizer"}


def keras_case_classes() -> dict[str, str]:
    """For each KERAS_CASES name, the keras.optimizers class it instantiates."""
    return {name: type(make()).__name__ for name, make in _keras_optimizer_cases().items()}


def _keras_optimizers(opt: Any) -> list[Any]:
    """``opt`` and the optimizers it delegates to (LossScaleOptimizer, MultiOptimizer)."""
    out = [opt]
    inner = getattr(opt, "inner_optimizer", None)
    if inner is not None:
        out += _keras_optimizers(inner)
    if type(opt).__name__ == "MultiOptimizer":
        for sub in opt.optimizers:
            out += _keras_optimizers(sub)
    return out


def _keras_slots(opt: Any, trainable: list[Any], paths: list[str], names: dict[int, str]
                 ) -> dict[str, list[str]]:
    """Each trainable variable's slots, from the optimizers' own bookkeeping: every list
    attribute of an optimizer that holds one optimizer variable (or None) per variable the
    optimizer was built for (``_momentums``, ``_velocities``, Adafactor's ``_r``/``_c``/``_v``,
    …), indexed like ``_get_variable_index``."""
    slots: dict[str, list[str]] = {p: [] for p in paths}
    for o in _keras_optimizers(opt):
        built_for = list(getattr(o, "_trainable_variables", []))
        if not built_for:
            continue
        own = {id(v) for v in o.variables}
        for attr, value in sorted(vars(o).items()):
            if not isinstance(value, (list, tuple)) or len(value) != len(built_for):
                continue
            if not all(x is None or id(x) in own for x in value):
                continue
            if all(x is None for x in value):
                continue
            for var, slot in zip(built_for, value):
                if slot is None:
                    continue
                i = o._get_variable_index(var)  # noqa: SLF001 - the optimizer's own index
                assert built_for[i] is var, (attr, var.path)
                owner = next(p for p, t in zip(paths, trainable) if t is var)
                slots[owner].append(names[id(slot)])
    seen = [n for s in slots.values() for n in s]
    assert len(seen) == len(set(seen)), seen
    return slots


def _keras_built(case: str, opt: Any, *, loss_scaled: bool = False) -> Built:
    net = _keras_net()
    trainable = list(net.trainable_variables)
    opt.build(trainable)
    paths = [v.path for v in trainable]
    assert paths == [
        "net/emb/embeddings", "net/shared/kernel", "net/shared/bias",
        "net/head_a/kernel", "net/head_a/bias", "net/head_b/kernel", "net/head_b/bias",
    ], paths  # fmt: skip

    tf_vars: dict[str, tf.Variable] = {p: v.value for p, v in zip(paths, trainable)}
    # State names of optimizer variables: ``opt<k>/<variable name>``, k the position of the
    # owning optimizer in _keras_optimizers (Keras numbers optimizer names per process).
    opt_names: dict[int, str] = {}
    for k, o in reversed(list(enumerate(_keras_optimizers(opt)))):
        for i, v in enumerate(o.variables):
            if id(v) in opt_names:  # a wrapper lists its inner optimizers' variables too
                continue
            name = f"opt{k}/{v.name}"
            if v.name.startswith("variable"):  # unnamed (Nadam's u_product): numbered per process
                name = f"opt{k}/variable#{i}"
            if name in tf_vars:  # Adafactor names several slots alike
                name = f"opt{k}/{v.name}#{i}"
            assert name not in tf_vars, name
            opt_names[id(v)] = name
            tf_vars[name] = v.value
    assert {id(v) for v in opt.variables} <= set(opt_names), "an optimizer variable is unnamed"
    slots = _keras_slots(opt, trainable, paths, opt_names)
    in_slots = {n for s in slots.values() for n in s}
    shared = [n for n in tf_vars if n not in paths and n not in in_slots]
    scale_names = [n for n in shared if n.rsplit("/", 1)[-1] in ("dynamic_scale", "step_counter")]

    def loss_and_grads(ids: Any, targets: Any, loss_weights: Any) -> tuple[Any, list[Any]]:
        with tf.GradientTape() as tape:
            pred_a, pred_b = net(ids, training=True)
            loss = task_loss(pred_a, pred_b, targets, loss_weights)
            scaled = opt.scale_loss(loss) if loss_scaled else loss
        return loss, tape.gradient(scaled, trainable)

    def apply(grads: list[Any]) -> Any:
        if loss_scaled:
            return opt.apply(grads, trainable)
        return opt.apply_gradients(zip(grads, trainable))

    module = tf.Module()
    module.net = net
    module.opt = opt
    if type(opt).__name__ == "MultiOptimizer":  # it does not track its sub-optimizers
        module.sub_optimizers = list(opt.optimizers)

    @tf.function(input_signature=SIGNATURE[:1])
    def infer(ids: Any) -> dict[str, tf.Tensor]:
        a, b = net(ids, training=False)
        return {"a": a, "b": b}

    module.infer = infer
    built = Built(
        case=case, module=module, variables=paths, state_names=list(tf_vars), slots=slots,
        tf_vars=tf_vars, loss_and_grads=loss_and_grads, apply=apply, shared_state=shared,
        scale_names=scale_names,
    )  # fmt: skip
    _attach_functions(built)
    return built


def build_keras(case: str) -> Built:
    """A Keras 3 model trained by the Keras 3 optimizer KERAS_CASES names ``case``."""
    return _keras_built(case, _keras_optimizer_cases()[case]())


# --------------------------------------------------------------------------- tf.compat.v1 steps


class _Dense(tf.Module):
    def __init__(self, rows: int, cols: int, seed: int, bias: float, name: str) -> None:
        super().__init__(name=name)
        init = tf.random.stateless_uniform([rows, cols], [seed, 0], -0.8, 0.8)
        self.kernel = tf.Variable(init, name="kernel")
        self.bias = tf.Variable(tf.fill([cols], bias), name="bias")


class _Emb(tf.Module):
    def __init__(self) -> None:
        super().__init__(name="emb")
        init = tf.random.stateless_normal([VOCAB, EMB_DIM], [SEED, 1], stddev=0.6)
        self.embeddings = tf.Variable(init, name="embeddings")


class _V1Net(tf.Module):
    """The same network as the Keras one, of plain resource variables; attribute paths
    ``net/emb/embeddings``, ``net/shared/kernel``, …"""

    def __init__(self) -> None:
        super().__init__(name="net")
        self.emb = _Emb()
        self.shared = _Dense(SEQ * EMB_DIM, HIDDEN, SEED + 1, 0.05, "shared")
        self.head_a = _Dense(HIDDEN, 1, SEED + 3, 0.1, "head_a")
        self.head_b = _Dense(HIDDEN, 1, SEED + 4, -0.1, "head_b")

    def named_variables(self) -> list[tuple[str, tf.Variable]]:
        return [
            ("net/emb/embeddings", self.emb.embeddings),
            ("net/shared/kernel", self.shared.kernel),
            ("net/shared/bias", self.shared.bias),
            ("net/head_a/kernel", self.head_a.kernel),
            ("net/head_a/bias", self.head_a.bias),
            ("net/head_b/kernel", self.head_b.kernel),
            ("net/head_b/bias", self.head_b.bias),
        ]

    def __call__(self, ids: Any) -> tuple[Any, Any]:
        e = tf.reshape(tf.gather(self.emb.embeddings, ids), [BATCH, SEQ * EMB_DIM])
        h = tf.tanh(tf.matmul(e, self.shared.kernel) + self.shared.bias)
        a = tf.matmul(h, self.head_a.kernel) + self.head_a.bias
        b = tf.matmul(h, self.head_b.kernel) + self.head_b.bias
        return a, b


def _v1_optimizer_cases() -> dict[str, Callable[[], Any]]:
    t = tf.compat.v1.train
    return {
        "Adam": lambda: t.AdamOptimizer(0.05),
        "Momentum": lambda: t.MomentumOptimizer(0.1, 0.9),
        "Momentum-nesterov": lambda: t.MomentumOptimizer(0.1, 0.9, use_nesterov=True),
        "GradientDescent": lambda: t.GradientDescentOptimizer(0.1),
        "Adagrad": lambda: t.AdagradOptimizer(0.2),
        "RMSProp": lambda: t.RMSPropOptimizer(0.02, momentum=0.5),
        "RMSProp-centered": lambda: t.RMSPropOptimizer(0.02, momentum=0.5, centered=True),
        "Adadelta": lambda: t.AdadeltaOptimizer(5.0),
        "Ftrl": lambda: t.FtrlOptimizer(0.2, l1_regularization_strength=0.01),
    }


V1_CASES = tuple(_v1_optimizer_cases())


def _v1_built(case: str, opt: Any, *, loss_scaled: bool = False) -> Built:
    net = _V1Net()
    named = net.named_variables()
    paths = [p for p, _ in named]
    trainable = [v for _, v in named]
    inner = opt._optimizer if loss_scaled else opt  # noqa: SLF001 - the wrapped optimizer
    # Create the slots now, eagerly, so that they exist before any tracing and are saved.
    with tf.init_scope():
        inner._create_slots(trainable)  # noqa: SLF001

    tf_vars: dict[str, tf.Variable] = dict(named)
    slots: dict[str, list[str]] = {p: [] for p in paths}
    for p, v in named:
        for s in sorted(inner.get_slot_names()):
            slot = inner.get_slot(v, s)
            if slot is not None:
                tf_vars[f"{p}/{s}"] = slot
                slots[p].append(f"{p}/{s}")
    for (name, _), v in sorted(inner._non_slot_dict.items(), key=lambda kv: kv[0][0]):  # noqa: SLF001
        tf_vars[f"opt/{name}"] = v
    shared = [n for n in tf_vars if n.startswith("opt/")]
    scale_names: list[str] = []
    if loss_scaled:
        ls = opt._loss_scale  # noqa: SLF001
        tf_vars["loss_scale/current_loss_scale"] = ls._current_loss_scale  # noqa: SLF001
        tf_vars["loss_scale/good_steps"] = ls._num_good_steps  # noqa: SLF001
        scale_names = ["loss_scale/current_loss_scale", "loss_scale/good_steps"]
        shared += scale_names

    def loss_and_grads(ids: Any, targets: Any, loss_weights: Any) -> tuple[Any, list[Any]]:
        with tf.GradientTape() as tape:
            pred_a, pred_b = net(ids)
            loss = task_loss(pred_a, pred_b, targets, loss_weights)
            scaled = opt._scale_loss(loss) if loss_scaled else loss  # noqa: SLF001
        return loss, tape.gradient(scaled, trainable)

    def apply(grads: list[Any]) -> Any:
        if loss_scaled:
            grads = opt._unscale_grads(grads)  # noqa: SLF001
        return opt.apply_gradients(list(zip(grads, trainable)))

    module = tf.Module()
    module.net = net
    # Not the optimizer itself: tf.saved_model.load cannot restore the slot variables of a
    # tf.compat.v1 optimizer (it calls the Keras-only ``add_slot``). Its variables are
    # tracked by name instead, so that the ``train`` function's captures are saved.
    module.opt_state = {
        n.replace("/", "_"): v for n, v in tf_vars.items() if n not in paths
    }

    @tf.function(input_signature=SIGNATURE[:1])
    def infer(ids: Any) -> dict[str, tf.Tensor]:
        a, b = net(ids)
        return {"a": a, "b": b}

    module.infer = infer
    built = Built(
        case=case, module=module, variables=paths, state_names=list(tf_vars), slots=slots,
        tf_vars=tf_vars, loss_and_grads=loss_and_grads, apply=apply, shared_state=shared,
        scale_names=scale_names,
    )  # fmt: skip
    _attach_functions(built)
    return built


def build_v1(case: str) -> Built:
    """Resource variables trained by the tf.compat.v1 optimizer V1_CASES names ``case``,
    inside a tf.function: fused ResourceApply* ops in the ``train`` FunctionDef."""
    return _v1_built(case, _v1_optimizer_cases()[case]())


# --------------------------------------------------------------------------- loss-scaled steps


def has_v1_loss_scale_optimizer() -> bool:
    mp = getattr(tf.compat.v1, "mixed_precision", None)
    return mp is not None and hasattr(mp, "MixedPrecisionLossScaleOptimizer")


LOSS_SCALED_CASES = ("keras-LossScaleOptimizer-Adam", "v1-MixedPrecisionLossScaleOptimizer-Adam")


def build_loss_scaled(case: str) -> Built:
    """A dynamically loss-scaled step around Adam (initial scale 2**10, growth every 4
    finite steps, so that the scale also grows within a short schedule)."""
    if case == "keras-LossScaleOptimizer-Adam":
        keras = _keras()
        opt = keras.optimizers.LossScaleOptimizer(
            keras.optimizers.Adam(0.05), initial_scale=2.0**10, dynamic_growth_steps=4
        )
        return _keras_built(case, opt, loss_scaled=True)
    assert case == "v1-MixedPrecisionLossScaleOptimizer-Adam", case
    mp = tf.compat.v1.mixed_precision
    loss_scale = mp.DynamicLossScale(initial_loss_scale=2.0**10, increment_period=4)
    opt = mp.MixedPrecisionLossScaleOptimizer(
        tf.compat.v1.train.AdamOptimizer(0.05), loss_scale
    )
    return _v1_built(case, opt, loss_scaled=True)


# --------------------------------------------------------------------------- saved once per session

BUILDERS: dict[str, Callable[[str], Built]] = {
    "keras": build_keras,
    "v1": build_v1,
    "loss_scaled": build_loss_scaled,
}


@dataclass(frozen=True)
class Saved:
    kind: str
    case: str
    export_dir: Path
    initial: State
    state_names: list[str]

    def rebuild(self) -> Built:
        """A fresh model and optimizer of the same case, set to the saved initial values."""
        built = BUILDERS[self.kind](self.case)
        assert built.state_names == self.state_names, (built.state_names, self.state_names)
        built.assign(self.initial)
        return built


class SavedModels:
    """Each (kind, case) built and saved once under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._saved: dict[tuple[str, str], Saved] = {}

    def get(self, kind: str, case: str) -> Saved:
        key = (kind, case)
        if key not in self._saved:
            built = BUILDERS[kind](case)
            export_dir = self.root / f"{kind}-{case}"
            initial = built.snapshot()
            save(built, export_dir)
            self._saved[key] = Saved(kind, case, export_dir, initial, list(built.state_names))
        return self._saved[key]


_SESSION: dict[str, SavedModels] = {}


def session_models(tmp_path_factory: Any) -> SavedModels:
    """The session's SavedModels (shared by every test module that asks)."""
    if "models" not in _SESSION:
        _SESSION["models"] = SavedModels(tmp_path_factory.mktemp("tf2_models"))
    return _SESSION["models"]
