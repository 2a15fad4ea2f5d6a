"""All-zero-gradient guard (MultitaskOptimizerWrapper), one ``If`` per guarded tensor.

::

    update = ReduceMin(Cast(G == 0, E), keepdims=0) < 1      # some element is non-zero
    X', S'_1.. = If(update,
                    then: the update's ops (moved inside, so a skipped step does no work),
                    else: Identity(X), Identity(S_1), ..)

-0.0 compares equal to zero; NaN does not, so a NaN gradient is applied, as in the seed.
The branch outputs take the types of X and the states.
"""
from __future__ import annotations

from typing import Sequence

import onnx

from optrewrite.onnx.graph import Block, branch, value_info


def any_nonzero(b: Block, g: str, elem: int) -> str:
    zero = b.op("Cast", [b.op("Equal", [g, b.const(0.0, elem)])], to=elem)
    return b.op("Less", [b.op("ReduceMin", [zero], keepdims=0), b.const(1.0, elem)])


def guarded(b: Block, cond: str, then: Block, results: Sequence[str], keep: Sequence[str],
            outs: Sequence[str], types: Sequence[onnx.TypeProto | None]) -> None:
    """Emit ``outs = If(cond, then's ``results``, ``keep`` unchanged)``."""
    ed = b.editor
    else_ = ed.block(f"{b.scope}/else")
    kept = [else_.op("Identity", [k]) for k in keep]
    then_g = branch(ed.fresh(f"{b.scope}/then"), then.nodes,
                    [value_info(r, t) for r, t in zip(results, types)])
    else_g = branch(ed.fresh(f"{b.scope}/else"), else_.nodes,
                    [value_info(k, t) for k, t in zip(kept, types)])
    b.emit("If", [cond], outs=list(outs), then_branch=then_g, else_branch=else_g)
