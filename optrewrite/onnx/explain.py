"""The ONNX side of ``optrewrite explain``: the sites as found, the graph before and after.

Graph inputs and initializers that nodes read appear in the view as nodes of op
``input`` / ``initializer``, so a drawing shows the variable and gradient tensors.
"""
from __future__ import annotations

from pathlib import Path

import onnx

from optrewrite.core import Analysis, Site
from optrewrite.drawing import Changes, GNode, GraphView
from optrewrite.onnx import io
from optrewrite.onnx.graph import PREFIX, Editor, elem_type_name
from optrewrite.onnx.rewrite import blaming_malformed_input, rewrite_onnx
from optrewrite.onnx.sites import find_update_sites
from optrewrite.spec import Spec


def _no_spec() -> Spec:
    return Spec(source="<no spec>", version=1, guard=None, clip=(), global_norm_clip=None, lower=False, updates=())


def _shape(ed: Editor, name: str) -> str:
    t = ed.types.get(name)
    if t is None or not t.tensor_type.HasField("shape"):
        return "?"
    dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in t.tensor_type.shape.dim]
    return "[" + ", ".join(dims) + "]"


def analyse(src: Path, raw: bytes, spec: Spec | None, *, lower: bool) -> Analysis:
    """The sites (a spec's ``updates:`` included); with a spec, the model rewritten in memory.

    One parse: the rewrite edits the parsed model in place. What it changed comes from its
    editor's record and a comparison of the node lists' structure; no node is serialized."""
    loaded = io.load(src, raw)
    with blaming_malformed_input(loaded):
        before = graph_view(loaded.model.graph)
        ed = Editor(loaded.model)
        found = find_update_sites(ed, spec or _no_spec(), src)
    sites = [
        Site(variable=s.variable, shape=_shape(ed, s.variable),
             dtype=elem_type_name(s.elem_type), update=s.key, kind=s.kind,
             slots=tuple(old for old, _ in s.states), sparse=False, device="", scope=f"{PREFIX}/{s.variable}/")
        for s in found.sites
    ]
    result = Analysis(loaded.format_name, sites, list(found.skips))
    if spec is not None:
        outcome = rewrite_onnx(loaded, spec, lower=lower)
        after = graph_view(loaded.model.graph)
        result.report = outcome.report
        result.changes = Changes.between(before, after, edited=outcome.changed)
        result.view = lambda: after
    return result


def _key(node: onnx.NodeProto, index: int) -> str:
    return node.name or (node.output[0] if node.output else f"#{index}")


def _nested(node: onnx.NodeProto) -> tuple[str, ...]:
    keys: list[str] = []
    for attr in node.attribute:
        for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for i, inner in enumerate(g.node):
                keys += [_key(inner, i), *_nested(inner)]
    return tuple(keys)


def graph_view(graph: onnx.GraphProto) -> GraphView:
    """Every top-level node, keyed by name (or first output), with the nodes it reads."""
    view = GraphView()
    producer: dict[str, str] = {}
    keys = []
    for i, node in enumerate(graph.node):
        key = _key(node, i)
        keys.append(key)
        for out in node.output:
            producer[out] = key
    fresh_const = f"{PREFIX}/const"
    for kind, names in (("input", [v.name for v in graph.input]), ("initializer", [t.name for t in graph.initializer])):
        for name in names:
            if name not in producer and not name.startswith(fresh_const):
                producer[name] = name
                view.nodes[name] = GNode(name, kind, ())
    for key, node in zip(keys, graph.node):
        reads = tuple(producer[i] for i in node.input if i in producer)
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        view.nodes[key] = GNode(key, op, reads, (), nested=_nested(node))
    return view
