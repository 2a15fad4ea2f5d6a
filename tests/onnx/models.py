"""ONNX training steps of a small two-task model, built with onnx.helper.

The model (parameters start from fixed numpy values; the tensor names are the variable
names of the TensorFlow twin in test_cross_format.py, so one spec fits both formats)::

    shared/kernel  [3, 4]   h = tanh(x @ kernel + bias)
    shared/bias    [4]
    task_a/kernel  [4, 1]   loss = mask_a * mean((h @ task_a/kernel - y_a)^2)
    task_b/kernel  [4, 1]        + mask_b * mean((h @ task_b/kernel - y_b)^2)

One model is one whole training step: the forward pass, the backward pass written out in
standard ops (MatMul, Transpose, Mul, Sub, ReduceSum, ...), then the optimizer, either

(a) one ``ai.onnx.preview.training`` node (Adam, Adagrad, Momentum standard or nesterov)
    updating all four parameters, or
(b) "decomposed": the same optimizer (Adam or Momentum) written in plain ops, one update
    per parameter, described to optrewrite by ``updates:`` entries (:meth:`StepModel.updates`).

Graph inputs: the parameters, the optimizer states, R, T, x, y_a, y_b, mask_a, mask_b;
graph outputs: the new parameters, then the new states. ``StepModel.next`` maps each
parameter or state input to the output that becomes it in the next step.

The masks are scalars. A task whose mask is 0 has a backward signal of exactly 0, so its
head's gradient is all zero (a signed zero at most); with both masks 0 every gradient is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES, HIDDEN, BATCH = 3, 4, 8
PARAMS = ("shared/kernel", "shared/bias", "task_a/kernel", "task_b/kernel")
SHAPES: dict[str, tuple[int, ...]] = {
    "shared/kernel": (FEATURES, HIDDEN),
    "shared/bias": (HIDDEN,),
    "task_a/kernel": (HIDDEN, 1),
    "task_b/kernel": (HIDDEN, 1),
}
DATA_SHAPES: dict[str, tuple[int, ...]] = {
    "x": (BATCH, FEATURES), "y_a": (BATCH, 1), "y_b": (BATCH, 1), "mask_a": (), "mask_b": (),
}  # fmt: skip
TRAINING_DOMAIN = "ai.onnx.preview.training"
IR_VERSION = 10  # onnxruntime 1.31 loads IR <= 13; onnx 1.23 would write 14
_ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}


def grad_name(param: str) -> str:
    return f"grad/{param}"


def new_name(tensor: str) -> str:
    return f"{tensor}/new"


# --------------------------------------------------------------------------- optimizers


@dataclass(frozen=True)
class Optimizer:
    """An ONNX training optimizer: its op, attributes, learning rate and state blocks.

    ``states`` names the state blocks in the op's input order (Adam: V then H).
    ``initial_state`` is every state's starting value (Adagrad's H, like TF's
    initial_accumulator_value).
    """

    op: str
    attrs: tuple[tuple[str, Any], ...]
    lr: float
    states: tuple[str, ...]
    initial_state: float = 0.0

    def attr(self, name: str) -> Any:
        return dict(self.attrs)[name]

    def hyper(self, name: str) -> float:
        """A float attribute as the model holds it: ONNX float attributes are float32."""
        return float(np.float32(self.attr(name)))


def attributes(**kw: Any) -> tuple[tuple[str, Any], ...]:
    """Optimizer.attrs from keywords."""
    return tuple(sorted(kw.items()))


# Non-default attributes throughout, so that each one is exercised. 1 - alpha, 1 - beta and
# 1 - norm_coefficient_post are exact in float32 (alpha, beta in [0.5, 1]; 2**-9), so a
# runtime computing them from the float32 attribute in float32 (onnx.reference does) and one
# computing them in double agree.
OPTIMIZERS: dict[str, Optimizer] = {
    "Adam": Optimizer(
        "Adam",
        attributes(alpha=0.85, beta=0.99, epsilon=1e-4, norm_coefficient=0.01,
               norm_coefficient_post=2.0**-9),
        lr=0.05, states=("V", "H"),
    ),
    "Adagrad": Optimizer(
        "Adagrad",
        attributes(decay_factor=0.05, epsilon=1e-4, norm_coefficient=0.01),
        lr=0.2, states=("H",), initial_state=0.1,
    ),
    "Momentum": Optimizer(
        "Momentum",
        attributes(alpha=0.8, beta=0.6, mode="standard", norm_coefficient=0.01),
        lr=0.1, states=("V",),
    ),
    "Nesterov": Optimizer(
        "Momentum",
        attributes(alpha=0.8, beta=0.6, mode="nesterov", norm_coefficient=0.01),
        lr=0.1, states=("V",),
    ),
}  # fmt: skip
DECOMPOSABLE = ("Adam", "Momentum", "Nesterov")


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class StepModel:
    """A training-step model and the names a trainer, a spec and the reference need."""

    model: onnx.ModelProto
    dtype: np.dtype
    optimizer: Optimizer
    decomposed: bool
    states: dict[str, tuple[str, ...]]  # parameter -> its state inputs, in block order
    next: dict[str, str]  # parameter or state input -> the output that replaces it
    initial: dict[str, np.ndarray] = field(repr=False)  # parameters and states

    def updates(self) -> list[dict[str, Any]]:
        """The ``updates:`` spec entries of a decomposed step."""
        return [
            {
                "variable": p,
                "gradient": grad_name(p),
                "updated": self.next[p],
                "state": [[s, self.next[s]] for s in self.states[p]],
            }
            for p in PARAMS
        ]

    def serialized(self) -> bytes:
        return self.model.SerializeToString()


def initial_params(dtype: Any) -> dict[str, np.ndarray]:
    """The starting parameters, drawn in float64 and rounded to ``dtype``."""
    rng = np.random.default_rng(20250611)
    scale = {"shared/kernel": 0.8, "shared/bias": 0.2, "task_a/kernel": 0.7, "task_b/kernel": 0.7}
    return {p: rng.normal(0.0, scale[p], SHAPES[p]).astype(dtype) for p in PARAMS}


class _Builder:
    """Collects nodes; every value gets a readable unique name."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def _fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        name = out or self._fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def const(self, value: Any, hint: str = "c", dtype: Any = None) -> str:
        arr = np.asarray(value, dtype=dtype or self.dtype)
        name = self._fresh(hint)
        tensor = numpy_helper.from_array(arr, name)
        self.nodes.append(helper.make_node("Constant", [], [name], name=name, value=tensor))
        return name


def _forward_backward(b: _Builder) -> None:
    """Gradients of the two-task loss; tests/onnx/reference.py mirrors it op for op."""
    h = b.op("Tanh", b.op("Add", b.op("MatMul", "x", "shared/kernel"), "shared/bias"), out="h")
    two_over_n = b.const(2.0 / BATCH, "two_over_n")
    dh = []
    for task in ("a", "b"):
        kernel = f"task_{task}/kernel"
        err = b.op("Sub", b.op("MatMul", h, kernel), f"y_{task}", out=f"err_{task}")
        # d loss / d prediction = mask * 2/N * err (mean over the N = BATCH predictions)
        dpred = b.op("Mul", b.op("Mul", f"mask_{task}", two_over_n), err, out=f"dpred_{task}")
        b.op("MatMul", b.op("Transpose", h, perm=[1, 0]), dpred, out=grad_name(kernel))
        dh.append(b.op("MatMul", dpred, b.op("Transpose", kernel, perm=[1, 0])))
    dh_sum = b.op("Add", dh[0], dh[1], out="dh")
    one = b.const(1.0, "one")
    dz = b.op("Mul", dh_sum, b.op("Sub", one, b.op("Mul", h, h)), out="dz")
    b.op("MatMul", b.op("Transpose", "x", perm=[1, 0]), dz, out=grad_name("shared/kernel"))
    axes = b.const([0], "axes", dtype=np.int64)
    b.op("ReduceSum", dz, axes, keepdims=0, out=grad_name("shared/bias"))


def _training_node(b: _Builder, opt: Optimizer, states: Mapping[str, tuple[str, ...]]) -> None:
    """(a): one ai.onnx.preview.training node over all parameters."""
    inputs = ["R", "T", *PARAMS, *(grad_name(p) for p in PARAMS)]
    outputs = [new_name(p) for p in PARAMS]
    for k in range(len(opt.states)):
        inputs += [states[p][k] for p in PARAMS]
        outputs += [new_name(states[p][k]) for p in PARAMS]
    b.nodes.append(
        helper.make_node(
            opt.op, inputs, outputs, name=f"optimizer/{opt.op}", domain=TRAINING_DOMAIN,
            **dict(opt.attrs),
        )  # fmt: skip
    )


def _decomposed_adam(b: _Builder, opt: Optimizer, states: Mapping[str, tuple[str, ...]]) -> None:
    """(b): Adam in plain ops (docs/semantics.md#onnx-training-ops), the bias-corrected rate
    computed once.

    Hyperparameters take the float32 values the node's attributes would hold, so that (a)
    and (b) share one reference."""
    alpha, beta = opt.hyper("alpha"), opt.hyper("beta")
    c_alpha, c_beta, one = b.const(alpha, "alpha"), b.const(beta, "beta"), b.const(1.0, "one")
    # max(T, 1): the corrected rate stays finite at T = 0, where Where picks R anyway
    first = b.const(1, "first_step", dtype=np.int64)
    t = b.op("Cast", b.op("Max", "T", first), to=_ELEM[b.dtype])
    corrected = b.op(
        "Div",
        b.op("Mul", "R", b.op("Sqrt", b.op("Sub", one, b.op("Pow", c_beta, t)))),
        b.op("Sub", one, b.op("Pow", c_alpha, t)),
    )
    started = b.op("Greater", "T", b.const(0, "zero_step", dtype=np.int64))
    rate = b.op("Where", started, corrected, "R", out="adam/rate")
    c_1ma, c_1mb = b.const(1.0 - alpha, "one_minus_alpha"), b.const(1.0 - beta, "one_minus_beta")
    c_norm, c_eps = b.const(opt.hyper("norm_coefficient"), "norm"), b.const(opt.hyper("epsilon"))
    c_post = b.const(1.0 - opt.hyper("norm_coefficient_post"), "one_minus_post")
    for p in PARAMS:
        v, h = states[p]
        g = b.op("Add", b.op("Mul", c_norm, p), grad_name(p))
        v_new = b.op("Add", b.op("Mul", c_alpha, v), b.op("Mul", c_1ma, g), out=new_name(v))
        g_sq = b.op("Mul", g, g)
        h_new = b.op("Add", b.op("Mul", c_beta, h), b.op("Mul", c_1mb, g_sq), out=new_name(h))
        step = b.op("Div", v_new, b.op("Add", b.op("Sqrt", h_new), c_eps))
        x_new = b.op("Sub", p, b.op("Mul", rate, step))
        b.op("Mul", c_post, x_new, out=new_name(p))


def _decomposed_momentum(
    b: _Builder, opt: Optimizer, states: Mapping[str, tuple[str, ...]]
) -> None:
    """(b): Momentum (standard or nesterov) in plain ops (docs/semantics.md#onnx-training-ops)."""
    c_alpha, c_norm = b.const(opt.hyper("alpha"), "alpha"), b.const(opt.hyper("norm_coefficient"))
    started = b.op("Greater", "T", b.const(0, "zero_step", dtype=np.int64))
    coef = b.op("Where", started, b.const(opt.hyper("beta"), "beta"), b.const(1.0, "one"))
    for p in PARAMS:
        (v,) = states[p]
        g = b.op("Add", b.op("Mul", c_norm, p), grad_name(p))
        v_new = b.op("Add", b.op("Mul", c_alpha, v), b.op("Mul", coef, g), out=new_name(v))
        if opt.attr("mode") == "standard":
            step = v_new
        else:
            step = b.op("Add", g, b.op("Mul", c_alpha, v_new))
        b.op("Sub", p, b.op("Mul", "R", step), out=new_name(p))


def training_step(
    optimizer: str | Optimizer,
    dtype: Any = np.float32,
    *,
    decomposed: bool = False,
    opset: int | None = None,
) -> StepModel:
    """The whole training step of the two-task model, with ``OPTIMIZERS[optimizer]`` (or
    ``optimizer`` itself).

    ``opset`` (ai.onnx) defaults to 17 with a training node, 18 for decomposed steps, so
    that what the rewriter inserts runs in both forms of ReduceMin/ReduceMax/ReduceMean
    (axes an attribute before opset 18, an input from 18).
    """
    dtype = np.dtype(dtype)
    opset = opset or (18 if decomposed else 17)
    opt = OPTIMIZERS[optimizer] if isinstance(optimizer, str) else optimizer
    if decomposed and opt.op not in ("Adam", "Momentum"):
        raise ValueError(f"no decomposed form of {opt.op}")
    elem = _ELEM[dtype]
    states = {p: tuple(f"{p}/{s}" for s in opt.states) for p in PARAMS}
    state_names = [states[p][k] for k in range(len(opt.states)) for p in PARAMS]

    b = _Builder(dtype)
    _forward_backward(b)
    if not decomposed:
        _training_node(b, opt, states)
    elif opt.op == "Adam":
        _decomposed_adam(b, opt, states)
    else:
        _decomposed_momentum(b, opt, states)

    def value(name: str, shape: tuple[int, ...], kind: int = elem) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, kind, list(shape))

    state_shape = {states[p][k]: SHAPES[p] for p in PARAMS for k in range(len(opt.states))}
    inputs = [value(p, SHAPES[p]) for p in PARAMS]
    inputs += [value(s, state_shape[s]) for s in state_names]
    inputs += [value("R", ()), value("T", (), TensorProto.INT64)]
    inputs += [value(n, shape) for n, shape in DATA_SHAPES.items()]
    outputs = [value(new_name(p), SHAPES[p]) for p in PARAMS]
    outputs += [value(new_name(s), state_shape[s]) for s in state_names]
    graph = helper.make_graph(b.nodes, f"two_task_{opt.op.lower()}_step", inputs, outputs)
    opsets = [helper.make_opsetid("", opset)]
    if not decomposed:
        opsets.append(helper.make_opsetid(TRAINING_DOMAIN, 1))
    model = helper.make_model(
        graph, opset_imports=opsets, ir_version=IR_VERSION, producer_name="optrewrite-tests"
    )
    onnx.checker.check_model(model, full_check=True)

    initial = initial_params(dtype)
    for s in state_names:
        initial[s] = np.full(state_shape[s], opt.initial_state, dtype)
    return StepModel(
        model=model,
        dtype=dtype,
        optimizer=opt,
        decomposed=decomposed,
        states=states,
        next={n: new_name(n) for n in (*PARAMS, *state_names)},
        initial=initial,
    )
