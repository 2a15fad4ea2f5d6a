"""Global-norm gradient clip (clip_gradients_by_global_norm), TensorFlow's exact formula.

Over the selected gradients g_1..g_n (one element type)::

    norm  = Sqrt(Sum(ReduceSum(g_i * g_i * 0.5)) * 2)       # TF's L2Loss, then global_norm
    scale = c * Min(1 / norm, 1 / c) + (norm - norm)        # NaN when norm is not finite
    g_i'  = g_i * scale

An all-zero gradient adds nothing to the norm and stays zero, so the guard still sees it.
"""
from __future__ import annotations

from onnx import helper

from optrewrite.onnx.graph import Block


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
