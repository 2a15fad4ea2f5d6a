"""Graph and spec files: bounded reading, output paths and atomic writes (the format by
name: optrewrite.formats; what a run writes: optrewrite.writeplan).

Inputs are untrusted: a path may name a FIFO, a device (``/dev/zero``), a directory or a
file too large to parse. :func:`read_input` reads only regular files, at most
:data:`MAX_GRAPH_BYTES` (protobuf cannot parse a larger message) and :func:`read_spec` at
most :data:`MAX_SPEC_BYTES`; the size is checked before a byte is read.
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from optrewrite.errors import InputError
from optrewrite.writeplan import check_writable, write_atomic  # noqa: F401  (the file helpers live here too)

MAX_GRAPH_BYTES = 2**31 - 1  # 2 GiB: protobuf's limit on one serialized message
MAX_SPEC_BYTES = 1 << 20  # 1 MiB: a spec is a few rules; more is not a spec
_LIMIT_TEXT = {MAX_GRAPH_BYTES: "2 GiB", MAX_SPEC_BYTES: "1 MiB"}

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _size_text(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _check_regular(path: Path, st: os.stat_result, limit: int, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        if kind == "a directory" and what == "graph":
            raise InputError(f"{path}: is a directory, not a graph file")
        raise InputError(f"{path}: is {kind}, not a {what} file")
    if st.st_size > limit:
        why = " (protobuf's limit)" if limit == MAX_GRAPH_BYTES else ""
        raise InputError(f"{path}: the file is {_size_text(st.st_size)}; a {what} file may hold at most "
                         f"{_LIMIT_TEXT.get(limit) or _size_text(limit)}{why}")


def check_input_file(path: Path, *, limit: int = MAX_GRAPH_BYTES, what: str = "graph") -> None:
    """InputError unless ``path`` is a regular file of at most ``limit`` bytes (nothing is read)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    _check_regular(path, st, limit, what)


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """A regular file's bytes, at most ``limit``; InputError for anything else, checked before
    reading (a FIFO is opened without waiting for a writer). OSError passes through."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        _check_regular(path, st, limit, what)
    except BaseException:
        os.close(fd)
        raise
    with open(fd, "rb", buffering=0, closefd=True) as f:
        size = st.st_size
        parts, total = [], 0
        while total < size:  # a regular file is read whole, short reads aside
            part = f.read(size - total)
            if not part:
                break
            parts.append(part)
            total += len(part)
        if f.read(1):
            raise InputError(f"{path}: the file grew while it was read; read it when it is complete")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_input(path: Path, *, limit: int = MAX_GRAPH_BYTES) -> bytes:
    """A graph file's bytes; a file that cannot be read, is no regular file or is larger than
    ``limit`` is an InputError naming it."""
    try:
        return read_bounded(path, limit, "graph")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def read_spec(path: Path) -> bytes:
    """A spec file's bytes for :func:`optrewrite.spec.load_spec` (its ``read=``): at most
    :data:`MAX_SPEC_BYTES` of a regular file; OSError passes through for the spec's message."""
    return read_bounded(path, MAX_SPEC_BYTES, "spec")


def default_output(path: Path) -> Path:
    """``graph.pb`` -> ``graph.rewritten.pb`` beside the input; the suffixes do not stack:
    ``graph.rewritten.pb`` -> ``graph.rewritten-2.pb`` -> ``graph.rewritten-3.pb``."""
    return path.with_name(f"{rewritten_name(path.stem)}{path.suffix}")


def rewritten_name(stem: str) -> str:
    """``name`` -> ``name.rewritten``; ``name.rewritten`` -> ``name.rewritten-2``; ``-N`` -> ``-N+1``."""
    m = re.fullmatch(r"(?P<base>.*)\.rewritten(?:-(?P<n>[0-9]+))?", stem, re.S)
    if m is None:
        return f"{stem}.rewritten"
    return f"{m.group('base')}.rewritten-{int(m.group('n') or 1) + 1}"


__all__ = ["MAX_GRAPH_BYTES", "MAX_SPEC_BYTES", "check_input_file", "check_writable", "default_output",
           "read_bounded", "read_input", "read_spec", "write_atomic"]
