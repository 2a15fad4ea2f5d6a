"""The TensorFlow half of :mod:`optrewrite.diff`: two GraphDefs or MetaGraphDefs, compared.

Graphs are read as the rewriter reads them (:func:`optrewrite.tf.io.load`), binary or text.
Nodes compare by name: their op, data inputs in order, control inputs as a set, device,
each attr, and any other field. Then the function library (functions by signature name,
their nodes compared the same way, gradients) and versions; for two MetaGraphDefs also
stripped ops, collections, ``saver_def``, ``signature_def`` and ``meta_info_def``. A GraphDef
compares with a MetaGraphDef: their containers differ and their graphs are compared.
Attr values, tensors and shapes read as they would in a graph: ``DT_FLOAT``, ``[2,?]``,
``DT_FLOAT[3] [0.0, 0.5, 1.0]`` (a digest for a larger tensor).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
from google.protobuf.message import Message

from optrewrite.diff import (
    NONE,
    SHOWN_VALUES,
    WIDTH,
    Formatters,
    canonical_bytes,
    changed_lines,
    cut,
    digest,
    field_changes,
    float32,
    is_repeated,
    keyed,
    listing,
    positional,
    quote,
    scalar_text,
    with_values,
)
from optrewrite.errors import plural, printable
from optrewrite.tf import io

_TF_NUMPY = {
    "DT_FLOAT": "<f4", "DT_DOUBLE": "<f8", "DT_HALF": "<f2", "DT_INT8": "i1", "DT_INT16": "<i2",
    "DT_INT32": "<i4", "DT_INT64": "<i8", "DT_UINT8": "u1", "DT_UINT16": "<u2", "DT_UINT32": "<u4",
    "DT_UINT64": "<u8", "DT_BOOL": "?",
}
_TF_VALUE_FIELDS = ("float_val", "double_val", "int_val", "int64_val", "bool_val", "uint32_val",
                    "uint64_val", "string_val")


def _tf_dtype(msg: Message, field: str, value: int) -> str:
    entry = msg.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number.get(value)
    return entry.name if entry is not None else str(value)


def _tf_shape(shape: Any) -> str:
    if shape.unknown_rank:
        return "<unknown rank>"
    return "[" + ",".join("?" if d.size < 0 else str(d.size) for d in shape.dim) + "]"


def _tf_tensor(t: Any) -> str:
    """``DT_FLOAT[3,2] [0.0, 0.5, …]``: values as stored when few, else a digest."""
    dtype = _tf_dtype(t, "dtype", t.dtype)
    head = f"{dtype}{_tf_shape(t.tensor_shape)}"
    values: list[str] | None = None
    stored = [fd for fd in t.DESCRIPTOR.fields if is_repeated(fd) and len(getattr(t, fd.name))]
    if t.tensor_content:
        if not stored and dtype in _TF_NUMPY and len(t.tensor_content) % np.dtype(_TF_NUMPY[dtype]).itemsize == 0:
            values = [str(v) for v in np.frombuffer(t.tensor_content, _TF_NUMPY[dtype])]
    elif not stored:
        values = []
    elif len(stored) == 1 and stored[0].name in _TF_VALUE_FIELDS:
        values = [scalar_text(stored[0], v) for v in getattr(t, stored[0].name)]
    if values is not None and len(values) <= SHOWN_VALUES:
        text = with_values(head, values, scalar=not t.tensor_shape.dim and not t.tensor_shape.unknown_rank)
        if len(text) <= WIDTH:
            return text
    return f"{head} sha256:{digest(canonical_bytes(t))}"


def _tf_attr(v: Any) -> str:
    """An AttrValue as it reads: ``DT_FLOAT``, ``[2,?]``, ``"SAME"``, ``[1, 2]``, ``f{T=DT_FLOAT}``."""
    kind = v.WhichOneof("value")
    if kind is None:
        return "(empty)"
    if kind == "list":
        fields = [fd for fd in v.list.DESCRIPTOR.fields if len(getattr(v.list, fd.name))]
        if not fields:
            return "[]"
        items = []
        for fd in fields:
            for item in getattr(v.list, fd.name):
                items.append(_tf_one(fd.name, item, v.list))
        return listing(items)
    return cut(_tf_one(kind, getattr(v, kind), v))


def _tf_one(kind: str, value: Any, owner: Message) -> str:
    if kind == "s":
        return quote(value)
    if kind == "f":
        return float32(value)
    if kind == "b":
        return "true" if value else "false"
    if kind == "type":
        return _tf_dtype(owner, "type", value)
    if kind == "shape":
        return _tf_shape(value)
    if kind == "tensor":
        return _tf_tensor(value)
    if kind == "func":
        attrs = ", ".join(f"{k}={_tf_attr(value.attr[k])}" for k in sorted(value.attr))
        return f"{value.name}{{{attrs}}}" if attrs else value.name
    if kind == "placeholder":
        return f"${value}"
    return str(value)


_TF_FORMATTERS: Formatters = {
    "AttrValue": _tf_attr, "TensorProto": _tf_tensor, "TensorShapeProto": _tf_shape,
}
_TF_NODE_FIELDS = ("name", "op", "input", "device", "attr")


def _tf_node_changes(a: Any, b: Any) -> list[str]:
    """What differs between two NodeDefs of one name."""
    if canonical_bytes(a) == canonical_bytes(b):
        return []
    lines = [f"op {a.op} -> {b.op}"] if a.op != b.op else []
    data_a = [i for i in a.input if not i.startswith("^")]
    data_b = [i for i in b.input if not i.startswith("^")]
    lines += positional("input", data_a, data_b)
    control_a = {i for i in a.input if i.startswith("^")}
    control_b = {i for i in b.input if i.startswith("^")}
    lines += [f"control input -{i}" for i in sorted(control_a - control_b)]
    lines += [f"control input +{i}" for i in sorted(control_b - control_a)]
    if a.device != b.device:
        lines.append(f"device {quote(a.device)} -> {quote(b.device)}")
    for key in sorted(a.attr.keys() | b.attr.keys()):
        if key not in b.attr or key not in a.attr or canonical_bytes(a.attr[key]) != canonical_bytes(b.attr[key]):
            old = _tf_attr(a.attr[key]) if key in a.attr else NONE
            new = _tf_attr(b.attr[key]) if key in b.attr else NONE
            lines.append(f"attr {key}: {old} -> {new}")
    lines += field_changes(a, b, _TF_FORMATTERS, skip=_TF_NODE_FIELDS)
    return lines


def _tf_nodes(a: Iterable[Any], b: Iterable[Any]) -> list[str]:
    return keyed(
        "node", {n.name: n for n in a}, {n.name: n for n in b},
        removed=lambda name, n: f"{name} ({n.op})",
        added=lambda name, n: f"{name} = {n.op}({', '.join(n.input)})",
        changed=_tf_node_changes,
    )


def _tf_function_changes(a: Any, b: Any) -> list[str]:
    if canonical_bytes(a) == canonical_bytes(b):
        return []
    lines = _tf_nodes(a.node_def, b.node_def)
    lines += changed_lines("signature", field_changes(a.signature, b.signature, _TF_FORMATTERS))
    lines += [f"~ {d}" for d in field_changes(a, b, _TF_FORMATTERS, skip=("node_def", "signature"))]
    return lines


def _tf_library(a: Any, b: Any) -> list[str]:
    lines = keyed(
        "function", {f.signature.name: f for f in a.function}, {f.signature.name: f for f in b.function},
        removed=lambda name, f: name,
        added=lambda name, f: f"{name} ({plural(len(f.node_def), 'node')})",
        changed=lambda fa, fb: _tf_function_changes(fa, fb),
    )
    lines += keyed(
        "gradient", {g.function_name: g.gradient_func for g in a.gradient},
        {g.function_name: g.gradient_func for g in b.gradient},
        removed=lambda name, g: f"{name} ({g})", added=lambda name, g: f"{name} = {g}",
        changed=lambda ga, gb: [f"{ga} -> {gb}"] if ga != gb else [],
    )
    lines += keyed(
        "registered gradient", {g.registered_op_type: g.gradient_func for g in a.registered_gradients},
        {g.registered_op_type: g.gradient_func for g in b.registered_gradients},
        removed=lambda name, g: f"{name} ({g})", added=lambda name, g: f"{name} = {g}",
        changed=lambda ga, gb: [f"{ga} -> {gb}"] if ga != gb else [],
    )
    return lines


def _tf_graph(a: Any, b: Any) -> list[str]:
    lines = _tf_nodes(a.node, b.node)
    lines += _tf_library(a.library, b.library)
    rest = field_changes(a, b, _TF_FORMATTERS, skip=("node", "library"))
    return lines + [f"~ {d}" for d in rest]


def _collection_items(c: Any) -> list[str]:
    kind = c.WhichOneof("kind")
    if kind is None:
        return []
    values = getattr(c, kind).value
    if kind in ("node_list", "bytes_list"):
        return [quote(v) for v in values]
    if kind == "any_list":
        return [f"{v.type_url} sha256:{digest(v.value)}" for v in values]
    return [repr(v) for v in values]


def _collection_changes(a: Any, b: Any) -> list[str]:
    items_a, items_b = _collection_items(a), _collection_items(b)
    if a.WhichOneof("kind") != b.WhichOneof("kind"):
        return [f"kind {a.WhichOneof('kind')} -> {b.WhichOneof('kind')}"]
    if items_a == items_b:
        return []
    gone = [i for i in items_a if i not in items_b]
    came = [i for i in items_b if i not in items_a]
    if not gone and not came:
        return [f"order {listing(items_a)} -> {listing(items_b)}"]
    return [f"-{i}" for i in gone] + [f"+{i}" for i in came]


def _tf_meta(a: Any, b: Any) -> list[str]:
    """The MetaGraphDef fields beside the graph: stripped ops by name, collections by key,
    the rest (saver_def, signature_def, meta_info_def, assets) field by field."""
    ops_a = {op.name: op for op in a.meta_info_def.stripped_op_list.op}
    ops_b = {op.name: op for op in b.meta_info_def.stripped_op_list.op}
    lines = keyed("stripped op", ops_a, ops_b, removed=lambda n, op: n, added=lambda n, op: n,
                   changed=lambda x, y: field_changes(x, y, _TF_FORMATTERS))
    lines += keyed(
        "collection", dict(a.collection_def), dict(b.collection_def),
        removed=lambda name, c: f"{name} ({len(_collection_items(c))} items)",
        added=lambda name, c: f"{name} = {listing(_collection_items(c))}",
        changed=_collection_changes,
    )
    info = field_changes(a.meta_info_def, b.meta_info_def, _TF_FORMATTERS, skip=("stripped_op_list",),
                         path="meta_info_def.")
    stripped = field_changes(a.meta_info_def.stripped_op_list, b.meta_info_def.stripped_op_list,
                             _TF_FORMATTERS, skip=("op",), path="meta_info_def.stripped_op_list.")
    rest = field_changes(a, b, _TF_FORMATTERS, skip=("graph_def", "meta_info_def", "collection_def"))
    return lines + [f"~ {d}" for d in info + stripped + rest]


def diff_graphs(a: Path, a_raw: bytes, b: Path, b_raw: bytes) -> list[str]:
    """The differences between the TensorFlow graphs in files ``a`` and ``b`` (bytes ``a_raw``,
    ``b_raw``), one line each, names :func:`printable`; InputError when one cannot be read."""
    return [printable(line) for line in _tf_file(io.load(a, a_raw), io.load(b, b_raw))]


def _tf_file(a: io.TfGraphFile, b: io.TfGraphFile) -> list[str]:
    lines = []
    if a.container != b.container:
        lines.append(f"~ container: {a.container} -> {b.container} (only the graphs are compared)")
    lines += _tf_graph(a.graph, b.graph)
    if a.container == b.container == io.METAGRAPH:
        lines += _tf_meta(a.message, b.message)
    return lines


