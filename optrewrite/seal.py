"""The seal of a graph file optrewrite wrote: ``--check`` without a search.

A rewrite records its plan in the output (a TensorFlow graph's ``optrewrite/plan`` node, a
SavedModel's ``optrewrite_plan`` collection). A binary output also carries a seal beside it:
64 hexadecimal digits, the SHA-256 of

    b"optrewrite seal 1\\0" + KEY + b"\\0" + the file's bytes without those 64

where KEY names the spec by its meaning (:func:`optrewrite.spec.fingerprint`, which leaves
out file names, line numbers and comments). A format places the seal right after a byte
string of its own, the ``marker`` (the serialized head of the field that holds it), writes
:data:`PLACEHOLDER` there and calls :func:`fill` on the serialized bytes, so no length
prefix changes. ``--check`` of such a file with the same spec calls :func:`holds`: true, the
file is byte for byte what a rewrite with this spec wrote, and the answer ("nothing to do")
is the one a full check reaches, without parsing the graph or searching its updates. Any
other file (a changed byte, another spec, text, a file written before seals existed) takes
the full check.

The seal is no signature: whoever can write the file can recompute it, as they can write a
plan record. It saves work; it does not vouch for the file.
"""
from __future__ import annotations

import hashlib

from optrewrite.spec import Spec, fingerprint

PLACEHOLDER = b"-" * 64
_MAX_CANDIDATES = 16  # a file need not be searched whole: the seal is written near its end


def spec_key(spec: Spec) -> bytes:
    """The KEY of a seal for ``spec``."""
    return fingerprint(spec).encode()


def _digest(raw: bytes, at: int, key: bytes) -> bytes:
    view = memoryview(raw)
    h = hashlib.sha256(b"optrewrite seal 1\0" + key + b"\0")
    h.update(view[:at])
    h.update(view[at + len(PLACEHOLDER):])
    return h.hexdigest().encode()


def fill(raw: bytes, marker: bytes, key: bytes) -> bytes:
    """``raw``, just serialized with :data:`PLACEHOLDER` after ``marker``, with the seal there."""
    at = raw.rfind(marker + PLACEHOLDER)
    if at < 0:
        raise AssertionError("the rewritten graph holds no seal placeholder")
    at += len(marker)
    return raw[:at] + _digest(raw, at, key) + raw[at + len(PLACEHOLDER):]


def holds(raw: bytes, marker: bytes, key: bytes) -> bool:
    """Whether ``raw`` carries, after one of its last occurrences of ``marker``, a seal for ``key``
    that matches its bytes."""
    limit = len(raw)
    for _ in range(_MAX_CANDIDATES):
        at = raw.rfind(marker, 0, limit)
        if at < 0:
            return False
        limit = at
        value = raw[at + len(marker):at + len(marker) + len(PLACEHOLDER)]
        if value != PLACEHOLDER and value == _digest(raw, at + len(marker), key):
            return True
    return False
