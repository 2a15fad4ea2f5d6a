"""A structural, order-insensitive diff of two graph files of one format.

Two files are the same when they hold the same graph, however it is encoded: a ``.pb`` and a
``.pbtxt`` of one GraphDef, or nodes in another order, compare equal. Every difference is one
line, ``- X`` (only in A), ``+ X`` (only in B) or ``~ X: what -> what`` (in both, changed)::

    - node X (Op)
    + node Y = Op(a, b)
    ~ node Z: attr T: DT_FLOAT -> DT_DOUBLE
    ~ initializer W: digest 1a2b3c4d5e6f -> 4d5e6f7a8b9c
    ~ node cond: attr then_branch: + node Y = Add(a, b) -> y

A change inside a nested structure (a TF library function, an ONNX subgraph or local
function) is the inner line behind the path that leads to it. Lines come in a fixed order:
section by section, within a section removed, added, then changed entries, each by name.

1. **TensorFlow** (GraphDef or MetaGraphDef, binary or text, read as the rewriter reads them,
   :func:`optrewrite.tf.io.load`): nodes by name, with their op, data inputs in order, control
   inputs as a set, device, each attr, and any other field; the function library (functions
   by signature name, their nodes compared the same way, gradients); versions; for two
   MetaGraphDefs also collections, ``saver_def``, ``signature_def`` and ``meta_info_def``.
   A GraphDef compares with a MetaGraphDef: their containers differ and their graphs are
   compared.
2. **ONNX** (by the ``.onnx`` suffix; external data is never read, its references are
   compared): nodes by name (an unnamed node by its first output, shown ``[output]``), with
   their op, inputs and outputs in order, attributes (subgraphs recursively), initializers by
   name with element type, dims and a SHA-256 digest of their values, graph inputs, outputs
   and value_info, opset imports, ``ir_version``, producer, metadata_props, local functions and
   doc strings.
"""
from __future__ import annotations

import hashlib
import io as pyio
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from google.protobuf import text_format
from google.protobuf import unknown_fields
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from optrewrite.errors import InputError
from optrewrite.fileio import is_onnx, read_input

if TYPE_CHECKING:
    import onnx

    from optrewrite.tf.io import TfGraphFile

TENSORFLOW = "TensorFlow"
ONNX = "ONNX"

NONE = "(none)"  # the value of a field, attr or entry that one side does not have
_WIDTH = 100  # longer values are cut, with a digest of the whole
_SHOWN_VALUES = 8  # tensors with more elements show a digest instead of their values

Formatters = Mapping[str, Callable[[Any], str]]  # message type name -> compact text


@dataclass(frozen=True)
class GraphDiff:
    """The differences between two graphs: one line each, empty when they are the same."""

    format: str  # TENSORFLOW or ONNX
    lines: tuple[str, ...] = ()

    @property
    def same(self) -> bool:
        return not self.lines

    def render(self, a_label: str, b_label: str) -> str:
        """A header ``N differences between A and B``, then the lines, indented."""
        n = len(self.lines)
        header = f"{n} difference{'' if n == 1 else 's'} between {a_label} and {b_label}"
        return "\n".join([header, *(f"  {line}" for line in self.lines)])


def diff_files(a: Path, b: Path) -> GraphDiff:
    """Compare the graphs in files ``a`` and ``b``; InputError when one cannot be compared."""
    a, b = Path(a), Path(b)
    return diff_bytes(a, read_input(a), b, read_input(b))


def diff_bytes(a: Path, a_raw: bytes, b: Path, b_raw: bytes) -> GraphDiff:
    """Compare graphs given as bytes; the paths name them and their names pick the format."""
    kinds = _kind(a), _kind(b)
    if kinds[0] != kinds[1]:
        raise InputError(f"{a} is {_article(kinds[0])} and {b} {_article(kinds[1])}: "
                         "only graphs of one format can be compared")
    if kinds[0] == ONNX:
        return GraphDiff(ONNX, tuple(_onnx_model(_load_onnx(a, a_raw), _load_onnx(b, b_raw))))
    from optrewrite.tf import io  # noqa: PLC0415

    return GraphDiff(TENSORFLOW, tuple(_tf_file(io.load(a, a_raw), io.load(b, b_raw))))


def _kind(path: Path) -> str:
    return ONNX if is_onnx(path) else TENSORFLOW


def _article(kind: str) -> str:
    return "an ONNX model" if kind == ONNX else "a TensorFlow graph"


# ------------------------------------------------------------------ compact values


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _canonical_bytes(msg: Message) -> bytes:
    return msg.SerializeToString(deterministic=True)


def _cut(text: str) -> str:
    """``text`` on one line; a long one cut, with a digest of the whole."""
    text = " ".join(text.split("\n"))
    if len(text) <= _WIDTH:
        return text
    return f"{text[:_WIDTH - 24]}… sha256:{_digest(text.encode())}"


def _quote(value: str | bytes) -> str:
    """A string in double quotes, escaped; bytes that are no text by their length and digest."""
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None or not text.replace("\n", "").replace("\t", "").isprintable():
            return f"<{len(value)} bytes sha256:{_digest(value)}>"
        value = text
    return json.dumps(value, ensure_ascii=False)


def _float32(value: float) -> str:
    import numpy as np  # noqa: PLC0415

    return str(np.float32(value))


def _message_text(msg: Message) -> str:
    return "{" + text_format.MessageToString(msg, as_one_line=True, as_utf8=True) + "}"


def _scalar(fd: FieldDescriptor, value: Any) -> str:
    if fd.type == FieldDescriptor.TYPE_ENUM:
        entry = fd.enum_type.values_by_number.get(value)
        return entry.name if entry is not None else str(value)
    if fd.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return _quote(value)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return "true" if value else "false"
    if fd.type == FieldDescriptor.TYPE_FLOAT:
        return _float32(value)
    return repr(value)


def _same_scalar(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return bool(a == b)


def _value(fd: FieldDescriptor, value: Any, formatters: Formatters) -> str:
    if fd.message_type is None:
        return _scalar(fd, value)
    fmt = formatters.get(fd.message_type.name)
    return _cut(fmt(value) if fmt else _message_text(value))


def _listing(items: Iterable[str]) -> str:
    return _cut("[" + ", ".join(items) + "]")


# ------------------------------------------------------------- generic field diff


def _is_repeated(fd: FieldDescriptor) -> bool:
    repeated = getattr(fd, "is_repeated", None)
    return bool(repeated) if repeated is not None else fd.label == FieldDescriptor.LABEL_REPEATED


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _unknown(msg: Message) -> list[tuple[int, int, str]]:
    return [(f.field_number, f.wire_type, repr(f.data)) for f in unknown_fields.UnknownFieldSet(msg)]


def _fields(a: Message, b: Message, formatters: Formatters, *, skip: Sequence[str] = (),
            path: str = "") -> list[str]:
    """``field: old -> new`` for each field of ``a`` and ``b`` (one type) outside ``skip`` that
    differs: submessages by their fields (``outer.inner``), maps by key (``field[key]``),
    repeated messages of one length item by item; values of a type in ``formatters`` whole."""
    lines: list[str] = []
    for fd in a.DESCRIPTOR.fields:
        if fd.name in skip:
            continue
        name = f"{path}{fd.name}"
        va, vb = getattr(a, fd.name), getattr(b, fd.name)
        if _is_map(fd):
            lines += _map_fields(name, fd, va, vb, formatters)
        elif _is_repeated(fd):
            lines += _repeated_fields(name, fd, va, vb, formatters)
        elif fd.message_type is not None:
            has_a, has_b = a.HasField(fd.name), b.HasField(fd.name)
            if not has_a and not has_b:
                continue
            if has_a != has_b or fd.message_type.name in formatters:
                if not has_a or not has_b or _canonical_bytes(va) != _canonical_bytes(vb):
                    old = _value(fd, va, formatters) if has_a else NONE
                    new = _value(fd, vb, formatters) if has_b else NONE
                    lines.append(f"{name}: {old} -> {new}")
            else:
                lines += _fields(va, vb, formatters, path=f"{name}.")
        else:
            # Presence counts in a oneof only: elsewhere an unset field reads as its default.
            in_oneof = fd.containing_oneof is not None and fd.has_presence and len(fd.containing_oneof.fields) > 1
            has_a = a.HasField(fd.name) if in_oneof else True
            has_b = b.HasField(fd.name) if in_oneof else True
            if has_a != has_b or not _same_scalar(va, vb):
                old = _scalar(fd, va) if has_a else NONE
                new = _scalar(fd, vb) if has_b else NONE
                lines.append(f"{name}: {old} -> {new}")
    if _unknown(a) != _unknown(b):
        lines.append(f"{path}unknown fields differ")
    return lines


def _map_fields(name: str, fd: FieldDescriptor, va: Any, vb: Any, formatters: Formatters) -> list[str]:
    value_fd = fd.message_type.fields_by_name["value"]
    lines = []
    for key in sorted(set(va) | set(vb), key=str):
        label = f"{name}[{key}]"
        if key not in va or key not in vb:
            old = _value(value_fd, va[key], formatters) if key in va else NONE
            new = _value(value_fd, vb[key], formatters) if key in vb else NONE
            lines.append(f"{label}: {old} -> {new}")
        elif value_fd.message_type is None:
            if not _same_scalar(va[key], vb[key]):
                lines.append(f"{label}: {_scalar(value_fd, va[key])} -> {_scalar(value_fd, vb[key])}")
        elif _canonical_bytes(va[key]) != _canonical_bytes(vb[key]):
            if value_fd.message_type.name in formatters:
                lines.append(f"{label}: {_value(value_fd, va[key], formatters)} -> "
                             f"{_value(value_fd, vb[key], formatters)}")
            else:
                lines += _fields(va[key], vb[key], formatters, path=f"{label}.")
    return lines


def _repeated_fields(name: str, fd: FieldDescriptor, va: Any, vb: Any, formatters: Formatters) -> list[str]:
    if fd.message_type is None:
        if len(va) == len(vb) and all(_same_scalar(x, y) for x, y in zip(va, vb)):
            return []
        return [f"{name}: {_listing(_scalar(fd, x) for x in va)} -> {_listing(_scalar(fd, x) for x in vb)}"]
    if [_canonical_bytes(x) for x in va] == [_canonical_bytes(x) for x in vb]:
        return []
    if len(va) == len(vb) and fd.message_type.name not in formatters:
        lines = []
        for i, (x, y) in enumerate(zip(va, vb)):
            lines += _fields(x, y, formatters, path=f"{name}[{i}].")
        return lines
    return [f"{name}: {_listing(_value(fd, x, formatters) for x in va)} -> "
            f"{_listing(_value(fd, x, formatters) for x in vb)}"]


def _changed(subject: str, details: Iterable[str]) -> list[str]:
    return [f"~ {subject}: {d}" for d in details]


def _positional(what: str, a: Sequence[str], b: Sequence[str]) -> list[str]:
    """``input 1: x -> y`` for each position of two equally long lists, else the whole lists."""
    if list(a) == list(b):
        return []
    if len(a) == len(b):
        return [f"{what} {i}: {x or NONE} -> {y or NONE}" for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return [f"{what}s: ({', '.join(a)}) -> ({', '.join(b)})"]


def _keyed(kind: str, a: Mapping[str, Any], b: Mapping[str, Any], *,
           removed: Callable[[str, Any], str], added: Callable[[str, Any], str],
           changed: Callable[[Any, Any], list[str]]) -> list[str]:
    """Removed, added, then changed entries of two keyed collections, each by key."""
    lines = [f"- {kind} {removed(k, a[k])}" for k in sorted(a.keys() - b.keys())]
    lines += [f"+ {kind} {added(k, b[k])}" for k in sorted(b.keys() - a.keys())]
    for k in sorted(a.keys() & b.keys()):
        lines += _changed(f"{kind} {k}", changed(a[k], b[k]))
    return lines


def _nested(prefix: str, lines: Iterable[str]) -> list[str]:
    return [f"{prefix}: {line}" for line in lines]


# ------------------------------------------------------------------------ TensorFlow

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
    import numpy as np  # noqa: PLC0415

    dtype = _tf_dtype(t, "dtype", t.dtype)
    head = f"{dtype}{_tf_shape(t.tensor_shape)}"
    values: list[str] | None = None
    stored = [fd for fd in t.DESCRIPTOR.fields if _is_repeated(fd) and len(getattr(t, fd.name))]
    if t.tensor_content:
        if not stored and dtype in _TF_NUMPY and len(t.tensor_content) % np.dtype(_TF_NUMPY[dtype]).itemsize == 0:
            values = [str(v) for v in np.frombuffer(t.tensor_content, _TF_NUMPY[dtype])]
    elif not stored:
        values = []
    elif len(stored) == 1 and stored[0].name in _TF_VALUE_FIELDS:
        values = [_scalar(stored[0], v) for v in getattr(t, stored[0].name)]
    if values is not None and len(values) <= _SHOWN_VALUES:
        text = _with_values(head, values, scalar=not t.tensor_shape.dim and not t.tensor_shape.unknown_rank)
        if len(text) <= _WIDTH:
            return text
    return f"{head} sha256:{_digest(_canonical_bytes(t))}"


def _with_values(head: str, values: Sequence[str], *, scalar: bool) -> str:
    return f"{head} {values[0]}" if scalar and len(values) == 1 else f"{head} [{', '.join(values)}]"


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
        return _listing(items)
    return _cut(_tf_one(kind, getattr(v, kind), v))


def _tf_one(kind: str, value: Any, owner: Message) -> str:
    if kind == "s":
        return _quote(value)
    if kind == "f":
        return _float32(value)
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
    if _canonical_bytes(a) == _canonical_bytes(b):
        return []
    lines = [f"op {a.op} -> {b.op}"] if a.op != b.op else []
    data_a = [i for i in a.input if not i.startswith("^")]
    data_b = [i for i in b.input if not i.startswith("^")]
    lines += _positional("input", data_a, data_b)
    control_a = {i for i in a.input if i.startswith("^")}
    control_b = {i for i in b.input if i.startswith("^")}
    lines += [f"control input -{i}" for i in sorted(control_a - control_b)]
    lines += [f"control input +{i}" for i in sorted(control_b - control_a)]
    if a.device != b.device:
        lines.append(f"device {_quote(a.device)} -> {_quote(b.device)}")
    for key in sorted(a.attr.keys() | b.attr.keys()):
        if key not in b.attr or key not in a.attr or _canonical_bytes(a.attr[key]) != _canonical_bytes(b.attr[key]):
            old = _tf_attr(a.attr[key]) if key in a.attr else NONE
            new = _tf_attr(b.attr[key]) if key in b.attr else NONE
            lines.append(f"attr {key}: {old} -> {new}")
    lines += _fields(a, b, _TF_FORMATTERS, skip=_TF_NODE_FIELDS)
    return lines


def _tf_nodes(a: Iterable[Any], b: Iterable[Any]) -> list[str]:
    return _keyed(
        "node", {n.name: n for n in a}, {n.name: n for n in b},
        removed=lambda name, n: f"{name} ({n.op})",
        added=lambda name, n: f"{name} = {n.op}({', '.join(n.input)})",
        changed=_tf_node_changes,
    )


def _tf_function_changes(a: Any, b: Any) -> list[str]:
    if _canonical_bytes(a) == _canonical_bytes(b):
        return []
    lines = _tf_nodes(a.node_def, b.node_def)
    lines += _changed("signature", _fields(a.signature, b.signature, _TF_FORMATTERS))
    lines += [f"~ {d}" for d in _fields(a, b, _TF_FORMATTERS, skip=("node_def", "signature"))]
    return lines


def _tf_library(a: Any, b: Any) -> list[str]:
    lines = _keyed(
        "function", {f.signature.name: f for f in a.function}, {f.signature.name: f for f in b.function},
        removed=lambda name, f: name,
        added=lambda name, f: f"{name} ({len(f.node_def)} nodes)",
        changed=lambda fa, fb: _tf_function_changes(fa, fb),
    )
    lines += _keyed(
        "gradient", {g.function_name: g.gradient_func for g in a.gradient},
        {g.function_name: g.gradient_func for g in b.gradient},
        removed=lambda name, g: f"{name} ({g})", added=lambda name, g: f"{name} = {g}",
        changed=lambda ga, gb: [f"{ga} -> {gb}"] if ga != gb else [],
    )
    lines += _keyed(
        "registered gradient", {g.registered_op_type: g.gradient_func for g in a.registered_gradients},
        {g.registered_op_type: g.gradient_func for g in b.registered_gradients},
        removed=lambda name, g: f"{name} ({g})", added=lambda name, g: f"{name} = {g}",
        changed=lambda ga, gb: [f"{ga} -> {gb}"] if ga != gb else [],
    )
    return lines


def _tf_graph(a: Any, b: Any) -> list[str]:
    lines = _tf_nodes(a.node, b.node)
    lines += _tf_library(a.library, b.library)
    rest = _fields(a, b, _TF_FORMATTERS, skip=("node", "library"))
    return lines + [f"~ {d}" for d in rest]


def _collection_items(c: Any) -> list[str]:
    kind = c.WhichOneof("kind")
    if kind is None:
        return []
    values = getattr(c, kind).value
    if kind in ("node_list", "bytes_list"):
        return [_quote(v) for v in values]
    if kind == "any_list":
        return [f"{v.type_url} sha256:{_digest(v.value)}" for v in values]
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
        return [f"order {_listing(items_a)} -> {_listing(items_b)}"]
    return [f"-{i}" for i in gone] + [f"+{i}" for i in came]


def _tf_meta(a: Any, b: Any) -> list[str]:
    """The MetaGraphDef fields beside the graph: stripped ops by name, collections by key,
    the rest (saver_def, signature_def, meta_info_def, assets) field by field."""
    ops_a = {op.name: op for op in a.meta_info_def.stripped_op_list.op}
    ops_b = {op.name: op for op in b.meta_info_def.stripped_op_list.op}
    lines = _keyed("stripped op", ops_a, ops_b, removed=lambda n, op: n, added=lambda n, op: n,
                   changed=lambda x, y: _fields(x, y, _TF_FORMATTERS))
    lines += _keyed(
        "collection", dict(a.collection_def), dict(b.collection_def),
        removed=lambda name, c: f"{name} ({len(_collection_items(c))} items)",
        added=lambda name, c: f"{name} = {_listing(_collection_items(c))}",
        changed=_collection_changes,
    )
    info = _fields(a.meta_info_def, b.meta_info_def, _TF_FORMATTERS, skip=("stripped_op_list",),
                   path="meta_info_def.")
    stripped = _fields(a.meta_info_def.stripped_op_list, b.meta_info_def.stripped_op_list, _TF_FORMATTERS,
                       skip=("op",), path="meta_info_def.stripped_op_list.")
    rest = _fields(a, b, _TF_FORMATTERS, skip=("graph_def", "meta_info_def", "collection_def"))
    return lines + [f"~ {d}" for d in info + stripped + rest]


def _tf_file(a: TfGraphFile, b: TfGraphFile) -> list[str]:
    from optrewrite.tf import io  # noqa: PLC0415

    lines = []
    if a.container != b.container:
        lines.append(f"~ container: {a.container} -> {b.container} (only the graphs are compared)")
    lines += _tf_graph(a.graph, b.graph)
    if a.container == b.container == io.METAGRAPH:
        lines += _tf_meta(a.message, b.message)
    return lines


# ------------------------------------------------------------------------------ ONNX


def _load_onnx(path: Path, raw: bytes) -> onnx.ModelProto:
    import onnx  # noqa: PLC0415

    try:
        model = onnx.load(pyio.BytesIO(raw), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is bad input
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not an ONNX model: {detail}") from None
    if not model.HasField("graph"):
        raise InputError(f"{path}: not an ONNX model: it holds no graph")
    return model


def _onnx_elem(t: int) -> str:
    import onnx  # noqa: PLC0415

    try:
        return onnx.TensorProto.DataType.Name(t).lower()
    except ValueError:
        return f"type{t}"


def _onnx_external(t: Any) -> str:
    return "external(" + ", ".join(f"{e.key}={e.value}" for e in t.external_data) + ")"


def _onnx_data_digest(t: Any) -> str:
    """SHA-256 of a tensor's values (little-endian), whichever field holds them."""
    from onnx import numpy_helper  # noqa: PLC0415

    try:
        array = numpy_helper.to_array(t)
    except Exception:  # noqa: BLE001 - an unusual encoding: digest what is stored
        rest = type(t)()
        rest.CopyFrom(t)
        for field in ("name", "doc_string", "dims", "data_type", "metadata_props"):
            rest.ClearField(field)
        return _digest(_canonical_bytes(rest))
    if array.dtype.kind == "O":
        return _digest(b"".join(len(v).to_bytes(8, "little") + v for v in map(_as_bytes, array.flat)))
    return _digest(array.astype(array.dtype.newbyteorder("<")).tobytes())


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _onnx_tensor(t: Any) -> str:
    """``float[3,2] sha256:…`` (a few values shown instead), or the external data reference."""
    import onnx  # noqa: PLC0415

    head = f"{_onnx_elem(t.data_type)}[{','.join(map(str, t.dims))}]"
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return f"{head} {_onnx_external(t)}"
    try:
        from onnx import numpy_helper  # noqa: PLC0415

        array = numpy_helper.to_array(t)
    except Exception:  # noqa: BLE001
        array = None
    if array is not None and array.size <= _SHOWN_VALUES:
        items = [_quote(v) if isinstance(v, (bytes, str)) else str(v) for v in array.ravel()]
        text = _with_values(head, items, scalar=array.ndim == 0)
        if len(text) <= _WIDTH:
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
    return "?" if kind is None else _message_text(tp)


def _onnx_value_info(v: Any) -> str:
    return _onnx_type(v.type) if v.HasField("type") else "?"


def _onnx_attr(a: Any) -> str:
    """An attribute's value as it reads; a subgraph by its name and size."""
    from onnx import AttributeProto as A  # noqa: PLC0415

    if a.ref_attr_name:
        return f"@{a.ref_attr_name}"
    one: dict[int, Callable[[], str]] = {
        A.FLOAT: lambda: _float32(a.f), A.INT: lambda: str(a.i), A.STRING: lambda: _quote(a.s),
        A.TENSOR: lambda: _onnx_tensor(a.t), A.GRAPH: lambda: _onnx_graph_name(a.g),
        A.TYPE_PROTO: lambda: _onnx_type(a.tp),
        A.FLOATS: lambda: _listing(map(_float32, a.floats)), A.INTS: lambda: _listing(map(str, a.ints)),
        A.STRINGS: lambda: _listing(map(_quote, a.strings)),
        A.TENSORS: lambda: _listing(map(_onnx_tensor, a.tensors)),
        A.GRAPHS: lambda: _listing(map(_onnx_graph_name, a.graphs)),
        A.TYPE_PROTOS: lambda: _listing(map(_onnx_type, a.type_protos)),
    }
    fmt = one.get(a.type)
    return _cut(fmt() if fmt else _message_text(a))


def _onnx_graph_name(g: Any) -> str:
    return f"graph {g.name} ({len(g.node)} nodes)"


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
    keyed: dict[str, Any] = {}
    for i, n in enumerate(nodes):
        first = next((o for o in n.output if o), "")
        if n.name and counts[n.name] == 1:
            key = n.name
        else:
            key = f"{n.name} [{first}]" if n.name else f"[{first}]"
        if key in keyed or not (n.name or first):
            key = f"{key}#{i}"
        keyed[key] = n
    return keyed


def _onnx_node_changes(a: Any, b: Any) -> list[str]:
    """What differs between two nodes of one key; subgraphs line by line behind their attr."""
    from onnx import AttributeProto as A  # noqa: PLC0415

    if _canonical_bytes(a) == _canonical_bytes(b):
        return []
    lines = [f"op {_onnx_op(a)} -> {_onnx_op(b)}"] if _onnx_op(a) != _onnx_op(b) else []
    lines += _positional("input", a.input, b.input)
    lines += _positional("output", a.output, b.output)
    attrs_a = {x.name: x for x in a.attribute}
    attrs_b = {x.name: x for x in b.attribute}
    for name in sorted(attrs_a.keys() | attrs_b.keys()):
        x, y = attrs_a.get(name), attrs_b.get(name)
        if x is not None and y is not None:
            if _canonical_bytes(x) == _canonical_bytes(y):
                continue
            if x.type == y.type == A.GRAPH and not x.ref_attr_name and not y.ref_attr_name:
                lines += _nested(f"attr {name}", _onnx_graph(x.g, y.g))
                continue
            if x.type == y.type == A.GRAPHS and len(x.graphs) == len(y.graphs):
                for i, (gx, gy) in enumerate(zip(x.graphs, y.graphs)):
                    lines += _nested(f"attr {name}[{i}]", _onnx_graph(gx, gy))
                continue
        old = _onnx_attr(x) if x is not None else NONE
        new = _onnx_attr(y) if y is not None else NONE
        lines.append(f"attr {name}: {old} -> {new}")
    skip = ("input", "output", "name", "op_type", "domain", "overload", "attribute")
    return lines + _fields(a, b, _ONNX_FORMATTERS, skip=skip)


def _onnx_nodes(a: Sequence[Any], b: Sequence[Any]) -> list[str]:
    return _keyed(
        "node", _onnx_node_keys(a), _onnx_node_keys(b),
        removed=lambda key, n: f"{key} ({_onnx_op(n)})",
        added=lambda key, n: f"{key} = {_onnx_op(n)}({', '.join(n.input)}) -> {', '.join(n.output)}",
        changed=_onnx_node_changes,
    )


def _onnx_values(kind: str, a: Sequence[Any], b: Sequence[Any], *, ordered: bool) -> list[str]:
    """Graph inputs, outputs or value_info by name; ``ordered``: their order matters too."""
    def changes(x: Any, y: Any) -> list[str]:
        lines = []
        if _canonical_bytes(x.type) != _canonical_bytes(y.type) or x.HasField("type") != y.HasField("type"):
            lines.append(f"type {_onnx_value_info(x)} -> {_onnx_value_info(y)}")
        return lines + _fields(x, y, _ONNX_FORMATTERS, skip=("name", "type"))

    va, vb = {v.name: v for v in a}, {v.name: v for v in b}
    lines = _keyed(kind, va, vb, removed=lambda name, v: f"{name} ({_onnx_value_info(v)})",
                   added=lambda name, v: f"{name}: {_onnx_value_info(v)}", changed=changes)
    common_a = [v.name for v in a if v.name in vb]
    common_b = [v.name for v in b if v.name in va]
    if ordered and common_a != common_b:
        lines.append(f"~ {kind}s order: ({', '.join(common_a)}) -> ({', '.join(common_b)})")
    return lines


def _onnx_initializer_changes(a: Any, b: Any) -> list[str]:
    import onnx  # noqa: PLC0415

    if _canonical_bytes(a) == _canonical_bytes(b):
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
    return lines + _fields(a, b, _ONNX_FORMATTERS, skip=data)


def _onnx_graph(a: Any, b: Any) -> list[str]:
    """The differences of two graphs (a model's, or subgraphs)."""
    if _canonical_bytes(a) == _canonical_bytes(b):
        return []
    lines = _onnx_values("input", a.input, b.input, ordered=True)
    lines += _onnx_values("output", a.output, b.output, ordered=True)
    lines += _keyed("initializer", {t.name: t for t in a.initializer}, {t.name: t for t in b.initializer},
                    removed=lambda name, t: f"{name} ({_onnx_tensor(t)})",
                    added=lambda name, t: f"{name}: {_onnx_tensor(t)}",
                    changed=_onnx_initializer_changes)
    lines += _keyed("sparse initializer", {t.values.name: t for t in a.sparse_initializer},
                    {t.values.name: t for t in b.sparse_initializer},
                    removed=lambda name, t: name,
                    added=lambda name, t: f"{name}: sha256:{_digest(_canonical_bytes(t))}",
                    changed=lambda x, y: _fields(x, y, _ONNX_FORMATTERS))
    lines += _onnx_values("value_info", a.value_info, b.value_info, ordered=False)
    lines += _onnx_nodes(a.node, b.node)
    skip = ("node", "initializer", "sparse_initializer", "input", "output", "value_info")
    return lines + [f"~ graph {d}" for d in _fields(a, b, _ONNX_FORMATTERS, skip=skip)]


def _onnx_opsets(a: Iterable[Any], b: Iterable[Any]) -> list[str]:
    return _keyed(
        "opset", {o.domain or "ai.onnx": o.version for o in a}, {o.domain or "ai.onnx": o.version for o in b},
        removed=lambda d, v: f"{d} {v}", added=lambda d, v: f"{d} {v}",
        changed=lambda x, y: [f"{x} -> {y}"] if x != y else [],
    )


def _onnx_metadata(kind: str, a: Iterable[Any], b: Iterable[Any]) -> list[str]:
    return _keyed(
        kind, {p.key: p.value for p in a}, {p.key: p.value for p in b},
        removed=lambda k, v: f"{k} ({_cut(_quote(v))})", added=lambda k, v: f"{k} = {_cut(_quote(v))}",
        changed=lambda x, y: [f"{_cut(_quote(x))} -> {_cut(_quote(y))}"] if x != y else [],
    )


def _onnx_function_changes(a: Any, b: Any) -> list[str]:
    if _canonical_bytes(a) == _canonical_bytes(b):
        return []
    lines = _onnx_opsets(a.opset_import, b.opset_import)
    lines += _onnx_metadata("metadata", a.metadata_props, b.metadata_props)
    lines += _onnx_values("value_info", a.value_info, b.value_info, ordered=False)
    lines += _onnx_nodes(a.node, b.node)
    skip = ("node", "opset_import", "metadata_props", "value_info", "name", "domain", "overload")
    return lines + [f"~ {d}" for d in _fields(a, b, _ONNX_FORMATTERS, skip=skip)]


def _onnx_function_key(f: Any) -> str:
    name = f"{f.domain}::{f.name}" if f.domain else f.name
    return f"{name}:{f.overload}" if f.overload else name


def _onnx_model(a: onnx.ModelProto, b: onnx.ModelProto) -> list[str]:
    head = ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string")
    lines = [f"~ {d}" for d in _fields(a, b, _ONNX_FORMATTERS, skip=[
        f.name for f in a.DESCRIPTOR.fields if f.name not in head])]
    lines += _onnx_opsets(a.opset_import, b.opset_import)
    lines += _onnx_metadata("metadata", a.metadata_props, b.metadata_props)
    lines += _onnx_graph(a.graph, b.graph)
    lines += _keyed(
        "function", {_onnx_function_key(f): f for f in a.functions}, {_onnx_function_key(f): f for f in b.functions},
        removed=lambda key, f: key, added=lambda key, f: f"{key} ({len(f.node)} nodes)",
        changed=_onnx_function_changes,
    )
    rest = _fields(a, b, _ONNX_FORMATTERS, skip=(*head, "opset_import", "metadata_props", "graph", "functions"))
    return lines + [f"~ {d}" for d in rest]
