"""The ONNX half of :mod:`optrewrite.diff`: two ONNX models, compared.

External data is never read: its references are compared. Nodes compare by name (an
unnamed node, or one whose name repeats, by its first output too, shown ``[output]``): their
op, inputs and outputs in order, attributes (subgraphs recursively, line by line behind the
attribute). Initializers compare by name with element type, dims and a SHA-256 digest of
their values; then graph inputs, outputs and value_info, opset imports, ``ir_version``,
producer, metadata_props, local functions and doc strings.
"""
from __future__ import annotations

import io as pyio
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import onnx
from onnx import numpy_helper

from optrewrite.diff import (
    NONE,
    SHOWN_VALUES,
    WIDTH,
    Formatters,
    canonical_bytes,
    cut,
    digest,
    field_changes,
    float32,
    keyed,
    listing,
    message_text,
    nested,
    positional,
    quote,
    with_values,
)
from optrewrite.errors import InputError, plural, printable

def _load_onnx(path: Path, raw: bytes) -> onnx.ModelProto:
    try:
        model = onnx.load(pyio.BytesIO(raw), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is bad input
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not an ONNX model: {detail}") from None
    if not model.HasField("graph"):
        raise InputError(f"{path}: not an ONNX model: it holds no graph")
    return model


def _onnx_elem(t: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(t).lower()
    except ValueError:
        return f"type{t}"


def _onnx_external(t: Any) -> str:
    return "external(" + ", ".join(f"{e.key}={e.value}" for e in t.external_data) + ")"


def _onnx_data_digest(t: Any) -> str:
    """SHA-256 of a tensor's values (little-endian), whichever field holds them."""
    try:
        array = numpy_helper.to_array(t)
    except Exception:  # noqa: BLE001 - an unusual encoding: digest what is stored
        rest = type(t)()
        rest.CopyFrom(t)
        for field in ("name", "doc_string", "dims", "data_type", "metadata_props"):
            rest.ClearField(field)
        return digest(canonical_bytes(rest))
    if array.dtype.kind == "O":
        return digest(b"".join(len(v).to_bytes(8, "little") + v for v in map(_as_bytes, array.flat)))
    return digest(array.astype(array.dtype.newbyteorder("<")).tobytes())


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _onnx_tensor(t: Any) -> str:
    """``float[3,2] sha256:…`` (a few values shown instead), or the external data reference."""
    head = f"{_onnx_elem(t.data_type)}[{','.join(map(str, t.dims))}]"
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return f"{head} {_onnx_external(t)}"
    try:
        array = numpy_helper.to_array(t)
    except Exception:  # noqa: BLE001
        array = None
    if array is not None and array.size <= SHOWN_VALUES:
        items = [quote(v) if isinstance(v, (bytes, str)) else str(v) for v in array.ravel()]
        text = with_values(head, items, scalar=array.ndim == 0)
        if len(text) <= WIDTH:
            return text
    return f"{head} sha256:{_onnx_data_digest(t)}"


def _onnx_type(tp: Any) -> str:
    """``float[3,N]`` for a tensor type (``?`` an unknown dim, ``float[...]`` unknown rank)."""
    kind = tp.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        tt = getattr(tp, kind)
        dims = "..." if not tt.HasField("shape") else ",".join(
            str(d.dim_value) if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else "?"
            for d in tt.shape.dim)
        text = f"{_onnx_elem(tt.elem_type)}[{dims}]"
        return f"sparse {text}" if kind == "sparse_tensor_type" else text
    if kind in ("sequence_type", "optional_type"):
        inner = getattr(tp, kind).elem_type
        return f"{kind.split('_')[0]}({_onnx_type(inner)})"
    if kind == "map_type":
        return f"map({_onnx_elem(tp.map_type.key_type)}, {_onnx_type(tp.map_type.value_type)})"
    return "?" if kind is None else message_text(tp)


def _onnx_value_info(v: Any) -> str:
    return _onnx_type(v.type) if v.HasField("type") else "?"


def _onnx_attr(a: Any) -> str:
    """An attribute's value as it reads; a subgraph by its name and size."""
    A = onnx.AttributeProto  # noqa: N806 - the attribute type constants, by a short name

    if a.ref_attr_name:
        return f"@{a.ref_attr_name}"
    one: dict[int, Callable[[], str]] = {
        A.FLOAT: lambda: float32(a.f), A.INT: lambda: str(a.i), A.STRING: lambda: quote(a.s),
        A.TENSOR: lambda: _onnx_tensor(a.t), A.GRAPH: lambda: _onnx_graph_name(a.g),
        A.TYPE_PROTO: lambda: _onnx_type(a.tp),
        A.FLOATS: lambda: listing(map(float32, a.floats)), A.INTS: lambda: listing(map(str, a.ints)),
        A.STRINGS: lambda: listing(map(quote, a.strings)),
        A.TENSORS: lambda: listing(map(_onnx_tensor, a.tensors)),
        A.GRAPHS: lambda: listing(map(_onnx_graph_name, a.graphs)),
        A.TYPE_PROTOS: lambda: listing(map(_onnx_type, a.type_protos)),
    }
    fmt = one.get(a.type)
    return cut(fmt() if fmt else message_text(a))


def _onnx_graph_name(g: Any) -> str:
    return f"graph {g.name} ({plural(len(g.node), 'node')})"


_ONNX_FORMATTERS: Formatters = {
    "TensorProto": _onnx_tensor, "TypeProto": _onnx_type, "AttributeProto": _onnx_attr,
}


def _onnx_op(n: Any) -> str:
    op = f"{n.domain}::{n.op_type}" if n.domain else n.op_type
    return f"{op}:{n.overload}" if n.overload else op


def _onnx_node_keys(nodes: Sequence[Any]) -> dict[str, Any]:
    """Nodes by name; an unnamed node (or one whose name repeats) by its first output too."""
    counts: dict[str, int] = {}
    for n in nodes:
        counts[n.name] = counts.get(n.name, 0) + 1
    by_key: dict[str, Any] = {}
    for i, n in enumerate(nodes):
        first = next((o for o in n.output if o), "")
        if n.name and counts[n.name] == 1:
            key = n.name
        else:
            key = f"{n.name} [{first}]" if n.name else f"[{first}]"
        if key in by_key or not (n.name or first):
            key = f"{key}#{i}"
        by_key[key] = n
    return by_key


def _onnx_node_changes(a: Any, b: Any) -> list[str]:
    """What differs between two nodes of one key; subgraphs line by line behind their attr."""
    A = onnx.AttributeProto  # noqa: N806 - the attribute type constants, by a short name

    if canonical_bytes(a) == canonical_bytes(b):
        return []
    lines = [f"op {_onnx_op(a)} -> {_onnx_op(b)}"] if _onnx_op(a) != _onnx_op(b) else []
    lines += positional("input", a.input, b.input)
    lines += positional("output", a.output, b.output)
    attrs_a = {x.name: x for x in a.attribute}
    attrs_b = {x.name: x for x in b.attribute}
    for name in sorted(attrs_a.keys() | attrs_b.keys()):
        x, y = attrs_a.get(name), attrs_b.get(name)
        if x is not None and y is not None:
            if canonical_bytes(x) == canonical_bytes(y):
                continue
            if x.type == y.type == A.GRAPH and not x.ref_attr_name and not y.ref_attr_name:
                lines += nested(f"attr {name}", _onnx_graph(x.g, y.g))
                continue
            if x.type == y.type == A.GRAPHS and len(x.graphs) == len(y.graphs):
                for i, (gx, gy) in enumerate(zip(x.graphs, y.graphs)):
                    lines += nested(f"attr {name}[{i}]", _onnx_graph(gx, gy))
                continue
        old = _onnx_attr(x) if x is not None else NONE
        new = _onnx_attr(y) if y is not None else NONE
        lines.append(f"attr {name}: {old} -> {new}")
    skip = ("input", "output", "name", "op_type", "domain", "overload", "attribute")
    return lines + field_changes(a, b, _ONNX_FORMATTERS, skip=skip)


def _onnx_nodes(a: Sequence[Any], b: Sequence[Any]) -> list[str]:
    return keyed(
        "node", _onnx_node_keys(a), _onnx_node_keys(b),
        removed=lambda key, n: f"{key} ({_onnx_op(n)})",
        added=lambda key, n: f"{key} = {_onnx_op(n)}({', '.join(n.input)}) -> {', '.join(n.output)}",
        changed=_onnx_node_changes,
    )


def _onnx_values(kind: str, a: Sequence[Any], b: Sequence[Any], *, ordered: bool) -> list[str]:
    """Graph inputs, outputs or value_info by name; ``ordered``: their order matters too."""
    def changes(x: Any, y: Any) -> list[str]:
        lines = []
        if canonical_bytes(x.type) != canonical_bytes(y.type) or x.HasField("type") != y.HasField("type"):
            lines.append(f"type {_onnx_value_info(x)} -> {_onnx_value_info(y)}")
        return lines + field_changes(x, y, _ONNX_FORMATTERS, skip=("name", "type"))

    va, vb = {v.name: v for v in a}, {v.name: v for v in b}
    lines = keyed(kind, va, vb, removed=lambda name, v: f"{name} ({_onnx_value_info(v)})",
                   added=lambda name, v: f"{name}: {_onnx_value_info(v)}", changed=changes)
    common_a = [v.name for v in a if v.name in vb]
    common_b = [v.name for v in b if v.name in va]
    if ordered and common_a != common_b:
        lines.append(f"~ {kind}s order: ({', '.join(common_a)}) -> ({', '.join(common_b)})")
    return lines


def _onnx_initializer_changes(a: Any, b: Any) -> list[str]:
    if canonical_bytes(a) == canonical_bytes(b):
        return []
    lines = []
    if a.data_type != b.data_type:
        lines.append(f"dtype {_onnx_elem(a.data_type)} -> {_onnx_elem(b.data_type)}")
    if list(a.dims) != list(b.dims):
        lines.append(f"dims [{','.join(map(str, a.dims))}] -> [{','.join(map(str, b.dims))}]")
    ext_a = a.data_location == onnx.TensorProto.EXTERNAL
    ext_b = b.data_location == onnx.TensorProto.EXTERNAL
    if ext_a or ext_b:
        old = _onnx_external(a) if ext_a else f"sha256:{_onnx_data_digest(a)}"
        new = _onnx_external(b) if ext_b else f"sha256:{_onnx_data_digest(b)}"
        if old != new:
            lines.append(f"data {old} -> {new}")
    else:
        da, db = _onnx_data_digest(a), _onnx_data_digest(b)
        if da != db:
            lines.append(f"digest {da} -> {db}")
    data = ("name", "data_type", "dims", "raw_data", "float_data", "int32_data", "string_data", "int64_data",
            "double_data", "uint64_data", "external_data", "data_location")
    return lines + field_changes(a, b, _ONNX_FORMATTERS, skip=data)


def _onnx_graph(a: Any, b: Any) -> list[str]:
    """The differences of two graphs (a model's, or subgraphs)."""
    if canonical_bytes(a) == canonical_bytes(b):
        return []
    lines = _onnx_values("input", a.input, b.input, ordered=True)
    lines += _onnx_values("output", a.output, b.output, ordered=True)
    lines += keyed("initializer", {t.name: t for t in a.initializer}, {t.name: t for t in b.initializer},
                   removed=lambda name, t: f"{name} ({_onnx_tensor(t)})",
                   added=lambda name, t: f"{name}: {_onnx_tensor(t)}",
                   changed=_onnx_initializer_changes)
    lines += keyed("sparse initializer", {t.values.name: t for t in a.sparse_initializer},
                   {t.values.name: t for t in b.sparse_initializer},
                   removed=lambda name, t: name,
                   added=lambda name, t: f"{name}: sha256:{digest(canonical_bytes(t))}",
                   changed=lambda x, y: field_changes(x, y, _ONNX_FORMATTERS))
    lines += _onnx_values("value_info", a.value_info, b.value_info, ordered=False)
    lines += _onnx_nodes(a.node, b.node)
    skip = ("node", "initializer", "sparse_initializer", "input", "output", "value_info")
    return lines + [f"~ graph {d}" for d in field_changes(a, b, _ONNX_FORMATTERS, skip=skip)]


def _onnx_opsets(a: Iterable[Any], b: Iterable[Any]) -> list[str]:
    return keyed(
        "opset", {o.domain or "ai.onnx": o.version for o in a}, {o.domain or "ai.onnx": o.version for o in b},
        removed=lambda d, v: f"{d} {v}", added=lambda d, v: f"{d} {v}",
        changed=lambda x, y: [f"{x} -> {y}"] if x != y else [],
    )


def _onnx_metadata(kind: str, a: Iterable[Any], b: Iterable[Any]) -> list[str]:
    return keyed(
        kind, {p.key: p.value for p in a}, {p.key: p.value for p in b},
        removed=lambda k, v: f"{k} ({cut(quote(v))})", added=lambda k, v: f"{k} = {cut(quote(v))}",
        changed=lambda x, y: [f"{cut(quote(x))} -> {cut(quote(y))}"] if x != y else [],
    )


def _onnx_function_changes(a: Any, b: Any) -> list[str]:
    if canonical_bytes(a) == canonical_bytes(b):
        return []
    lines = _onnx_opsets(a.opset_import, b.opset_import)
    lines += _onnx_metadata("metadata", a.metadata_props, b.metadata_props)
    lines += _onnx_values("value_info", a.value_info, b.value_info, ordered=False)
    lines += _onnx_nodes(a.node, b.node)
    skip = ("node", "opset_import", "metadata_props", "value_info", "name", "domain", "overload")
    return lines + [f"~ {d}" for d in field_changes(a, b, _ONNX_FORMATTERS, skip=skip)]


def _onnx_function_key(f: Any) -> str:
    name = f"{f.domain}::{f.name}" if f.domain else f.name
    return f"{name}:{f.overload}" if f.overload else name


def _onnx_model(a: onnx.ModelProto, b: onnx.ModelProto) -> list[str]:
    head = ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string")
    lines = [f"~ {d}" for d in field_changes(a, b, _ONNX_FORMATTERS, skip=[
        f.name for f in a.DESCRIPTOR.fields if f.name not in head])]
    lines += _onnx_opsets(a.opset_import, b.opset_import)
    lines += _onnx_metadata("metadata", a.metadata_props, b.metadata_props)
    lines += _onnx_graph(a.graph, b.graph)
    lines += keyed(
        "function", {_onnx_function_key(f): f for f in a.functions}, {_onnx_function_key(f): f for f in b.functions},
        removed=lambda key, f: key, added=lambda key, f: f"{key} ({plural(len(f.node), 'node')})",
        changed=_onnx_function_changes,
    )
    rest = field_changes(a, b, _ONNX_FORMATTERS,
                         skip=(*head, "opset_import", "metadata_props", "graph", "functions"))
    return lines + [f"~ {d}" for d in rest]


def diff_graphs(a: Path, a_raw: bytes, b: Path, b_raw: bytes) -> list[str]:
    """The differences between the ONNX models in files ``a`` and ``b`` (bytes ``a_raw``,
    ``b_raw``), one line each, names :func:`printable`; InputError when one is no ONNX model."""
    return [printable(line) for line in _onnx_model(_load_onnx(a, a_raw), _load_onnx(b, b_raw))]
