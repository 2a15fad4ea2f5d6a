"""Post-update clip-by-norm (VariableClippingOptimizer), TensorFlow's formula.

For the variable's new value X and a clip group (max_norm c, dims)::

    l2sum   = ReduceSumSquare(X, dims, keepdims=1)        # all dims when none are given
    pred    = l2sum > 0
    l2norm  = Where(pred, Sqrt(Where(pred, l2sum, 1)), l2sum)
    over    = Not(l2norm <= c)                            # NaN counts as over, as in TF
    X_final = If(ReduceSum(Where(over, 1, 0)) > 0,
                 then: X - (X - X * c / Max(l2norm, c)),  # VariableClippingOptimizer's assign_sub
                 else: X)

A zero norm leaves X unchanged; no epsilon is added (TF's clip_by_norm). The ``If`` skips
the full-size work on the common step where nothing exceeds the norm; such a tensor then
comes out bit for bit unchanged (TF's formula computes X * c / c there, which can move an
element by one ulp). Where onnxruntime's CUDA provider has no ``If`` (ai.onnx opset 21 and
newer) the clipped value is computed every step, exactly as TF does.

``formula: exact`` writes the clipped value itself, as the TensorFlow passes do::

    norm    = Sqrt(ReduceSumSquare(X, dims, keepdims=1));  over = norm > c   # NaN is not over
    X_final = If(some over, then: X * Where(over, c / norm, 1), else: X)

(without an ``If``: ``X * Where(over, c / norm, 1)`` every step; ``X * 1`` is X bit for bit).
With ``on_skipped_steps: false`` a guarded tensor's clip also needs the guard's condition
(the update ran): it joins the ``If``'s condition (or the ``Where``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import onnx

from optrewrite.onnx.graph import PREFIX, Block, Editor, branch, value_info
from optrewrite.onnx.passes.guard_zero_grad import branches
from optrewrite.passes import Pass, PassResult
from optrewrite.spec import ClipGroup

if TYPE_CHECKING:
    from optrewrite.onnx.passes.state import SiteState


class ClipByNorm(Pass):
    name = "clip"

    def run(self, ed: Editor, states: Sequence[SiteState]) -> PassResult:
        """After each site's update: its clip groups in spec order, the last one producing
        the name the update produced."""
        result = PassResult()
        for st in states:
            st.settle_update()
            actions = st.selection.of(self.name)
            site = st.site
            b = ed.block(f"{st.scope}/clip")
            x = st.x_out
            for k, action in enumerate(actions):
                group = action.options
                last = k == len(actions) - 1
                out = site.updated if last else ed.fresh(f"{site.updated}/{PREFIX}_{group.field}")
                clip_by_norm(b, x, group, site.elem_type, out, ed.types.get(site.variable),
                             gate=None if group.on_skipped_steps else st.applied)
                x = out
            if st.group is not None:
                st.tails.append(b)
            else:
                assert st.declared is not None
                ed.insert_after(max(st.declared.producer[o] for o in st.site_outs), b.nodes)
            result.inserted[site.key] = [a.label for a in actions]
        return result


def clip_by_norm(b: Block, x: str, group: ClipGroup, elem: int, out: str, like: onnx.TypeProto | None,
                 *, gate: str | None = None) -> None:
    """``out`` = X clipped by ``group``; ``gate`` (a scalar bool), when given, must also hold."""
    ed = b.editor
    c = b.const(group.max_norm, elem)
    l2sum = b.reduce("ReduceSumSquare", x, group.dims, keepdims=1)
    if group.formula == "exact":
        norm = b.op("Sqrt", [l2sum])
        over = b.op("Greater", [norm, c])
        if gate is not None:
            over = b.op("And", [over, gate])
        if not branches(ed.opset or 0):
            _exact(b, x, c, norm, over, elem, out)
            return
        clip = ed.block(f"{b.scope}/clip")
        result = _exact(clip, x, c, norm, over, elem, ed.fresh(f"{out}/{PREFIX}_clipped"))
    else:
        pred = b.op("Greater", [l2sum, b.const(0.0, elem)])
        safe = b.op("Where", [pred, l2sum, b.const(1.0, elem)])
        l2norm = b.op("Where", [pred, b.op("Sqrt", [safe]), l2sum])
        if not branches(ed.opset or 0):
            if gate is None:
                _clipped(b, x, c, l2norm, out)
            else:
                b.op("Where", [gate, _clipped(b, x, c, l2norm, ed.fresh(f"{out}/{PREFIX}_clipped")), x], out=out)
            return
        over = b.op("Not", [b.op("LessOrEqual", [l2norm, c])])
        clip = ed.block(f"{b.scope}/clip")
        result = _clipped(clip, x, c, l2norm, ed.fresh(f"{out}/{PREFIX}_clipped"))
    count = b.reduce("ReduceSum", b.op("Where", [over, b.const(1.0, elem), b.const(0.0, elem)]), None, keepdims=0)
    cond = b.op("Greater", [count, b.const(0.0, elem)])
    if gate is not None and group.formula != "exact":  # the exact formula's ``over`` has it
        cond = b.op("And", [cond, gate])
    keep = ed.block(f"{b.scope}/within")
    kept = keep.op("Identity", [x])
    b.emit("If", [cond], outs=[out],
           then_branch=branch(ed.fresh(f"{b.scope}/clip"), clip.nodes, [value_info(result, like)]),
           else_branch=branch(ed.fresh(f"{b.scope}/within"), keep.nodes, [value_info(kept, like)]))


def _exact(b: Block, x: str, c: str, norm: str, over: str, elem: int, out: str) -> str:
    factor = b.op("Where", [over, b.op("Div", [c, norm]), b.const(1.0, elem)])
    return b.op("Mul", [x, factor], out=out)


def _clipped(b: Block, x: str, c: str, l2norm: str, out: str) -> str:
    clipped = b.op("Div", [b.op("Mul", [x, c]), b.op("Max", [l2norm, c])])
    return b.op("Sub", [x, b.op("Sub", [x, clipped])], out=out)


PASS = ClipByNorm()
