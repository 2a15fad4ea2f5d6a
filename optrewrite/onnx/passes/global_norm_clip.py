"""Global-norm gradient clip (clip_gradients_by_global_norm), TensorFlow's exact formula.

Over the selected gradients g_1..g_n (one element type)::

    norm  = Sqrt(Sum(ReduceSum(g_i * g_i * 0.5)) * 2)       # TF's L2Loss, then global_norm
    scale = c * Min(1 / norm, 1 / c) + (norm - norm)        # NaN when norm is not finite
    g_i'  = g_i * scale

An all-zero gradient adds nothing to the norm and stays zero, so the guard still sees it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from onnx import helper

from optrewrite.errors import SpecError
from optrewrite.onnx.graph import PREFIX, Block, Editor, elem_type_name
from optrewrite.passes import Pass, PassResult

if TYPE_CHECKING:
    from optrewrite.onnx.passes.state import SiteState

TAG = "global_norm_clip"


class GlobalNormClip(Pass):
    name = TAG

    def run(self, ed: Editor, states: Sequence[SiteState]) -> PassResult:
        """One clip over every given site's gradient, placed before the first update that
        reads one (the final ordering moves it later when a gradient is produced after that)."""
        (rule,) = states[0].selection.of(TAG)
        types = sorted({elem_type_name(st.site.elem_type) for st in states})
        if len(types) != 1:
            raise SpecError(rule.source, TAG, f"the selected gradients have different element types ({', '.join(types)})")
        b = ed.block(f"{PREFIX}/{TAG}")
        clipped = global_norm_clip(b, [st.gradient for st in states], rule.options, states[0].site.elem_type)
        ed.insert_before(first_use(ed, states), b.nodes)
        for st, new in zip(states, clipped):
            old, st.gradient = st.gradient, new
            if st.declared is not None:  # the update's own ops read the clipped gradient
                for i in st.declared.readers.get(old, set()) & st.cone:
                    node = ed.graph.node[i]
                    ed.set_io(i, inputs=[new if name == old else name for name in node.input])
        return PassResult(inserted={st.site.key: [TAG] for st in states})


def first_use(ed: Editor, states: Sequence[SiteState]) -> int:
    """The first node that reads one of the sites' gradients for its update."""
    firsts = [st.site.node for st in states if st.site.node is not None]
    wanted = {st.site.gradient for st in states if st.site.node is None}
    if wanted:
        firsts += [next((i for i, n in enumerate(ed.graph.node) if not wanted.isdisjoint(n.input)),
                        len(ed.graph.node) - 1)]
    return min(firsts)


def global_norm_clip(b: Block, gradients: list[str], clip_norm: float, elem: int) -> list[str]:
    """Emit the clip; return the clipped gradients' names, in order."""
    half = b.const(0.5, elem)
    losses = [b.op("ReduceSum", [b.op("Mul", [b.op("Mul", [g, g]), half])], keepdims=0) for g in gradients]
    total = b.op("Sum", losses) if len(losses) > 1 else losses[0]
    norm = b.op("Sqrt", [b.op("Mul", [total, b.const(2.0, elem)])])
    np_type = helper.tensor_dtype_to_np_dtype(elem).type
    inv_c = b.const(np_type(1.0) / np_type(clip_norm), elem)
    smaller = b.op("Min", [b.op("Div", [b.const(1.0, elem), norm]), inv_c])
    finite = b.op("Mul", [b.const(clip_norm, elem), smaller])
    scale = b.op("Add", [finite, b.op("Sub", [norm, norm])])
    return [b.op("Mul", [g, scale]) for g in gradients]


PASS = GlobalNormClip()
