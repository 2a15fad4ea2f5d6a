"""The TensorFlow passes, one a module, and the registry the pipeline runs them from.

Each pass edits the graph through :class:`~optrewrite.tf.graph.GraphEditor` on
:class:`~optrewrite.tf.passes.state.SiteState` s. The registry holds, for each kind of
:data:`optrewrite.passes.PASSES`, this package's module of that kind's name
(``PassKind.module``). TensorFlow graphs have no ``lower`` pass: their updates are
standard ops already.
"""
from __future__ import annotations

from typing import Any

from optrewrite.passes import FormatPass, format_registry

REGISTRY: dict[str, FormatPass[Any, Any]] = format_registry(__name__)
