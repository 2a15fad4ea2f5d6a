"""A canonical, reviewable text form of an ONNX model, for golden files and diffs.

Model fields and metadata come first (sorted), then the graph: inputs, outputs, initializers
by element type, shape and SHA-256 of their bytes (external ones by location), value_info
sorted by name, and the nodes in graph order (ONNX orders them topologically), each as
``outputs = domain::Op<attributes>(inputs)  # name`` with subgraphs indented below.
"""
from __future__ import annotations

import hashlib

import onnx
from onnx import AttributeProto, TensorProto, helper


def _tensor(t: TensorProto) -> str:
    kind = TensorProto.DataType.Name(t.data_type).lower()
    shape = "x".join(map(str, t.dims)) or "scalar"
    if t.data_location == TensorProto.EXTERNAL:
        where = ", ".join(f"{e.key}={e.value}" for e in t.external_data)
        return f"{t.name}: {kind}[{shape}] external({where})"
    body = t.SerializeToString(deterministic=True)
    return f"{t.name}: {kind}[{shape}] sha256={hashlib.sha256(body).hexdigest()[:16]}"


def _value(v: onnx.ValueInfoProto) -> str:
    return f"{v.name}: {helper.printable_type(v.type) if v.HasField('type') else '?'}"


def _attr(a: AttributeProto) -> str:
    if a.type == AttributeProto.TENSOR:
        return f"{a.name}={_tensor(a.t)}"
    return helper.printable_attribute(a)


def _graph(g: onnx.GraphProto, indent: str) -> list[str]:
    lines = [f"{indent}graph {g.name}"]
    lines += [f"{indent}  input {_value(v)}" for v in g.input]
    lines += [f"{indent}  output {_value(v)}" for v in g.output]
    lines += [f"{indent}  initializer {_tensor(t)}" for t in g.initializer]
    lines += [f"{indent}  value_info {_value(v)}" for v in sorted(g.value_info, key=lambda v: v.name)]
    for node in g.node:
        plain = [a for a in node.attribute if a.type not in (AttributeProto.GRAPH, AttributeProto.GRAPHS)]
        attrs = f"<{', '.join(_attr(a) for a in sorted(plain, key=lambda a: a.name))}>" if plain else ""
        op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        lines.append(f"{indent}  {', '.join(node.output)} = {op}{attrs}({', '.join(node.input)})"
                     + (f"  # {node.name}" if node.name else ""))
        for a in sorted(node.attribute, key=lambda a: a.name):
            subs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs) if a.type == AttributeProto.GRAPHS else []
            for sub in subs:
                lines.append(f"{indent}    {a.name}:")
                lines += _graph(sub, indent + "      ")
    return lines


def canonical_text(model: onnx.ModelProto) -> str:
    lines = [
        "# ONNX model",
        f"ir_version {model.ir_version}",
        *(f"opset {o.domain or 'ai.onnx'} {o.version}" for o in sorted(model.opset_import, key=lambda o: o.domain)),
        f"producer {model.producer_name} {model.producer_version}".rstrip(),
        *(f"metadata {p.key} = {p.value}" for p in sorted(model.metadata_props, key=lambda p: p.key)),
        *(f"function {f.domain}::{f.name} sha256={hashlib.sha256(f.SerializeToString(deterministic=True)).hexdigest()[:16]}"
          for f in model.functions),
    ]
    return "\n".join(lines + _graph(model.graph, "")) + "\n"
