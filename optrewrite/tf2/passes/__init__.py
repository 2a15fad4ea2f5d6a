"""The SavedModel passes, one a module, run by :func:`optrewrite.passes.run_pipeline`.

Each pass edits function bodies through :class:`~optrewrite.tf2.functions.FunctionEditor`
(one per function, carried by each :class:`~optrewrite.tf2.passes.state.SiteState`); the
order is :data:`optrewrite.passes.PASSES`. There is no ``lower`` pass: the updates are
standard ops already.
"""
from __future__ import annotations

from typing import Any

from optrewrite.passes import FormatPass
from optrewrite.tf2.passes import clip_by_norm, global_norm_clip, guard_zero_grad

REGISTRY: dict[str, FormatPass[Any, Any]] = {
    p.name: p for p in (global_norm_clip.PASS, guard_zero_grad.PASS, clip_by_norm.PASS)
}
