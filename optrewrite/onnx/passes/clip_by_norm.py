"""Post-update clip-by-norm (VariableClippingOptimizer), TensorFlow's exact formula.

For the variable's new value X and a clip group (max_norm c, dims)::

    l2sum   = ReduceSum(X * X, dims, keepdims=1)          # all dims when none are given
    pred    = l2sum > 0
    l2norm  = Where(pred, Sqrt(Where(pred, l2sum, 1)), l2sum)
    clipped = X * c / Max(l2norm, c)
    X_final = X - (X - clipped)                           # the seed's assign_sub

A zero norm leaves X unchanged; no epsilon is added (TF's clip_by_norm).
"""
from __future__ import annotations

from onnx import TensorProto

from optrewrite.onnx.graph import Block
from optrewrite.spec import ClipGroup


def clip_by_norm(b: Block, x: str, group: ClipGroup, elem: int, out: str) -> None:
    c = b.const(group.max_norm, elem)
    axes = [] if group.dims is None else [b.const(list(group.dims), TensorProto.INT64)]
    l2sum = b.op("ReduceSum", [b.op("Mul", [x, x]), *axes], keepdims=1)
    pred = b.op("Greater", [l2sum, b.const(0.0, elem)])
    safe = b.op("Where", [pred, l2sum, b.const(1.0, elem)])
    l2norm = b.op("Where", [pred, b.op("Sqrt", [safe]), l2sum])
    clipped = b.op("Div", [b.op("Mul", [x, c]), b.op("Max", [l2norm, c])])
    b.op("Sub", [x, b.op("Sub", [x, clipped])], out=out)
