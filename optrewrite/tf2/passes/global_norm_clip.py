"""Global-norm gradient clip inside function bodies (clip_gradients_by_global_norm).

The selected sites are grouped by function (a norm spans one step, and a step is one
function); per function, with TensorFlow's exact ops::

    norm  = Sqrt(Sum(Pack(L2Loss(g_1), ..., L2Loss(g_n))) * 2)
    scale = c * Minimum(1 / norm, 1 / c) + (norm - norm)         # NaN when norm is not finite
    g_i'  = Identity(g_i * scale)

and every consumer of g_i on the way to the site's writes takes g_i' instead; the guard then
tests g_i'. A selected gradient that depends on another selected site's writes is refused
(the clip would make the update feed itself).
"""
from __future__ import annotations

from typing import Sequence

from optrewrite.errors import SpecError
from optrewrite.passes import Pass, PassResult
from optrewrite.tf import proto
from optrewrite.tf2.functions import FunctionEditor, node_of
from optrewrite.tf2.passes.state import SiteState, check_acyclic

TAG = "global_norm_clip"


class GlobalNormClip(Pass):
    name = TAG

    def run(self, editor: object, states: Sequence[SiteState]) -> PassResult:
        (rule,) = states[0].selection.of(TAG)
        dtypes = sorted({proto.dtype_name(st.site.var.dtype) for st in states})
        if len(dtypes) != 1:
            raise SpecError(rule.source, TAG, f"the selected gradients have different dtypes ({', '.join(dtypes)})")
        by_fn: dict[str, list[SiteState]] = {}
        for st in states:
            by_fn.setdefault(st.site.function, []).append(st)
        for chosen in by_fn.values():
            global_norm_clip(chosen[0].editor, chosen, rule.options)
        return PassResult(inserted={st.site.key: [TAG] for st in states})


def _ancestors(g: FunctionEditor, names: list[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(names)
    while stack:
        n = stack.pop()
        if n in seen or n not in g.index:
            continue
        seen.add(n)
        stack.extend(node_of(i) for i in g.node(n).input)
    return seen


def global_norm_clip(g: FunctionEditor, states: list[SiteState], clip_norm: float) -> None:
    check_acyclic(g, states, "global_norm_clip", "clipping them together")
    dtype = states[0].site.var.dtype
    T = {"T": g.type_attr(dtype)}
    scope = g.unique_name("optrewrite/global_norm_clip")
    kw = {"tag": TAG}
    losses = [g.add(f"{scope}/global_norm/L2Loss_{i}", "L2Loss", [st.gradient], attrs=T, **kw)
              for i, st in enumerate(states)]
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
    for st in states:
        upstream = _ancestors(g, list(st.site.writes))
        inner = g.unique_name(f"{st.site.scope}/optrewrite_global_norm_clip")
        mul = g.add(f"{inner}/mul", "Mul", [st.gradient, scale], attrs=T, **kw)
        clipped = g.add(f"{inner}/clipped", "Identity", [mul], attrs=T, **kw)
        ours = set(g.added)
        for name in sorted(upstream - ours):
            node = g.node(name)
            for pos, inp in enumerate(node.input):
                if inp == st.gradient:
                    g.set_input(name, pos, clipped)
        st.gradient = clipped


PASS = GlobalNormClip()
