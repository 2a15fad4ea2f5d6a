"""The TensorFlow side of ``optrewrite explain``: the sites as found, the graph after the rewrite."""
from __future__ import annotations

from pathlib import Path

from optrewrite.core import Analysis, Site
from optrewrite.drawing import Changes, GNode, GraphView
from optrewrite.spec import Spec
from optrewrite.tf import io, proto
from optrewrite.tf.graph import GraphEditor
from optrewrite.tf.rewrite import discover, rewrite_tf


def _shape(shape: tuple[int, ...] | None) -> str:
    return "?" if shape is None else "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"


def analyse(src: Path, raw: bytes, spec: Spec | None) -> Analysis:
    """Parse once; with a spec, rewrite that parsed graph in memory (the rewrite edits it in
    place and appends the nodes it inserts). Nothing is serialized."""
    loaded = io.load(src, raw)
    editor = GraphEditor(loaded.graph, loaded.topology)
    found = discover(loaded, editor)
    sites = [
        Site(variable=s.variable, shape=_shape(s.shape), dtype=proto.dtype_name(s.dtype), update=s.key,
             kind=s.kind, slots=s.slots, sparse=s.sparse, device=s.device, scope=f"{s.scope}/")
        for s in found.sites
    ]
    result = Analysis(loaded.format_name, sites, list(found.skips))
    if spec is not None:
        outcome = rewrite_tf(loaded, spec, discovered=(editor, found))
        changed = outcome.graph.editor is not None
        result.report = outcome.report
        result.changes = Changes(editor.added if changed else [], set(outcome.changed))
        result.view = lambda: graph_view(loaded.graph)
    return result


def graph_view(graph: proto.GraphDef) -> GraphView:
    """Every node by name, with its data and control inputs."""
    view = GraphView()
    nodes = view.nodes
    for node in graph.node:
        data, controls = [], []
        for i in node.input:
            if i.startswith("^"):
                controls.append(i[1:])
            else:
                data.append(i.partition(":")[0])
        nodes[node.name] = GNode(node.name, node.op, tuple(data), tuple(controls))
    return view
