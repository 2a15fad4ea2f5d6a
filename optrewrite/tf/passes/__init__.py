"""The TensorFlow passes, one a module, and the registry the pipeline runs them from.

Each pass edits the graph through :class:`~optrewrite.tf.graph.GraphEditor` on
:class:`~optrewrite.tf.passes.state.SiteState` s; the order is :data:`optrewrite.passes.PASSES`.
TensorFlow graphs have no ``lower`` pass: their updates are standard ops already.
"""
from __future__ import annotations

from typing import Any

from optrewrite.passes import FormatPass
from optrewrite.tf.passes import clip_by_norm, global_norm_clip, guard_zero_grad

REGISTRY: dict[str, FormatPass[Any, Any]] = {
    p.name: p for p in (global_norm_clip.PASS, guard_zero_grad.PASS, clip_by_norm.PASS)
}
