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

The gather and the final write sit with the variable; the norm computation does so too when
the group sets ``colocate_with_variable``. ``use_locking`` goes to the ref-variable writes.
Groups chain: each clip waits for the previous one, and the update's consumers wait for the last.
"""
from __future__ import annotations

from typing import Sequence

from optrewrite.passes import PassResult
from optrewrite.spec import ClipGroup
from optrewrite.tf import proto
from optrewrite.tf.graph import GraphEditor, Placement
from optrewrite.tf.passes.state import SiteState


class ClipByNorm:
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
    clipped = clip_by_norm_subgraph(g, f"{scope}/clip_by_norm", value, dtype, group.max_norm, dims,
                                    placement=at, colocate=group.colocate_with_variable, tag=tag)
    delta = g.add(f"{scope}/sub", "Sub", [value, clipped], attrs=T,
                  colocate=group.colocate_with_variable, **kw)
    locking = {"use_locking": g.bool_attr(group.use_locking)}
    if rows_only:
        idx_attr = {"Tindices": g.type_attr(site.indices_dtype)}
        if site.resource:
            write = g.add(f"{scope}/ResourceScatterSub", "ResourceScatterSub", [var, rows, delta],
                          attrs={"dtype": g.type_attr(dtype), **idx_attr}, colocate=True, **kw)
        else:
            write = g.add(f"{scope}/ScatterSub", "ScatterSub", [var, rows, delta],
                          attrs={**T, **idx_attr, **locking}, colocate=True, **kw)
    elif site.resource:
        write = g.add(f"{scope}/AssignSubVariableOp", "AssignSubVariableOp", [var, delta],
                      attrs={"dtype": g.type_attr(dtype)}, colocate=True, **kw)
    else:
        write = g.add(f"{scope}/AssignSub", "AssignSub", [var, delta],
                      attrs={**T, **locking}, colocate=True, **kw)
    state.after = [write]


def _resolve_dims(dims: tuple[int, ...] | None, rank: int | None, variable: str) -> list[int]:
    """The clip dims as non-negative axes; None means every axis (Spec.bind checks the rank)."""
    if rank is None:
        if dims is None:
            raise ValueError(f"{variable}: unknown rank; give clip dims explicitly")
        return list(dims)
    return list(range(rank)) if dims is None else [d % rank for d in dims]


PASS = ClipByNorm()
