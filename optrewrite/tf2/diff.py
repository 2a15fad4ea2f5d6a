"""The SavedModel side of ``optrewrite diff``.

1. the MetaGraphDefs, compared as :mod:`optrewrite.tf.diff` compares two MetaGraphDefs (graph
   nodes, library functions node by node, collections, signatures, saver, meta info);
2. the object graphs (``~ object_graph: …`` field by field);
3. every file under ``variables/`` and ``assets/`` by SHA-256 digest (``- file X``,
   ``+ file X``, ``~ file X: digest a -> b``). ``fingerprint.pb`` is not compared: it follows
   from the rest.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from optrewrite.diff import field_changes
from optrewrite.errors import printable
from optrewrite.tf.diff import _tf_graph, _tf_meta
from optrewrite.tf2 import io


def _files(root: Path) -> dict[str, str]:
    out = {}
    for sub in ("variables", "assets"):
        base = root / sub
        if base.is_dir():
            for path in sorted(base.rglob("*")):
                if path.is_file():
                    out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return out


def diff_savedmodels(a: Path, a_raw: bytes, b: Path, b_raw: bytes) -> list[str]:
    """The differences between two SavedModels, one line each."""
    la, lb = io.load(a, a_raw), io.load(b, b_raw)
    lines = _tf_graph(la.meta.graph_def, lb.meta.graph_def)
    lines += _tf_meta(la.meta, lb.meta)
    lines += [f"~ object_graph: {d}" for d in field_changes(la.meta.object_graph_def, lb.meta.object_graph_def, {})]
    fa, fb = _files(la.root), _files(lb.root)
    lines += [f"- file {k}" for k in sorted(fa.keys() - fb.keys())]
    lines += [f"+ file {k}" for k in sorted(fb.keys() - fa.keys())]
    lines += [f"~ file {k}: digest {fa[k]} -> {fb[k]}" for k in sorted(fa.keys() & fb.keys()) if fa[k] != fb[k]]
    return [printable(line) for line in lines]
