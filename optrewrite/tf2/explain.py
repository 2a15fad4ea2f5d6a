"""The SavedModel side of ``optrewrite explain``: the sites inside functions, the bodies after the rewrite.

Rows name the variable by its object-graph path and the update by ``<function>/<last write>``;
inserted and changed nodes are named ``<function>/<node>``, so that explain's drawing groups
them per site like any graph's.
"""
from __future__ import annotations

from pathlib import Path

from optrewrite.core import Analysis, Site
from optrewrite.drawing import Changes, GNode, GraphView
from optrewrite.spec import Spec
from optrewrite.tf import proto
from optrewrite.tf2 import io
from optrewrite.tf2.functions import node_of
from optrewrite.tf2.rewrite import FORMAT_NAME, discover, rewrite_savedmodel


def _shape(shape: tuple[int, ...] | None) -> str:
    return "?" if shape is None else "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"


def analyse(src: Path, raw: bytes, spec: Spec | None) -> Analysis:
    """Parse once; with a spec, rewrite in memory (nothing is serialized)."""
    loaded = io.load(src, raw)
    found = discover(loaded)
    sites = [
        Site(variable=s.var.path, shape=_shape(s.var.shape), dtype=proto.dtype_name(s.var.dtype), update=s.key,
             kind=s.kind, slots=tuple(v.path for v in s.slots), sparse=s.sparse, device="",
             scope=f"{s.function}/{s.scope}/")
        for s in found.sites
    ]
    result = Analysis(FORMAT_NAME, sites, list(found.skips))
    if spec is not None:
        outcome = rewrite_savedmodel(io.load(src, raw), spec)
        editors = outcome.graph.editors
        added = [f"{name}/{n}" for name, e in editors.items() for n in e.added]
        result.report = outcome.report
        result.changes = Changes(added, set(outcome.changed))
        result.view = lambda: graph_view(outcome.graph.loaded.meta.graph_def.library)
    return result


def graph_view(library: proto.FunctionDefLibrary) -> GraphView:
    """Every function body's nodes, named ``<function>/<node>``, with their data and control inputs."""
    view = GraphView()
    for fn in library.function:
        prefix = fn.signature.name
        for node in fn.node_def:
            data, controls = [], []
            for i in node.input:
                (controls if i.startswith("^") else data).append(f"{prefix}/{node_of(i)}")
            view.nodes[f"{prefix}/{node.name}"] = GNode(f"{prefix}/{node.name}", node.op, tuple(data), tuple(controls))
    return view
