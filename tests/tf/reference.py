"""Construction-time reference of what optrewrite inserts into a training graph.

Our own tf.compat.v1 implementation of the three tf.contrib.opt mechanisms
(docs/semantics.md), built while the graph is constructed, so that a rewritten graph can be
compared with it op for op:

1. global-norm clip (clip_gradients_by_global_norm): ``tf.clip_by_global_norm`` over the
   selected gradients as the update ops consume them: sparse gradients after the
   optimizer's own duplicate-index summing, except for optimizers that apply duplicates
   as they come (GradientDescent);
2. all-zero guard (MultitaskOptimizerWrapper): each selected variable's update runs in
   ``cond(count_nonzero(grad) == 0, no_op, update)``; non-slot state (global_step, Adam's
   beta powers) keeps advancing;
3. post-update clip (VariableClippingOptimizer), one group after the other, every step:
   dense ``v -= v - clip_by_norm(v, max_norm, dims)``; a sparse gradient whose dims leave
   out dim 0 clips only the rows it touched, each exactly once (``tf.unique`` of the
   indices: our fix of VariableClippingOptimizer's duplicate-index over-correction); dims
   with dim 0, or no dims, take the dense path.

:class:`RewriteConfig` mirrors the YAML spec and writes it (:meth:`RewriteConfig.to_yaml`),
so a test feeds the rewriter and the reference the same thing.
"""
from __future__ import annotations

import fnmatch
import re
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import tensorflow as tf
import yaml

GradsAndVars = list[tuple[Any, Any]]


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Selection:
    """Variables whose node name matches an ``include`` pattern and no ``exclude`` pattern.

    Patterns are shell globs matched against the whole name, or regular expressions after
    ``re:`` (as in the spec).
    """

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


def _match(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


@dataclass(frozen=True)
class ClipGroup:
    """Clip the selected variables to ``max_norm`` along ``dims`` (None: whole variable)."""

    select: Selection
    max_norm: float
    dims: tuple[int, ...] | None = None

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
class RewriteConfig:
    """What to insert; the same fields as the optrewrite spec (version 1)."""

    guard: Selection | None = None
    clip: tuple[ClipGroup, ...] = ()
    global_norm_clip: GlobalNormClip | None = None

    def to_yaml(self) -> str:
        spec: dict[str, Any] = {"version": 1}
        if self.guard is not None:
            spec["guard"] = self.guard.to_spec()
        if self.clip:
            spec["clip"] = [g.to_spec() for g in self.clip]
        if self.global_norm_clip is not None:
            spec["global_norm_clip"] = self.global_norm_clip.to_spec()
        return yaml.safe_dump(spec, sort_keys=False)


# --------------------------------------------------------------------------- helpers


def var_name(var: Any) -> str:
    """The node name of a variable (VariableV2 or VarHandleOp), or of a handle tensor."""
    return var.op.name


def is_resource(var: Any) -> bool:
    return var.op.type == "VarHandleOp"


def _sparse_method(opt: tf.compat.v1.train.Optimizer, *, resource: bool) -> str:
    """The sparse update method whose gradient is the one the update op consumes.

    Optimizers that take duplicate indices as they come (GradientDescent) override
    ``*_duplicate_indices``; the others sum duplicates there and pass the result on.
    """
    base = "_resource_apply_sparse" if resource else "_apply_sparse"
    dup = f"{base}_duplicate_indices"
    overridden = getattr(type(opt), dup) is not getattr(tf.compat.v1.train.Optimizer, dup)
    return dup if overridden else base


def deduplicates(opt: tf.compat.v1.train.Optimizer, var: Any) -> bool:
    """Whether ``opt`` sums duplicate indices of a sparse gradient before updating ``var``."""
    return not _sparse_method(opt, resource=is_resource(var)).endswith("_duplicate_indices")


def is_all_zero(grad: Any) -> tf.Tensor:
    """True when no element of ``grad`` (the values of an IndexedSlices) is non-zero."""
    values = grad.values if isinstance(grad, tf.IndexedSlices) else grad
    return tf.equal(tf.math.count_nonzero(values), 0)


# --------------------------------------------------------------------------- 1. global-norm clip


def deduplicate(grad: tf.IndexedSlices) -> tf.IndexedSlices:
    """Sum the values of repeated indices, exactly as tf.compat.v1 optimizers do."""
    unique, positions = tf.unique(grad.indices)
    summed = tf.math.unsorted_segment_sum(grad.values, positions, tf.shape(unique)[0])
    return tf.IndexedSlices(summed, unique, grad.dense_shape)


def clip_by_global_norm(
    opt: tf.compat.v1.train.Optimizer,
    grads_and_vars: GradsAndVars,
    clip: GlobalNormClip,
) -> tuple[GradsAndVars, tf.Tensor]:
    """Clip the selected gradients by their global norm; the others pass through.

    A sparse gradient enters as the update op will consume it (deduplicated unless ``opt``
    takes duplicates as they come). An all-zero gradient adds nothing to the norm, so this
    equals the original clip_gradients_by_global_norm, which first replaced it by a scalar 0.
    """
    chosen: list[int] = []
    grads: list[Any] = []
    for i, (grad, var) in enumerate(grads_and_vars):
        if grad is None or not clip.select.matches(var_name(var)):
            continue
        if isinstance(grad, tf.IndexedSlices) and deduplicates(opt, var):
            grad = deduplicate(grad)
        chosen.append(i)
        grads.append(grad)
    clipped, norm = tf.clip_by_global_norm(grads, clip.clip_norm)
    out = list(grads_and_vars)
    for i, grad in zip(chosen, clipped):
        out[i] = (grad, out[i][1])
    return out, norm


# --------------------------------------------------------------------------- 2. all-zero guard


def _guarded(fn: Callable[..., Any], select: Selection) -> Callable[..., Any]:
    def update(grad: Any, var: Any, *args: Any) -> Any:
        if not select.matches(var_name(var)):
            return fn(grad, var, *args)

        def apply() -> tf.Operation:
            with tf.control_dependencies([fn(grad, var, *args)]):
                return tf.no_op()

        return tf.compat.v1.cond(is_all_zero(grad), tf.no_op, apply)

    return update


def guard_optimizer(opt: tf.compat.v1.train.Optimizer, select: Selection) -> None:
    """Make the per-variable updates of ``opt`` skip all-zero gradients (in place).

    Patches the four update paths (dense/sparse × ref/resource), the sparse ones at the
    level where the gradient is the one the update op consumes (see _sparse_method).
    """
    methods = [
        "_apply_dense",
        "_resource_apply_dense",
        _sparse_method(opt, resource=False),
        _sparse_method(opt, resource=True),
    ]
    for name in methods:
        setattr(opt, name, _guarded(getattr(opt, name), select))


# --------------------------------------------------------------------------- 3. post-update clip


def _clip_dense(var: Any, max_norm: float, dims: Sequence[int] | None) -> Any:
    value = var.read_value()
    delta = value - tf.clip_by_norm(value, max_norm, axes=dims)
    return var.assign_sub(delta)


def _clip_sparse(grad: tf.IndexedSlices, var: Any, max_norm: float, dims: Sequence[int]) -> Any:
    indices, _ = tf.unique(grad.indices)
    rows = tf.gather(var, indices)
    delta = rows - tf.clip_by_norm(rows, max_norm, axes=dims)
    return var.scatter_sub(tf.IndexedSlices(delta, indices, grad.dense_shape))


def clip_after(
    update: Any, grads_and_vars: GradsAndVars, group: ClipGroup, *, name: str
) -> tf.Operation:
    """After ``update``, clip each selected variable that has a gradient; group it all."""
    clip_ops = []
    with tf.name_scope(name), tf.control_dependencies([update]):
        for grad, var in grads_and_vars:
            if grad is None or not group.select.matches(var_name(var)):
                continue
            with tf.name_scope(f"clip_{var_name(var)}"):
                sparse_path = (
                    isinstance(grad, tf.IndexedSlices)
                    and group.dims is not None
                    and 0 not in group.dims
                )
                if sparse_path:
                    clip_ops.append(_clip_sparse(grad, var, group.max_norm, group.dims))
                else:
                    clip_ops.append(_clip_dense(var, group.max_norm, group.dims))
    return tf.group(update, *clip_ops)


# --------------------------------------------------------------------------- composition


def apply_reference(
    opt: tf.compat.v1.train.Optimizer,
    grads_and_vars: GradsAndVars,
    config: RewriteConfig,
    *,
    global_step: Any = None,
    name: str = "train",
) -> tf.Operation:
    """``opt.apply_gradients`` with global-norm clip, guard and clip groups, in that order.

    The returned op is named ``name``. Builds with v1 control flow (Switch/Merge), which
    MultitaskOptimizerWrapper used and which takes ref variables into a branch.
    """
    was_v2 = tf.compat.v1.control_flow_v2_enabled()
    tf.compat.v1.disable_control_flow_v2()
    try:
        if config.global_norm_clip is not None:
            grads_and_vars, _ = clip_by_global_norm(opt, grads_and_vars, config.global_norm_clip)
        if config.guard is not None:
            guard_optimizer(opt, config.guard)
        update: Any = opt.apply_gradients(grads_and_vars, global_step=global_step)
        for i, group in enumerate(config.clip):
            update = clip_after(update, grads_and_vars, group, name=f"VariableClipping_{i}")
        return tf.group(update, name=name)
    finally:
        if was_v2:
            tf.compat.v1.enable_control_flow_v2()
