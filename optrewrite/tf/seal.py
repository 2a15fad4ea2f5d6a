"""The seal of a binary TensorFlow graph optrewrite wrote: ``--check`` without a search.

A rewrite records its plan in one NoOp, ``optrewrite/plan`` (:mod:`optrewrite.tf.rewrite`).
A binary output also carries, in that node's attr ``_optrewrite_seal``, the SHA-256 of

    b"optrewrite seal 1\\0" + KEY + b"\\0" + the file's bytes without that node's field

where KEY names the spec by its meaning (:func:`optrewrite.spec.fingerprint`, which leaves
out file names, line numbers and comments) and the ``lower`` flag. ``--check`` of such a file
with the same spec recomputes it: equal, the file is byte for byte what a rewrite with this
spec wrote, and the answer ("nothing to do") is the one a full check would reach, without
parsing the graph or searching its updates. Any other file (a changed byte, another spec, a
text graph, a graph rewritten before seals existed) takes the full check.

The seal is no signature: whoever can write the graph can recompute it, as they can write a
plan record; it saves work, it does not vouch for the file.

The rewrite writes the node with :data:`PLACEHOLDER` (as long as a digest) and
:func:`seal` fills it in the serialized bytes, so no length prefix around the node changes.
"""
from __future__ import annotations

import hashlib

from google.protobuf import message as pb_message

from optrewrite.tf import proto
from optrewrite.tf.io import _read_varint

SEAL_ATTR = "_optrewrite_seal"
PLACEHOLDER = "-" * 64  # a text graph keeps it: text output is not sealed
_PLAN_NAME = b"optrewrite/plan"
# a NodeDef serialized deterministically starts with its name (field 1), then its op (field 2)
_PLAN_HEAD = b"\x0a" + bytes([len(_PLAN_NAME)]) + _PLAN_NAME + b"\x12\x04NoOp"
_GRAPH_NODE = 0x0A  # GraphDef.node: field 1, length-delimited


def _digest(raw: bytes, start: int, end: int, key: bytes) -> str:
    view = memoryview(raw)
    h = hashlib.sha256(b"optrewrite seal 1\0" + key + b"\0")
    h.update(view[:start])
    h.update(view[end:])
    return h.hexdigest()


_MAX_CANDIDATES = 16  # the plan node is among the last nodes written; a file need not be searched whole


def _plan_nodes(raw: bytes):  # noqa: ANN202 - yields (field start, field end, NodeDef)
    """The places in ``raw`` that hold a whole ``optrewrite/plan`` node field, from the end."""
    limit = len(raw)
    for _ in range(_MAX_CANDIDATES):
        at = raw.rfind(_PLAN_HEAD, 0, limit)
        if at < 0:
            return
        limit = at
        for width in (1, 2):  # the length prefix before the node's payload (a plan node is short)
            start = at - 1 - width
            if start < 0 or raw[start] != _GRAPH_NODE:
                continue
            try:
                length, pos = _read_varint(raw, start + 1)
            except IndexError:
                continue
            if pos != at or at + length > len(raw):
                continue
            node = proto.NodeDef()
            try:
                node.ParseFromString(raw[at:at + length])
            except (pb_message.DecodeError, RuntimeError, ValueError):
                continue
            if node.name == _PLAN_NAME.decode() and SEAL_ATTR in node.attr:
                yield start, at + length, node


def seal(raw: bytes, key: bytes) -> bytes:
    """``raw`` (a binary graph optrewrite just wrote) with its plan node's placeholder filled."""
    placeholder = PLACEHOLDER.encode()
    for start, end, node in _plan_nodes(raw):
        if node.attr[SEAL_ATTR].s != placeholder:
            continue
        at = raw.find(placeholder, start, end)
        value = _digest(raw, start, end, key).encode()
        return raw[:at] + value + raw[at + len(value):]
    raise AssertionError("the rewritten graph has no plan node to seal")


def is_sealed(raw: bytes, key: bytes) -> bool:
    """Whether ``raw`` carries a seal for ``key`` that matches its bytes."""
    for start, end, node in _plan_nodes(raw):
        value = node.attr[SEAL_ATTR].s
        if value != PLACEHOLDER.encode() and value == _digest(raw, start, end, key).encode():
            return True
    return False
