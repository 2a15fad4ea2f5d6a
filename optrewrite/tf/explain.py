"""The TensorFlow side of ``optrewrite explain``: sites as found, and a graph view for drawing."""
from __future__ import annotations

from pathlib import Path

from optrewrite.drawing import GNode, GraphView
from optrewrite.explain import Site
from optrewrite.report import SkipEntry
from optrewrite.spec import Spec
from optrewrite.tf import io, proto
from optrewrite.tf.graph import GraphEditor
from optrewrite.tf.sites import find_update_sites


def _shape(shape: tuple[int, ...] | None) -> str:
    return "?" if shape is None else "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"


def found_sites(src: Path, raw: bytes, spec: Spec) -> tuple[str, list[Site], list[SkipEntry]]:
    """The graph's format name, its update sites and the candidates skipped (``spec`` is unused)."""
    del spec
    loaded = io.load(src, raw)
    found = find_update_sites(GraphEditor(loaded.graph, loaded.topology))
    sites = [
        Site(variable=s.variable, shape=_shape(s.shape), dtype=proto.dtype_name(s.dtype), update=s.key,
             kind=s.kind, slots=s.slots, sparse=s.sparse, device=s.device, scope=f"{s.scope}/optrewrite_")
        for s in found.sites
    ]
    return loaded.format_name, sites, [SkipEntry(s.key, s.variable, s.reason) for s in found.skips]


def graph_view(src: Path, raw: bytes) -> GraphView:
    """Every node by name, with its data and control inputs."""
    view = GraphView()
    for node in io.load(src, raw).graph.node:
        data = tuple(i.split(":", 1)[0] for i in node.input if not i.startswith("^"))
        controls = tuple(i[1:] for i in node.input if i.startswith("^"))
        view.nodes[node.name] = GNode(node.name, node.op, data, controls, node.SerializeToString(deterministic=True))
    return view
