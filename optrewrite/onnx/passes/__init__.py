"""The ONNX passes, one a module, and the registry the pipeline runs them from.

Each pass emits standard ONNX ops into :class:`~optrewrite.onnx.graph.Block` s of the
:class:`~optrewrite.onnx.graph.Editor`, working on :class:`~optrewrite.onnx.passes.state.SiteState` s;
the order is :data:`optrewrite.passes.PASSES`.
"""
from __future__ import annotations

from typing import Any

from optrewrite.onnx.passes import clip_by_norm, global_norm_clip, guard_zero_grad, lower_training_ops
from optrewrite.passes import FormatPass

REGISTRY: dict[str, FormatPass[Any, Any]] = {
    p.name: p for p in (global_norm_clip.PASS, guard_zero_grad.PASS, clip_by_norm.PASS, lower_training_ops.PASS)
}
