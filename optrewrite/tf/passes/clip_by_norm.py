"""Post-update clip-by-norm (VariableClippingOptimizer).

After the (possibly guarded) update of a selected variable ``v``, every step:

1. dense gradient, or a sparse one with 0 in ``dims``::

       t = read(v);  v -= t - clip_by_norm(t, max_norm, dims)

2. sparse gradient otherwise — only the rows the step touched, each exactly once::

       rows = Unique(indices);  t = gather(v, rows);  scatter_sub(v, rows, t - clip_by_norm(t, ...))

``clip_by_norm`` is TensorFlow's exact formula (no epsilon)::

       l2sum = Sum(t * t, dims, keep_dims);  pred = l2sum > 0
       l2norm = Select(pred, Sqrt(Select(pred, l2sum, 1)), l2sum)
       clipped = Identity(t * c / Maximum(l2norm, c))

With ``formula: exact`` the clip writes only on a step where some norm exceeds ``c``, and
writes the clipped value itself (no ``t - (t - clipped)`` cancellation, no ulp drift)::

       norm = Sqrt(Sum(t * t, dims, keep_dims));  over = norm > c      # NaN is not over
       exceeds = Any(Reshape(over, [-1]), [0])
       cond(exceeds):  v = t * Select(over, c / norm, 1)               # (the touched rows)

``t * 1`` is ``t`` bit for bit, so a slice within the norm keeps its bits. With
``on_skipped_steps: false`` a guarded site's clip (either formula) runs only when the guard
let the update run: its condition is also the guard's ``apply``. A cond is the v1
``Switch`` / ``Merge`` structure of the guard: the full-size work and the write take a
control input from the true pivot, so they do not run on a step that does not clip.

The gather and the final write sit with the variable; the norm computation does so too when
the group sets ``colocate_with_variable``. ``use_locking`` goes to the ref-variable writes.
Groups chain: each clip waits for the previous one, and the update's consumers wait for the last.
"""
from __future__ import annotations

from typing import Sequence

from optrewrite.passes import Pass, PassResult
from optrewrite.spec import ClipGroup
from optrewrite.tf import proto
from optrewrite.tf.graph import GraphEditor, Placement
from optrewrite.tf.passes.guard_zero_grad import merge, pivots
from optrewrite.tf.passes.state import SiteState


class ClipByNorm(Pass):
    name = "clip"

    def run(self, g: GraphEditor, states: Sequence[SiteState]) -> PassResult:
        """Each state's clip groups, in spec order."""
        result = PassResult()
        for state in states:
            for action in state.selection.of(self.name):
                clip(g, state, action.options)
                result.inserted.setdefault(state.site.key, []).append(action.label)
        return result


def clip_by_norm_subgraph(
    g: GraphEditor, scope: str, t: str, dtype: int, max_norm: float, dims: list[int],
    *, placement: Placement, colocate: bool, tag: str,
) -> str:
    """Insert TF's clip_by_norm(t, max_norm, dims) and return the clipped tensor."""
    T = {"T": g.type_attr(dtype)}
    kw = {"placement": placement, "tag": tag}
    co = {"colocate": colocate, **kw}
    sq = g.add(f"{scope}/mul", "Mul", [t, t], attrs=T, **co)
    axes = g.const(f"{scope}/Sum/reduction_indices", dims, proto.DT_INT32, **kw)
    l2sum = g.add(f"{scope}/Sum", "Sum", [sq, axes],
                  attrs={**T, "keep_dims": g.bool_attr(True), "Tidx": g.type_attr(proto.DT_INT32)}, **co)
    zero = g.const(f"{scope}/Greater/y", 0.0, dtype, **kw)
    pred = g.add(f"{scope}/Greater", "Greater", [l2sum, zero], attrs=T, **co)
    ones = g.add(f"{scope}/ones_like", "OnesLike", [l2sum], attrs=T, **co)
    safe = g.add(f"{scope}/Select", "Select", [pred, l2sum, ones], attrs=T, **co)
    sqrt = g.add(f"{scope}/Sqrt", "Sqrt", [safe], attrs=T, **co)
    l2norm = g.add(f"{scope}/Select_1", "Select", [pred, sqrt, l2sum], attrs=T, **co)
    c1 = g.const(f"{scope}/mul_1/y", max_norm, dtype, **kw)
    scaled = g.add(f"{scope}/mul_1", "Mul", [t, c1], attrs=T, **co)
    c2 = g.const(f"{scope}/Maximum/y", max_norm, dtype, **kw)
    denom = g.add(f"{scope}/Maximum", "Maximum", [l2norm, c2], attrs=T, **co)
    div = g.add(f"{scope}/truediv", "RealDiv", [scaled, denom], attrs=T, **co)
    return g.add(scope, "Identity", [div], attrs=T, **co)


def clip(g: GraphEditor, state: SiteState, group: ClipGroup) -> None:
    site = state.site
    at = state.placement
    tag = group.field  # "clip[<index>]"
    scope = g.unique_name(f"{site.scope}/optrewrite_clip_{group.index}")
    dims = _resolve_dims(group.dims, site.rank, site.variable)
    T = {"T": g.type_attr(site.dtype)}
    var, dtype = site.variable, site.dtype
    kw = {"placement": at, "tag": tag}
    rows_only = site.sparse and site.indices is not None and 0 not in dims
    if rows_only:
        idx_dtype = site.indices_dtype
        unique = g.add(f"{scope}/Unique", "Unique", [site.indices],
                       attrs={"T": g.type_attr(idx_dtype), "out_idx": g.type_attr(proto.DT_INT32)}, **kw)
        rows = f"{unique}:0"
        if site.resource:
            value = g.add(f"{scope}/ResourceGather", "ResourceGather", [var, rows], control=state.after,
                          attrs={"dtype": g.type_attr(dtype), "Tindices": g.type_attr(idx_dtype),
                                 "batch_dims": g.int_attr(0), "validate_indices": g.bool_attr(True)},
                          colocate=True, **kw)
        else:
            axis = g.const(f"{scope}/GatherV2/axis", 0, proto.DT_INT32, **kw)
            value = g.add(f"{scope}/GatherV2", "GatherV2", [var, rows, axis], control=state.after,
                          attrs={"Tparams": g.type_attr(dtype), "Tindices": g.type_attr(idx_dtype),
                                 "Taxis": g.type_attr(proto.DT_INT32), "batch_dims": g.int_attr(0)},
                          colocate=True, **kw)
    elif site.resource:
        value = g.add(f"{scope}/ReadVariableOp", "ReadVariableOp", [var], control=state.after,
                      attrs={"dtype": g.type_attr(dtype)}, colocate=group.colocate_with_variable, **kw)
    else:
        value = g.add(f"{scope}/read", "Identity", [var], control=state.after, attrs=T,
                      colocate=group.colocate_with_variable, **kw)
    gate = None if group.on_skipped_steps else state.applied
    if group.formula == "exact":
        _exact(g, state, group, scope, value, dims, rows if rows_only else None, gate)
        return
    if gate is not None:  # the seed's ops, run only on a step whose update ran
        pivot_t, pivot_f = pivots(g, f"{scope}/cond", gate, at, tag)
        g.add_control_input(value, pivot_t)
    clipped = clip_by_norm_subgraph(g, f"{scope}/clip_by_norm", value, dtype, group.max_norm, dims,
                                    placement=at, colocate=group.colocate_with_variable, tag=tag)
    delta = g.add(f"{scope}/sub", "Sub", [value, clipped], attrs=T,
                  colocate=group.colocate_with_variable, **kw)
    write = _write(g, state, group, scope, "sub", delta, rows if rows_only else None)
    state.after = [write] if gate is None else [merge(g, f"{scope}/cond", pivot_t, pivot_f, [write], at, tag)]


def _exact(g: GraphEditor, state: SiteState, group: ClipGroup, scope: str, value: str, dims: list[int],
           rows: str | None, gate: str | None) -> None:
    """``formula: exact`` (module docstring) on ``value``, the variable (or its ``rows``)
    read after the update; ``gate``, when given, must also hold for the clip to write."""
    at, tag, dtype = state.placement, group.field, state.site.dtype
    T = {"T": g.type_attr(dtype)}
    kw = {"placement": at, "tag": tag}
    co = {"colocate": group.colocate_with_variable, **kw}
    i32 = g.type_attr(proto.DT_INT32)
    sq = g.add(f"{scope}/square", "Mul", [value, value], attrs=T, **co)
    axes = g.const(f"{scope}/norm/axes", dims, proto.DT_INT32, **kw)
    l2sum = g.add(f"{scope}/norm/sum", "Sum", [sq, axes], attrs={**T, "keep_dims": g.bool_attr(True), "Tidx": i32}, **co)
    norm = g.add(f"{scope}/norm", "Sqrt", [l2sum], attrs=T, **co)
    c = g.const(f"{scope}/max_norm", group.max_norm, dtype, **kw)
    over = g.add(f"{scope}/over", "Greater", [norm, c], attrs=T, **co)
    flat = g.add(f"{scope}/over/flat", "Reshape", [over, g.const(f"{scope}/over/flat/shape", [-1], proto.DT_INT32, **kw)],
                 attrs={"T": g.type_attr(proto.DT_BOOL), "Tshape": i32}, **co)
    pred = g.add(f"{scope}/exceeds", "Any", [flat, g.const(f"{scope}/exceeds/axis", [0], proto.DT_INT32, **kw)],
                 attrs={"keep_dims": g.bool_attr(False), "Tidx": i32}, **co)
    if gate is not None:
        pred = g.add(f"{scope}/exceeds_and_applied", "LogicalAnd", [pred, gate], **co)
    pivot_t, pivot_f = pivots(g, f"{scope}/cond", pred, at, tag)
    ratio = g.add(f"{scope}/ratio", "RealDiv", [c, norm], attrs=T, control=[pivot_t], **co)
    factor = g.add(f"{scope}/factor", "Select", [over, ratio, g.add(f"{scope}/ones", "OnesLike", [norm], attrs=T, **co)],
                   attrs=T, **co)
    clipped = g.add(f"{scope}/clipped", "Mul", [value, factor], attrs=T, **co)
    write = _write(g, state, group, scope, "set", clipped, rows)
    state.after = [merge(g, f"{scope}/cond", pivot_t, pivot_f, [write], at, tag)]


# the write of a clip: (how, rows?, resource?) -> op
_WRITES = {
    ("sub", True, True): "ResourceScatterSub", ("sub", True, False): "ScatterSub",
    ("sub", False, True): "AssignSubVariableOp", ("sub", False, False): "AssignSub",
    ("set", True, True): "ResourceScatterUpdate", ("set", True, False): "ScatterUpdate",
    ("set", False, True): "AssignVariableOp", ("set", False, False): "Assign",
}


def _write(g: GraphEditor, state: SiteState, group: ClipGroup, scope: str, how: str, value: str,
           rows: str | None) -> str:
    """Subtract ``value`` from the variable (``how`` "sub") or assign it (``how`` "set"), at
    ``rows`` when given; with the variable; ``use_locking`` on ref-variable writes."""
    site = state.site
    op = _WRITES[(how, rows is not None, site.resource)]
    dtype = g.type_attr(site.dtype)
    attrs = {"dtype": dtype} if site.resource else {"T": dtype, "use_locking": g.bool_attr(group.use_locking)}
    if rows is not None:
        attrs["Tindices"] = g.type_attr(site.indices_dtype)
    if op == "Assign":
        attrs["validate_shape"] = g.bool_attr(True)
    inputs = [site.variable, value] if rows is None else [site.variable, rows, value]
    return g.add(f"{scope}/{op}", op, inputs, attrs=attrs, colocate=True, placement=state.placement, tag=group.field)


def _resolve_dims(dims: tuple[int, ...] | None, rank: int | None, variable: str) -> list[int]:
    """The clip dims as non-negative axes; None means every axis (Spec.bind checks the rank)."""
    if rank is None:
        if dims is None:
            raise ValueError(f"{variable}: unknown rank; give clip dims explicitly")
        return list(dims)
    return list(range(rank)) if dims is None else [d % rank for d in dims]


PASS = ClipByNorm()
