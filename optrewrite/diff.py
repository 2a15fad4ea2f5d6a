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
Names in a line are :func:`~optrewrite.errors.printable`: a control character, line separator
or bidi control in a graph shows as an escape (``\\x1b``, ``\\u202e``), so no name can forge a
line or drive the terminal.

The file names pick the format (:func:`optrewrite.formats.format_for`), and the format
compares the two graphs (``Format.diff``). This module holds what every format's diff
shares: the compact text of values, a field-by-field diff of two protobuf messages of one
type, and the line shapes of keyed and positional collections. The formats' halves:

1. **TensorFlow** (:mod:`optrewrite.tf.diff`; GraphDef or MetaGraphDef, binary or text, read
   as the rewriter reads them, :func:`optrewrite.tf.io.load`): nodes by name, with their op,
   data inputs in order, control inputs as a set, device, each attr, and any other field;
   the function library (functions by signature name, their nodes compared the same way,
   gradients); versions; for two MetaGraphDefs also collections, ``saver_def``,
   ``signature_def`` and ``meta_info_def``. A GraphDef compares with a MetaGraphDef: their
   containers differ and their graphs are compared.
2. **ONNX** (:mod:`optrewrite.onnx.diff`; by the ``.onnx`` suffix; external data is never
   read, its references are compared): nodes by name (an unnamed node by its first output,
   shown ``[output]``), with their op, inputs and outputs in order, attributes (subgraphs
   recursively), initializers by name with element type, dims and a SHA-256 digest of their
   values, graph inputs, outputs and value_info, opset imports, ``ir_version``, producer,
   metadata_props, local functions and doc strings.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from google.protobuf import text_format
from google.protobuf import unknown_fields
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from optrewrite.errors import InputError, printable
from optrewrite.formats import format_for, read_graph

NONE = "(none)"  # the value of a field, attr or entry that one side does not have
WIDTH = 100  # longer values are cut, with a digest of the whole
SHOWN_VALUES = 8  # tensors with more elements show a digest instead of their values

Formatters = Mapping[str, Callable[[Any], str]]  # message type name -> compact text


@dataclass(frozen=True)
class GraphDiff:
    """The differences between two graphs: one line each, empty when they are the same."""

    format: str  # the format's name (Format.name): "TensorFlow", "ONNX"
    lines: tuple[str, ...] = ()

    @property
    def same(self) -> bool:
        return not self.lines

    def render(self, a_label: str, b_label: str) -> str:
        """A header ``N differences between A and B``, then the lines, indented; the labels
        and lines :func:`~optrewrite.errors.printable` (names come from the graphs)."""
        n = len(self.lines)
        header = f"{n} difference{'' if n == 1 else 's'} between {printable(a_label)} and {printable(b_label)}"
        return "\n".join([header, *(f"  {printable(line)}" for line in self.lines)])


def diff_files(a: Path, b: Path) -> GraphDiff:
    """Compare the graphs in files ``a`` and ``b``; InputError when one cannot be compared."""
    a, b = Path(a), Path(b)
    return diff_bytes(a, read_graph(a), b, read_graph(b))


def diff_bytes(a: Path, a_raw: bytes, b: Path, b_raw: bytes) -> GraphDiff:
    """Compare graphs given as bytes; the paths name them and their names pick the format."""
    fa, fb = format_for(a), format_for(b)
    if fa is not fb:
        raise InputError(f"{a} is {fa.article} and {b} {fb.article}: only graphs of one format can be compared")
    return GraphDiff(fa.name, tuple(fa.diff(a, a_raw, b, b_raw)))


# ------------------------------------------------------------------ compact values


def digest(data: bytes) -> str:
    """The first 12 hex digits of the SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()[:12]


def canonical_bytes(msg: Message) -> bytes:
    """``msg`` serialized deterministically: equal messages give equal bytes."""
    return msg.SerializeToString(deterministic=True)


def cut(text: str) -> str:
    """``text`` on one line; a long one cut, with a digest of the whole."""
    text = " ".join(text.split("\n"))
    if len(text) <= WIDTH:
        return text
    return f"{text[:WIDTH - 24]}… sha256:{digest(text.encode())}"


def quote(value: str | bytes) -> str:
    """A string in double quotes, escaped; bytes that are no text by their length and digest."""
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None or not text.replace("\n", "").replace("\t", "").isprintable():
            return f"<{len(value)} bytes sha256:{digest(value)}>"
        value = text
    return json.dumps(value, ensure_ascii=False)


def float32(value: float) -> str:
    """A float field's value as the float32 it is stored as (``0.1``, not ``0.10000000149011612``)."""
    import numpy as np  # noqa: PLC0415

    return str(np.float32(value))


def message_text(msg: Message) -> str:
    """``{...}``: a message in one-line text format, for a type without a formatter."""
    return "{" + text_format.MessageToString(msg, as_one_line=True, as_utf8=True) + "}"


def scalar_text(fd: FieldDescriptor, value: Any) -> str:
    """A scalar field's value: enums by name, strings quoted, floats as float32."""
    if fd.type == FieldDescriptor.TYPE_ENUM:
        entry = fd.enum_type.values_by_number.get(value)
        return entry.name if entry is not None else str(value)
    if fd.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return quote(value)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return "true" if value else "false"
    if fd.type == FieldDescriptor.TYPE_FLOAT:
        return float32(value)
    return repr(value)


def _same_scalar(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return bool(a == b)


def _value(fd: FieldDescriptor, value: Any, formatters: Formatters) -> str:
    if fd.message_type is None:
        return scalar_text(fd, value)
    fmt = formatters.get(fd.message_type.name)
    return cut(fmt(value) if fmt else message_text(value))


def listing(items: Iterable[str]) -> str:
    """``[a, b, ...]``, cut when long."""
    return cut("[" + ", ".join(items) + "]")


def with_values(head: str, values: Sequence[str], *, scalar: bool) -> str:
    """A tensor's ``head`` (type and shape) and its values: one bare value for a scalar, else a list."""
    return f"{head} {values[0]}" if scalar and len(values) == 1 else f"{head} [{', '.join(values)}]"


# ------------------------------------------------------------- generic field diff


def is_repeated(fd: FieldDescriptor) -> bool:
    repeated = getattr(fd, "is_repeated", None)
    return bool(repeated) if repeated is not None else fd.label == FieldDescriptor.LABEL_REPEATED


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _unknown(msg: Message) -> list[tuple[int, int, str]]:
    return [(f.field_number, f.wire_type, repr(f.data)) for f in unknown_fields.UnknownFieldSet(msg)]


def field_changes(a: Message, b: Message, formatters: Formatters, *, skip: Sequence[str] = (),
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
        elif is_repeated(fd):
            lines += _repeated_fields(name, fd, va, vb, formatters)
        elif fd.message_type is not None:
            has_a, has_b = a.HasField(fd.name), b.HasField(fd.name)
            if not has_a and not has_b:
                continue
            if has_a != has_b or fd.message_type.name in formatters:
                if not has_a or not has_b or canonical_bytes(va) != canonical_bytes(vb):
                    old = _value(fd, va, formatters) if has_a else NONE
                    new = _value(fd, vb, formatters) if has_b else NONE
                    lines.append(f"{name}: {old} -> {new}")
            else:
                lines += field_changes(va, vb, formatters, path=f"{name}.")
        else:
            # Presence counts in a oneof only: elsewhere an unset field reads as its default.
            in_oneof = fd.containing_oneof is not None and fd.has_presence and len(fd.containing_oneof.fields) > 1
            has_a = a.HasField(fd.name) if in_oneof else True
            has_b = b.HasField(fd.name) if in_oneof else True
            if has_a != has_b or not _same_scalar(va, vb):
                old = scalar_text(fd, va) if has_a else NONE
                new = scalar_text(fd, vb) if has_b else NONE
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
                lines.append(f"{label}: {scalar_text(value_fd, va[key])} -> {scalar_text(value_fd, vb[key])}")
        elif canonical_bytes(va[key]) != canonical_bytes(vb[key]):
            if value_fd.message_type.name in formatters:
                lines.append(f"{label}: {_value(value_fd, va[key], formatters)} -> "
                             f"{_value(value_fd, vb[key], formatters)}")
            else:
                lines += field_changes(va[key], vb[key], formatters, path=f"{label}.")
    return lines


def _repeated_fields(name: str, fd: FieldDescriptor, va: Any, vb: Any, formatters: Formatters) -> list[str]:
    if fd.message_type is None:
        if len(va) == len(vb) and all(_same_scalar(x, y) for x, y in zip(va, vb)):
            return []
        return [f"{name}: {listing(scalar_text(fd, x) for x in va)} -> {listing(scalar_text(fd, x) for x in vb)}"]
    if [canonical_bytes(x) for x in va] == [canonical_bytes(x) for x in vb]:
        return []
    if len(va) == len(vb) and fd.message_type.name not in formatters:
        lines = []
        for i, (x, y) in enumerate(zip(va, vb)):
            lines += field_changes(x, y, formatters, path=f"{name}[{i}].")
        return lines
    return [f"{name}: {listing(_value(fd, x, formatters) for x in va)} -> "
            f"{listing(_value(fd, x, formatters) for x in vb)}"]


def changed_lines(subject: str, details: Iterable[str]) -> list[str]:
    """``~ subject: detail`` for each detail: what changed in an entry both sides have."""
    return [f"~ {subject}: {d}" for d in details]


def positional(what: str, a: Sequence[str], b: Sequence[str]) -> list[str]:
    """``input 1: x -> y`` for each position of two equally long lists, else the whole lists."""
    if list(a) == list(b):
        return []
    if len(a) == len(b):
        return [f"{what} {i}: {x or NONE} -> {y or NONE}" for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return [f"{what}s: ({', '.join(a)}) -> ({', '.join(b)})"]


def keyed(kind: str, a: Mapping[str, Any], b: Mapping[str, Any], *,
          removed: Callable[[str, Any], str], added: Callable[[str, Any], str],
          changed: Callable[[Any, Any], list[str]]) -> list[str]:
    """Removed, added, then changed entries of two keyed collections, each by key."""
    lines = [f"- {kind} {removed(k, a[k])}" for k in sorted(a.keys() - b.keys())]
    lines += [f"+ {kind} {added(k, b[k])}" for k in sorted(b.keys() - a.keys())]
    for k in sorted(a.keys() & b.keys()):
        lines += changed_lines(f"{kind} {k}", changed(a[k], b[k]))
    return lines


def nested(prefix: str, lines: Iterable[str]) -> list[str]:
    """The lines of a nested structure's diff, each behind the path that leads to it."""
    return [f"{prefix}: {line}" for line in lines]
