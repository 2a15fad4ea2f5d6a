"""Global-norm gradient clip (clip_gradients_by_global_norm).

Over the selected sites' gradients g_i (a sparse gradient's values, as the update consumes
them), with TensorFlow's exact ops::

    norm  = Sqrt(Sum(Pack(L2Loss(g_1), ..., L2Loss(g_n))) * 2)
    scale = c * Minimum(1 / norm, 1 / c) + (norm - norm)         # NaN when norm is not finite
    g_i'  = Identity(g_i * scale)                                 # feeds the update instead of g_i

An all-zero gradient adds nothing to the norm, so MultitaskOptimizerWrapper's replacement of such gradients
by a scalar zero changes no number; the guard then tests the clipped gradient.
"""
from __future__ import annotations

from typing import Sequence

from optrewrite.errors import InputError, SpecError
from optrewrite.passes import Pass, PassResult
from optrewrite.tf import proto
from optrewrite.tf.graph import LOOP_BACK_EDGES, GraphEditor, Placement, node_of
from optrewrite.tf.passes.state import SiteState

TAG = "global_norm_clip"


class GlobalNormClip(Pass):
    name = TAG

    def run(self, g: GraphEditor, states: Sequence[SiteState]) -> PassResult:
        """One clip over every given site's gradient (all selected by the same rule)."""
        (rule,) = states[0].selection.of(TAG)
        dtypes = sorted({proto.dtype_name(st.site.dtype) for st in states})
        if len(dtypes) != 1:
            raise SpecError(rule.source, TAG, f"the selected gradients have different dtypes ({', '.join(dtypes)})")
        global_norm_clip(g, list(states), rule.options)
        return PassResult(inserted={st.site.key: [TAG] for st in states})


def check_acyclic(g: GraphEditor, states: list[SiteState], what: str = TAG,
                   doing: str = "clipping them together") -> None:
    """Scaling (or testing) every gradient by a value over all of them must not make an
    update feed itself."""
    sinks = {s for st in states for s in (*st.site.sinks, *st.site.writes)}
    seen: set[str] = set()
    stack = [node_of(st.gradient) for st in states]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in sinks:
            raise InputError(
                f"{what}: a selected gradient depends on the update {name!r}; {doing} would create a cycle"
            )
        node = g.node(name)
        if node.op in LOOP_BACK_EDGES:
            continue
        stack.extend(node_of(i) for i in node.input)


def global_norm_clip(g: GraphEditor, states: list[SiteState], clip_norm: float) -> None:
    check_acyclic(g, states)
    dtype = states[0].site.dtype
    T = {"T": g.type_attr(dtype)}
    first = states[0].site
    at = Placement(device=first.device)
    scope = g.unique_name("optrewrite/global_norm_clip")
    kw = {"placement": at, "tag": TAG}
    losses = []
    for i, st in enumerate(states):
        here = {"placement": st.placement, "tag": TAG}
        losses.append(g.add(f"{scope}/global_norm/L2Loss_{i}", "L2Loss", [st.gradient], attrs=T, **here))
    stack = g.add(f"{scope}/global_norm/stack", "Pack", losses,
                  attrs={**T, "N": g.int_attr(len(losses)), "axis": g.int_attr(0)}, **kw)
    axis = g.const(f"{scope}/global_norm/Const", [0], proto.DT_INT32, **kw)
    total = g.add(f"{scope}/global_norm/Sum", "Sum", [stack, axis],
                  attrs={**T, "keep_dims": g.bool_attr(False), "Tidx": g.type_attr(proto.DT_INT32)}, **kw)
    two = g.const(f"{scope}/global_norm/Const_1", 2.0, dtype, **kw)
    doubled = g.add(f"{scope}/global_norm/mul", "Mul", [total, two], attrs=T, **kw)
    norm = g.add(f"{scope}/global_norm/global_norm", "Sqrt", [doubled], attrs=T, **kw)
    one = g.const(f"{scope}/truediv/x", 1.0, dtype, **kw)
    inv_norm = g.add(f"{scope}/truediv", "RealDiv", [one, norm], attrs=T, **kw)
    one_b = g.const(f"{scope}/Const", 1.0, dtype, **kw)
    c = g.const(f"{scope}/truediv_1/y", clip_norm, dtype, **kw)
    inv_c = g.add(f"{scope}/truediv_1", "RealDiv", [one_b, c], attrs=T, **kw)
    smaller = g.add(f"{scope}/Minimum", "Minimum", [inv_norm, inv_c], attrs=T, **kw)
    c_b = g.const(f"{scope}/mul/x", clip_norm, dtype, **kw)
    finite = g.add(f"{scope}/mul", "Mul", [c_b, smaller], attrs=T, **kw)
    nan_if_inf = g.add(f"{scope}/sub", "Sub", [norm, norm], attrs=T, **kw)
    scale = g.add(f"{scope}/scale", "AddV2", [finite, nan_if_inf], attrs=T, **kw)
    for i, st in enumerate(states):
        here = {"placement": st.placement, "tag": TAG}
        inner = f"{st.site.scope}/optrewrite_global_norm_clip"
        mul = g.add(f"{inner}/mul", "Mul", [st.gradient, scale], attrs=T, **here)
        clipped = g.add(f"{inner}/clipped", "Identity", [mul], attrs=T, **here)
        for member, pos in st.site.grad_uses:
            g.replace_input(member, pos, clipped)
        st.gradient = f"{clipped}:0"


PASS = GlobalNormClip()
