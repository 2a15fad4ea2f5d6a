"""All-zero-gradient guard (MultitaskOptimizerWrapper), one ``If`` per guarded tensor.

::

    update = Not(ReduceL1(G, keepdims=0) <= 0)               # some element is non-zero
    X', S'_1.. = If(update,
                    then: the update's ops (moved inside, so a skipped step does no work),
                    else: Identity(X), Identity(S_1), ..)

The sum of absolute values is zero exactly when every element is zero or -0.0; a NaN makes it
NaN, for which ``<= 0`` is false, so a NaN gradient is applied, as in the seed (an infinity
likewise). The branch outputs take the types of X and the states.

onnxruntime's CUDA provider has no ``If`` kernel for ai.onnx opset 21 and newer. For such
models, and only when the update is made of standard ops, the guard selects instead::

    X' = Where(update, <X updated>, X)   (and each state likewise)

which computes the update on every step and keeps the old values on a skipped one.
"""
from __future__ import annotations

from typing import Sequence

import onnx

from optrewrite.onnx.graph import Block, branch, value_info


LAST_OPSET_WITH_CUDA_IF = 20


def any_nonzero(b: Block, g: str, elem: int) -> str:
    total = b.op("ReduceL1", [g], keepdims=0)
    return b.op("Not", [b.op("LessOrEqual", [total, b.const(0.0, elem)])])


def branches(opset: int) -> bool:
    """Whether the guard may skip work with ``If`` at this ai.onnx opset (see above)."""
    return opset <= LAST_OPSET_WITH_CUDA_IF


def guarded(b: Block, cond: str, then: Block, results: Sequence[str], keep: Sequence[str],
            outs: Sequence[str], types: Sequence[onnx.TypeProto | None], *, select: bool = False) -> None:
    """Emit ``outs = If(cond, then's ``results``, ``keep`` unchanged)``.

    With ``select``, ``then``'s nodes run unconditionally and Where picks the results.
    """
    ed = b.editor
    if select:
        b.nodes.extend(then.nodes)
        for result, old, out in zip(results, keep, outs):
            b.op("Where", [cond, result, old], out=out)
        return
    else_ = ed.block(f"{b.scope}/else")
    kept = [else_.op("Identity", [k]) for k in keep]
    then_g = branch(ed.fresh(f"{b.scope}/then"), then.nodes,
                    [value_info(r, t) for r, t in zip(results, types)])
    else_g = branch(ed.fresh(f"{b.scope}/else"), else_.nodes,
                    [value_info(k, t) for k, t in zip(kept, types)])
    b.emit("If", [cond], outs=list(outs), then_branch=then_g, else_branch=else_g)
