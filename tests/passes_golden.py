"""Golden text for the per-pass tests: the nodes a pass emitted, one a line, as a reviewer reads them.

TensorFlow, one NodeDef a line in graph order (new nodes are appended in emission order)::

    name = Op(input, input, ^control) @device {attr=value, ...}

ONNX, one NodeProto a line; the node's name follows in a comment when it is not its only
output, and an ``If``'s branches are indented under it, each with its outputs::

    out = Op(input, input) {attr=value, ...}  # node name
      then_branch "graph name" -> (out: float[2,3])
        ...

Attributes are sorted by name, their values compact: dtype names, ``[2,3]`` shapes, tensors as
``dtype[shape](values)`` (a scalar without its shape, long ones cut after eight values).
A test may name the scopes the pass emits into: ``$guard`` then stands for the scope, which
a ``# $guard = <scope>`` line at the top spells out.

:func:`assert_golden` compares the text with a file and regenerates it when
:func:`optrewrite.testing.regen_requested` says so (pytest's ``--optrewrite-regen``, or
``OPTREWRITE_REGEN=1``); a missing file fails saying how to create it.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import AttributeProto, helper, numpy_helper

from optrewrite.testing import REGEN_ENV, REGEN_OPTION, regen_requested
from optrewrite.tf import proto

MAX_VALUES = 8

# --------------------------------------------------------------------------- the golden file


def assert_golden(text: str, golden: Path) -> None:
    """Fail unless ``text`` equals the golden file's; on request, write it instead."""
    how = f"run the test with {REGEN_OPTION} (pytest) or {REGEN_ENV}=1"
    if regen_requested():
        if not golden.exists() or golden.read_text() != text:
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        return
    if not golden.exists():
        raise AssertionError(f"{golden}: no golden text yet; to create it, {how}, then review and commit it")
    expected = golden.read_text()
    if expected != text:
        diff = difflib.unified_diff(expected.splitlines(), text.splitlines(), str(golden), "emitted", lineterm="")
        raise AssertionError(
            "the emitted nodes differ from the golden text:\n" + "\n".join(diff)
            + f"\nIf the change is intended, {how} to rewrite {golden}, and review its diff."
        )


def _abbreviated(lines: list[str], scopes: Mapping[str, str] | None) -> str:
    """The lines with each scope written as its alias, under a header naming them."""
    if not scopes:
        return "\n".join(lines) + "\n"
    header = [f"# {alias} = {scope}" for alias, scope in scopes.items()]
    for alias, scope in sorted(scopes.items(), key=lambda item: -len(item[1])):
        pattern = re.compile(re.escape(scope) + r"(?=[/:,)\s]|$)")
        lines = [pattern.sub(lambda _: alias, line) for line in lines]
    return "\n".join([*header, "", *lines]) + "\n"


def _values(array: np.ndarray) -> str:
    flat = array.reshape(-1)
    shown = [_scalar(v) for v in flat[:MAX_VALUES]]
    if flat.size > MAX_VALUES:
        shown.append("...")
    return ", ".join(shown)


def _scalar(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (np.floating, float)):
        return str(value)  # numpy prints the shortest text that reads back as the same value
    return str(int(value))


def _tensor(type_name: str, array: np.ndarray) -> str:
    if array.ndim == 0:
        return f"{type_name}({_scalar(array.reshape(-1)[0])})"
    return f"{type_name}[{','.join(str(d) for d in array.shape)}]({_values(array)})"


# --------------------------------------------------------------------------- TensorFlow

_TF_NUMPY = {
    proto.DT_FLOAT: np.dtype("<f4"),
    proto.DT_DOUBLE: np.dtype("<f8"),
    proto.DT_HALF: np.dtype("<f2"),
    proto.DT_INT32: np.dtype("<i4"),
    proto.DT_INT64: np.dtype("<i8"),
    proto.DT_BOOL: np.dtype("?"),
}
_TF_VALUE_FIELDS = {
    proto.DT_FLOAT: "float_val",
    proto.DT_DOUBLE: "double_val",
    proto.DT_INT32: "int_val",
    proto.DT_INT64: "int64_val",
    proto.DT_BOOL: "bool_val",
}


def tf_tensor_array(tensor: proto.TensorProto) -> np.ndarray:
    """A TensorProto's value (tensor_content, or the typed value field broadcast to the shape)."""
    shape = [d.size for d in tensor.tensor_shape.dim]
    if tensor.dtype == proto.DT_BFLOAT16:
        bits = np.frombuffer(tensor.tensor_content, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    dtype = _TF_NUMPY[tensor.dtype]
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype=dtype).reshape(shape)
    values = list(getattr(tensor, _TF_VALUE_FIELDS[tensor.dtype]))
    size = int(np.prod(shape))
    values += [values[-1] if values else 0] * (size - len(values))  # TF repeats the last value
    return np.asarray(values, dtype=dtype).reshape(shape)


def tf_attr(value: proto.AttrValue) -> str:
    kind = value.WhichOneof("value")
    if kind == "type":
        return proto.dtype_name(value.type)
    if kind == "b":
        return "true" if value.b else "false"
    if kind == "i":
        return str(value.i)
    if kind == "f":
        return str(np.float32(value.f))
    if kind == "s":
        return f'"{value.s.decode(errors="replace")}"'
    if kind == "shape":
        if value.shape.unknown_rank:
            return "?"
        return "[" + ",".join("?" if d.size < 0 else str(d.size) for d in value.shape.dim) + "]"
    if kind == "tensor":
        return _tensor(proto.dtype_name(value.tensor.dtype), tf_tensor_array(value.tensor))
    if kind == "list":
        lst = value.list
        items = ([f'"{s.decode(errors="replace")}"' for s in lst.s] + [str(i) for i in lst.i]
                 + [str(np.float32(f)) for f in lst.f] + [proto.dtype_name(t) for t in lst.type])
        return "[" + ", ".join(items) + "]"
    return str(value).replace("\n", " ").strip()


def tf_node(node: proto.NodeDef) -> str:
    line = f"{node.name} = {node.op}({', '.join(node.input)})"
    if node.device:
        line += f" @{node.device}"
    if node.attr:
        line += " {" + ", ".join(f"{k}={tf_attr(node.attr[k])}" for k in sorted(node.attr)) + "}"
    return line


def tf_text(added: Iterable[proto.NodeDef], changed: Iterable[proto.NodeDef] = (),
            *, scopes: Mapping[str, str] | None = None) -> str:
    """The nodes a pass added, then the input's nodes it changed, as they are now."""
    lines = [tf_node(n) for n in added]
    changed = list(changed)
    if changed:
        lines += ["", "# changed input nodes"] + [tf_node(n) for n in changed]
    return _abbreviated(lines, scopes)


# --------------------------------------------------------------------------- ONNX


def _onnx_type(t: onnx.TypeProto) -> str:
    if not t.HasField("tensor_type"):
        return "?"
    tt = t.tensor_type
    name = helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "?"
    name = {"float32": "float", "float64": "double"}.get(name, name)
    if not tt.HasField("shape"):
        return name
    dims = [str(d.dim_value) if d.HasField("dim_value") else d.dim_param or "?" for d in tt.shape.dim]
    return f"{name}[{','.join(dims)}]"


def _onnx_elem(elem: int) -> str:
    return _onnx_type(helper.make_tensor_type_proto(elem, None))


def onnx_attr(attr: onnx.AttributeProto) -> str:
    if attr.type == AttributeProto.FLOAT:
        return str(np.float32(attr.f))
    if attr.type == AttributeProto.INT:
        return str(attr.i)
    if attr.type == AttributeProto.STRING:
        return f'"{attr.s.decode(errors="replace")}"'
    if attr.type == AttributeProto.FLOATS:
        return "[" + ", ".join(str(np.float32(f)) for f in attr.floats) + "]"
    if attr.type == AttributeProto.INTS:
        return "[" + ", ".join(str(i) for i in attr.ints) + "]"
    if attr.type == AttributeProto.TENSOR:
        return _tensor(_onnx_elem(attr.t.data_type), numpy_helper.to_array(attr.t))
    return AttributeProto.AttributeType.Name(attr.type).lower()


def onnx_node(node: onnx.NodeProto, indent: str = "") -> list[str]:
    op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
    line = f"{indent}{', '.join(node.output)} = {op}({', '.join(node.input)})"
    plain = [a for a in node.attribute if a.type not in (AttributeProto.GRAPH, AttributeProto.GRAPHS)]
    if plain:
        shown = [f"{a.name}={_onnx_elem(a.i) if (node.op_type, a.name) == ('Cast', 'to') else onnx_attr(a)}"
                 for a in sorted(plain, key=lambda a: a.name)]
        line += " {" + ", ".join(shown) + "}"
    if node.name and list(node.output) != [node.name]:
        line += f"  # {node.name}"
    lines = [line]
    for attr in sorted(node.attribute, key=lambda a: (a.name != "then_branch", a.name)):  # then before else
        for g in [attr.g] if attr.type == AttributeProto.GRAPH else attr.graphs:
            outs = ", ".join(f"{o.name}: {_onnx_type(o.type)}" for o in g.output)
            lines.append(f"{indent}  {attr.name} \"{g.name}\" -> ({outs})")
            for inner in g.node:
                lines += onnx_node(inner, indent + "    ")
    return lines


def onnx_text(graph: onnx.GraphProto, nodes: Sequence[onnx.NodeProto] | None = None,
              *, initializers: str = "optrewrite/", scopes: Mapping[str, str] | None = None) -> str:
    """The initializers named under ``initializers`` (the rewrite's constants), then ``nodes``
    (all the graph's, by default) in order."""
    lines = [f"{t.name} = initializer {_tensor(_onnx_elem(t.data_type), numpy_helper.to_array(t))}"
             for t in graph.initializer if t.name.startswith(initializers)]
    if lines:
        lines.append("")
    for node in graph.node if nodes is None else nodes:
        lines += onnx_node(node)
    return _abbreviated(lines, scopes)
