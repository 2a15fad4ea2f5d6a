"""Lowering ``ai.onnx.preview.training`` updates to standard ONNX ops, as a pass.

The formulas and the emitters are :mod:`optrewrite.onnx.lowering`. A guard that ran before
already placed a guarded tensor's update, lowered, in its branch; this pass places the
others in their training node's block.
"""
from __future__ import annotations

from typing import Sequence

from optrewrite.onnx.graph import Editor
from optrewrite.onnx.passes.state import SiteState
from optrewrite.passes import Pass, PassResult

TAG = "lower"


class LowerTrainingOps(Pass):
    name = TAG

    def run(self, ed: Editor, states: Sequence[SiteState]) -> PassResult:
        for st in states:
            st.settle_update()
        return PassResult(inserted={st.site.key: [TAG] for st in states})


PASS = LowerTrainingOps()
