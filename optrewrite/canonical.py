"""A canonical, reviewable text form of a TF graph, for golden files and diffs.

Nodes are sorted by name and printed in protobuf text format (attrs sorted by key); the
GraphDef's other fields and, for a MetaGraphDef, everything but the graph follow. Two
graphs that differ only in node order print the same.
"""
from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format

from optrewrite.tf import io, proto


def canonical_file(path: Path) -> str:
    """The canonical text of a graph file of either format (ONNX by its ``.onnx`` suffix)."""
    if path.suffix.lower() == ".onnx":
        import onnx  # noqa: PLC0415

        from optrewrite.onnx.canonical import canonical_text as onnx_text  # noqa: PLC0415

        return onnx_text(onnx.load(str(path), load_external_data=False))
    return canonical_text(io.load(path, path.read_bytes()))


def graph_text(graph: proto.GraphDef) -> str:
    out = []
    for node in sorted(graph.node, key=lambda n: n.name):
        body = text_format.MessageToString(node, as_utf8=True)
        out.append("node {\n" + "".join(f"  {line}\n" for line in body.splitlines()) + "}\n")
    rest = proto.GraphDef()
    rest.CopyFrom(graph)
    del rest.node[:]
    out.append(text_format.MessageToString(rest, as_utf8=True))
    return "".join(out)


def canonical_text(loaded: io.TfGraphFile) -> str:
    """The canonical text of a loaded graph file (GraphDef or MetaGraphDef)."""
    header = f"# {loaded.container}\n"
    if loaded.container == io.GRAPHDEF:
        return header + graph_text(loaded.graph)
    meta = proto.MetaGraphDef()
    meta.CopyFrom(loaded.message)
    meta.ClearField("graph_def")
    return header + graph_text(loaded.graph) + "# rest of the MetaGraphDef\n" + text_format.MessageToString(meta, as_utf8=True)


def structural_diff(before: proto.GraphDef, after: proto.GraphDef) -> list[str]:
    """Node-level differences, by name: added, removed, and changed nodes with what changed."""
    old = {n.name: n for n in before.node}
    new = {n.name: n for n in after.node}
    lines = []
    for name in sorted(old.keys() - new.keys()):
        lines.append(f"- {name} ({old[name].op})")
    for name in sorted(new.keys() - old.keys()):
        node = new[name]
        inputs = ", ".join(node.input)
        lines.append(f"+ {name} = {node.op}({inputs})")
    for name in sorted(old.keys() & new.keys()):
        a, b = old[name], new[name]
        if a == b:
            continue
        parts = []
        if a.op != b.op:
            parts.append(f"op {a.op} -> {b.op}")
        if list(a.input) != list(b.input):
            gone = [i for i in a.input if i not in b.input]
            came = [i for i in b.input if i not in a.input]
            parts.append("inputs " + " ".join([*(f"-{i}" for i in gone), *(f"+{i}" for i in came)]))
        if a.device != b.device:
            parts.append(f"device {a.device!r} -> {b.device!r}")
        changed_attrs = sorted(k for k in a.attr.keys() | b.attr.keys() if a.attr.get(k) != b.attr.get(k))
        if changed_attrs:
            parts.append("attrs " + ", ".join(changed_attrs))
        lines.append(f"~ {name}: " + "; ".join(parts))
    return lines
