"""The SavedModel side of ``optrewrite explain``: the sites inside functions, the bodies after the rewrite.

One row per variable (as the report: :mod:`optrewrite.tf2.rewrite`), its update naming
``<function>/<last write>`` of every function that updates it. In the drawing, body nodes are
named ``<node>@<function>``, so that the nodes inserted for a variable in every copy of the
step (``optrewrite/<variable>/...@F1``, ``...@F2``) share the row's prefix
``optrewrite/<variable>/`` and count for that one row.
"""
from __future__ import annotations

from pathlib import Path

from optrewrite.core import Analysis, Site
from optrewrite.drawing import Changes, GNode, GraphView
from optrewrite.spec import Spec
from optrewrite.tf import proto
from optrewrite.tf2 import io
from optrewrite.tf2.functions import node_of
from optrewrite.tf2.rewrite import FORMAT_NAME, by_variable, discover, kind_of, merge_skips, rewrite_savedmodel, update_name


def _shape(shape: tuple[int, ...] | None) -> str:
    return "?" if shape is None else "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"


def analyse(src: Path, raw: bytes, spec: Spec | None) -> Analysis:
    """Parse once; with a spec, rewrite in memory (nothing is serialized)."""
    loaded = io.load(src, raw)
    found = discover(loaded)
    sites = []
    for group in by_variable(found.sites):
        s = group[0]
        slots = tuple(dict.fromkeys(v.path for site in group for v in site.slots))
        sites.append(Site(variable=s.var.path, shape=_shape(s.var.shape), dtype=proto.dtype_name(s.var.dtype),
                          update=update_name(group), kind=kind_of(group), slots=slots,
                          sparse=any(site.sparse for site in group), device="", scope=f"{s.scope}/"))
    result = Analysis(FORMAT_NAME, sites, merge_skips(found.skips))
    if spec is not None:
        outcome = rewrite_savedmodel(io.load(src, raw), spec)
        editors = outcome.graph.editors
        added = [_key(name, n) for name, e in editors.items() for n in e.added]
        changed = {_key(name, n) for name, e in editors.items() for n in e.changed}
        result.report = outcome.report
        result.changes = Changes(added, changed)
        result.view = lambda: graph_view(outcome.graph.loaded.meta.graph_def.library)
    return result


def _key(function: str, node: str) -> str:
    return f"{node}@{function}"


def graph_view(library: proto.FunctionDefLibrary) -> GraphView:
    """Every function body's nodes, named ``<node>@<function>``, with their data and control inputs."""
    view = GraphView()
    for fn in library.function:
        fname = fn.signature.name
        for node in fn.node_def:
            data, controls = [], []
            for i in node.input:
                (controls if i.startswith("^") else data).append(_key(fname, node_of(i)))
            key = _key(fname, node.name)
            view.nodes[key] = GNode(key, node.op, tuple(data), tuple(controls))
    return view
