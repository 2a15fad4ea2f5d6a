"""The ONNX passes, one a module, and the registry the pipeline runs them from.

Each pass emits standard ONNX ops into :class:`~optrewrite.onnx.graph.Block` s of the
:class:`~optrewrite.onnx.graph.Editor`, working on :class:`~optrewrite.onnx.passes.state.SiteState` s.
The registry holds, for each kind of :data:`optrewrite.passes.PASSES`, this package's module
of that kind's name (``PassKind.module``).
"""
from __future__ import annotations

from typing import Any

from optrewrite.passes import FormatPass, format_registry

REGISTRY: dict[str, FormatPass[Any, Any]] = format_registry(__name__)
