"""Numpy reference of the two-task ONNX training step (tests/onnx/models.py), and a trainer.

:class:`ReferenceStep` computes one step the way the model does, op for op and in the
model's dtype (so float32 agrees closely), then, when given :class:`Semantics`, what
optrewrite inserts, for each selected parameter, in this order (docs/semantics.md#order):

1. global-norm clip of the selected gradients (TF ``clip_by_global_norm``):
   ``norm = sqrt(sum_i sum(G_i**2))``, ``scale = clip_norm * min(1/norm, 1/clip_norm)``,
   ``G_i *= scale``;
2. guard: a gradient (after 1) with no non-zero element (-0.0 is zero, NaN is not) leaves
   the parameter and all its optimizer states as they are; otherwise the optimizer runs
   (docs/semantics.md#onnx-training-ops). T comes from the caller and advances every step
   regardless;
3. clip groups in spec order, every step (also when 2 skipped the update):
   ``X -= X - clip_by_norm(X, max_norm, dims)``, TF's exact clip_by_norm (no epsilon).

:func:`train` runs any step function (this reference, onnxruntime, onnx.reference) for a
list of batches, feeding the outputs back as the next step's parameters and states.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import yaml

from .models import BATCH, FEATURES, PARAMS, Optimizer, StepModel, grad_name

Feeds = dict[str, np.ndarray]
Step = Callable[[Feeds], dict[str, np.ndarray]]
State = dict[str, np.ndarray]

# Tasks present in each step: both, only a, only b, none ("": every gradient all zero).
SCHEDULE = ("a", "ab", "", "b", "ab", "a", "ab", "", "b", "ab",
            "a", "b", "ab", "", "a", "ab", "b", "", "ab", "a")  # fmt: skip


# --------------------------------------------------------------------------- the spec


def _match(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


@dataclass(frozen=True)
class Selection:
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def matches(self, name: str) -> bool:
        return any(_match(p, name) for p in self.include) and not any(
            _match(p, name) for p in self.exclude
        )

    def to_spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"variables": list(self.include)}
        if self.exclude:
            out["exclude"] = list(self.exclude)
        return out


@dataclass(frozen=True)
class ClipGroup:
    select: Selection
    max_norm: float
    dims: tuple[int, ...] | None = None  # None: the norm of the whole tensor

    def to_spec(self) -> dict[str, Any]:
        out = self.select.to_spec()
        if self.dims is not None:
            out["dims"] = list(self.dims)
        out["max_norm"] = self.max_norm
        return out


@dataclass(frozen=True)
class GlobalNormClip:
    clip_norm: float
    select: Selection = field(default_factory=Selection)

    def to_spec(self) -> dict[str, Any]:
        return {"clip_norm": self.clip_norm, **self.select.to_spec()}


@dataclass(frozen=True)
class Semantics:
    """What optrewrite inserts; the same fields as the spec (version 1)."""

    guard: Selection | None = None
    clip: tuple[ClipGroup, ...] = ()
    global_norm_clip: GlobalNormClip | None = None

    def to_yaml(self, *, lower: bool = False, updates: list[dict[str, Any]] | None = None) -> str:
        spec: dict[str, Any] = {"version": 1}
        if self.guard is not None:
            spec["guard"] = self.guard.to_spec()
        if self.clip:
            spec["clip"] = [g.to_spec() for g in self.clip]
        if self.global_norm_clip is not None:
            spec["global_norm_clip"] = self.global_norm_clip.to_spec()
        if lower:
            spec["lower"] = True
        if updates:
            spec["updates"] = updates
        return yaml.safe_dump(spec, sort_keys=False)


# --------------------------------------------------------------------------- data


def make_batches(dtype: Any, schedule: Sequence[str] = SCHEDULE, seed: int = 7) -> list[Feeds]:
    """One batch per schedule entry, drawn in float64 and rounded to ``dtype``; a task's
    mask is 1 when present, 0 when not."""
    rng = np.random.default_rng(seed)
    batches = []
    for tasks in schedule:
        batches.append(
            {
                "x": rng.normal(0.0, 1.0, (BATCH, FEATURES)).astype(dtype),
                "y_a": rng.normal(1.0, 1.0, (BATCH, 1)).astype(dtype),
                "y_b": rng.normal(-1.0, 1.5, (BATCH, 1)).astype(dtype),
                "mask_a": np.array(1.0 if "a" in tasks else 0.0, dtype),
                "mask_b": np.array(1.0 if "b" in tasks else 0.0, dtype),
            }
        )
    return batches


# --------------------------------------------------------------------------- the step


def gradients(values: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray]) -> State:
    """The model's backward pass (models._forward_backward), op for op."""
    dtype = values["shared/kernel"].dtype
    x = batch["x"]
    h = np.tanh(x @ values["shared/kernel"] + values["shared/bias"])
    two_over_n = dtype.type(2.0 / BATCH)
    grads: State = {}
    dh = []
    for task in ("a", "b"):
        kernel = f"task_{task}/kernel"
        err = h @ values[kernel] - batch[f"y_{task}"]
        dpred = (batch[f"mask_{task}"] * two_over_n) * err
        grads[kernel] = h.T @ dpred
        dh.append(dpred @ values[kernel].T)
    dz = (dh[0] + dh[1]) * (dtype.type(1.0) - h * h)
    grads["shared/kernel"] = x.T @ dz
    grads["shared/bias"] = np.sum(dz, axis=0)
    return grads


def optimizer_update(
    opt: Optimizer,
    r: np.ndarray,
    t: int,
    x: np.ndarray,
    g: np.ndarray,
    states: Sequence[np.ndarray],
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """One tensor's update by ``opt`` (docs/semantics.md#onnx-training-ops), in x's dtype, in
    the operator spec's order."""
    d = x.dtype.type
    one = d(1.0)
    if opt.op == "Adagrad":
        (h,) = states
        rate = r / (one + d(t) * d(opt.hyper("decay_factor")))
        g = d(opt.hyper("norm_coefficient")) * x + g
        h = h + g * g
        return x - rate * g / (np.sqrt(h) + d(opt.hyper("epsilon"))), (h,)
    if opt.op == "Momentum":
        (v,) = states
        alpha = d(opt.hyper("alpha"))
        g = d(opt.hyper("norm_coefficient")) * x + g
        v = alpha * v + (d(opt.hyper("beta")) if t > 0 else one) * g
        if opt.attr("mode") == "standard":
            return x - r * v, (v,)
        return x - r * (g + alpha * v), (v,)
    assert opt.op == "Adam", opt.op
    v, h = states
    alpha, beta = d(opt.hyper("alpha")), d(opt.hyper("beta"))
    g = d(opt.hyper("norm_coefficient")) * x + g
    v = alpha * v + (one - alpha) * g
    h = beta * h + (one - beta) * (g * g)
    rate = r * np.sqrt(one - beta ** d(t)) / (one - alpha ** d(t)) if t > 0 else r
    x = x - rate * (v / (np.sqrt(h) + d(opt.hyper("epsilon"))))
    return (one - d(opt.hyper("norm_coefficient_post"))) * x, (v, h)


def clip_by_norm(t: np.ndarray, max_norm: float, dims: tuple[int, ...] | None) -> np.ndarray:
    """TensorFlow's clip_by_norm, exactly (docs/semantics.md#clip): a zero norm keeps t."""
    c = t.dtype.type(max_norm)
    l2sum = np.sum(t * t, axis=dims, keepdims=True)
    pred = l2sum > 0
    l2norm = np.where(pred, np.sqrt(np.where(pred, l2sum, t.dtype.type(1.0))), l2sum)
    return t * c / np.maximum(l2norm, c)


def clip_by_global_norm(
    grads: Sequence[np.ndarray], clip_norm: float
) -> tuple[list[np.ndarray], Any]:
    """TensorFlow's clip_by_global_norm: the clipped tensors and the norm before clipping."""
    d = grads[0].dtype.type
    norm = np.sqrt(sum((np.sum(g * g) for g in grads), d(0.0)))
    c = d(clip_norm)
    with np.errstate(divide="ignore"):
        # TF adds (norm - norm) to carry a non-finite norm; it is 0 for these finite ones
        scale = c * np.minimum(d(1.0) / norm, d(1.0) / c)
    return [g * scale for g in grads], norm


@dataclass
class StepLog:
    """What the semantics did in one step."""

    skipped: frozenset[str]  # parameters the guard left alone
    global_norm: float | None  # the selected gradients' global norm, before clipping
    clipped: frozenset[str]  # parameters a clip group changed


class ReferenceStep:
    """One training step of ``model`` in numpy: a step function for :func:`train`.

    ``semantics`` None: the plain model (no guard, no clip). ``log`` gets a StepLog per call.
    """

    def __init__(self, model: StepModel, semantics: Semantics | None = None) -> None:
        self.model = model
        self.semantics = semantics or Semantics()
        self.log: list[StepLog] = []

    def __call__(self, feeds: Feeds) -> dict[str, np.ndarray]:
        m, sem = self.model, self.semantics
        values = {p: feeds[p] for p in PARAMS}
        grads = gradients(values, feeds)
        t = int(feeds["T"])

        global_norm = None
        if sem.global_norm_clip is not None:
            chosen = [p for p in PARAMS if sem.global_norm_clip.select.matches(p)]
            clip_norm = sem.global_norm_clip.clip_norm
            scaled, norm = clip_by_global_norm([grads[p] for p in chosen], clip_norm)
            grads.update(zip(chosen, scaled))
            global_norm = float(norm)

        out: dict[str, np.ndarray] = {}
        skipped = set()
        for p in PARAMS:
            states = [feeds[s] for s in m.states[p]]
            if sem.guard is not None and sem.guard.matches(p) and not np.any(grads[p]):
                skipped.add(p)
                x, new_states = values[p], tuple(states)
            else:
                x, new_states = optimizer_update(
                    m.optimizer, feeds["R"], t, values[p], grads[p], states
                )
            out[p] = x
            for s, value in zip(m.states[p], new_states):
                out[m.next[s]] = value

        clipped = set()
        for group in sem.clip:
            for p in filter(group.select.matches, PARAMS):
                x = out[p]
                out[p] = x - (x - clip_by_norm(x, group.max_norm, group.dims))
                if not np.array_equal(out[p], x):
                    clipped.add(p)
        self.log.append(StepLog(frozenset(skipped), global_norm, frozenset(clipped)))
        for p in PARAMS:
            out[m.next[p]] = out.pop(p)
        return out


# --------------------------------------------------------------------------- running


def onnxruntime_step(model_bytes: bytes) -> Step:
    """A step function running a model in onnxruntime on the CPU, single-threaded."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(None, feeds)))


def _typed_adam() -> type:
    """onnx.reference's Adam, returning every output in its input's dtype.

    onnx 1.23's op_adam.py returns float32 from a node over several tensors whatever their
    type, and for one float32 tensor at T > 0 a float64 X (the bias-corrected rate is a
    float64 scalar); the formula is left as it is.
    """
    from onnx.reference.ops.aionnx_preview_training.op_adam import Adam as OnnxAdam

    class Adam(OnnxAdam):  # new_ops are keyed by class name
        def _run(self, *data: np.ndarray, **attrs: Any) -> tuple[np.ndarray, ...]:
            n = (len(data) - 2) // 4
            blocks: list[list[np.ndarray]] = [[], [], []]
            for i in range(n):
                x, g, v, h = (data[2 + k * n + i] for k in range(4))
                outs = self._run1(*data[:2], x, g, v, h, **attrs)
                for block, out, like in zip(blocks, outs, (x, v, h)):
                    block.append(np.asarray(out).astype(like.dtype))
            return tuple(blocks[0] + blocks[1] + blocks[2])

    return Adam


def evaluator_step(model_bytes: bytes) -> Step:
    """A step function running a model in onnx.reference.ReferenceEvaluator (its Adam made
    to keep dtypes, see _typed_adam)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(onnx.load_from_string(model_bytes), new_ops=[_typed_adam()])
    names = list(evaluator.output_names)

    def run(feeds: Feeds) -> dict[str, np.ndarray]:
        # TF's clip_by_global_norm takes 1/norm, inf when every gradient it sees is zero
        with np.errstate(divide="ignore"):
            return dict(zip(names, evaluator.run(None, feeds)))

    return run


def train(step: Step, model: StepModel, batches: Sequence[Feeds]) -> list[State]:
    """Run ``step`` once per batch, T = 0, 1, ...; feed each step's outputs back.

    Returns the parameters and states before the first step ([0]) and after each step
    ([t + 1]). Every output must have the dtype and shape of the input it replaces.
    """
    values = dict(model.initial)
    states = [values]
    r = np.array(model.optimizer.lr, model.dtype)
    for t, batch in enumerate(batches):
        out = step({**values, "R": r, "T": np.array(t, np.int64), **batch})
        new = {}
        for name, output in model.next.items():
            got = np.asarray(out[output])
            assert (got.dtype, got.shape) == (model.dtype, values[name].shape), (
                f"step {t}: output {output!r} is {got.dtype}{list(got.shape)}, "
                f"expected {model.dtype}{list(values[name].shape)}"
            )
            new[name] = got
        values = new
        states.append(values)
    return states
