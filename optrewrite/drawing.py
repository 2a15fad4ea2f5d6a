"""A picture of what a rewrite inserted: each site's new nodes as a cluster, with their neighbours.

Works on format-neutral :class:`Changes` (which nodes the rewrite inserted or changed) and a
:class:`GraphView` of the rewritten graph, built only to draw (one adapter per format:
``optrewrite/tf/explain.py``, ``optrewrite/onnx/explain.py``). Inserted nodes are grouped by
the site whose name prefix they carry; the rest (global-norm clip, the plan record, lowered
step scalars) form one "shared" cluster. Neighbours are the nodes outside
a cluster that feed it or read from it, at most :data:`MAX_NEIGHBOURS` per cluster.

Names come from the graph: each label shows them :func:`~optrewrite.errors.printable`, then
quoted for DOT (quotes and backslashes escaped), so no name can end a DOT string, add a line
to the file, or put an ESC sequence into a viewer's terminal.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from optrewrite.errors import printable

MAX_NEIGHBOURS = 16
_INSERTED, _CHANGED, _NEIGHBOUR = "#cfe3ff", "#ffe0a8", "#f2f2f2"
LEGEND = "\nblue: inserted, orange: changed, grey: unchanged neighbour, dashed: control edge"


@dataclass(frozen=True)
class GNode:
    key: str  # the node's name (ONNX: its name, or its first output when unnamed)
    op: str
    inputs: tuple[str, ...]  # keys of the nodes it reads
    controls: tuple[str, ...] = ()  # keys of the nodes it waits for (TF control inputs)
    nested: tuple[str, ...] = ()  # keys of the nodes inside its subgraphs (ONNX If branches)


@dataclass
class GraphView:
    nodes: dict[str, GNode] = field(default_factory=dict)

    def consumers(self) -> dict[str, list[tuple[str, bool]]]:
        """key -> [(consumer key, is a control edge)]."""
        out: dict[str, list[tuple[str, bool]]] = {}
        for node in self.nodes.values():
            for src in node.inputs:
                out.setdefault(src, []).append((node.key, False))
            for src in node.controls:
                out.setdefault(src, []).append((node.key, True))
        return out


@dataclass
class Changes:
    """What a rewrite did to the top-level nodes, by key."""

    inserted: list[str]  # new nodes, in graph order
    changed: set[str]  # existing nodes with other contents
    new_inside: dict[str, int] = field(default_factory=dict)  # inserted key -> new nodes in its branches

    @classmethod
    def between(cls, before: GraphView, after: GraphView, *, edited: frozenset[str] | set[str] = frozenset()) -> Changes:
        """Compare two views; a nested node is new when its key is nowhere in ``before``.
        ``edited`` names the nodes the rewrite's editor changed in place (what the views'
        structure does not show: an attribute, an output name)."""
        known = set(before.nodes) | {k for n in before.nodes.values() for k in n.nested}
        inserted = [k for k in after.nodes if k not in before.nodes]
        changed = {k for k, n in after.nodes.items()
                   if k in before.nodes and (k in edited or _differs(before.nodes[k], n))}
        inside = {k: sum(n not in known for n in after.nodes[k].nested) for k in inserted}
        return cls(inserted, changed, {k: n for k, n in inside.items() if n})


@dataclass
class Grouping:
    """The inserted nodes of each site (None: shared), and how to label each cluster."""

    changes: Changes
    groups: dict[str | None, list[str]]
    labels: dict[str | None, str]

    def count(self, site: str | None) -> int:
        """Inserted nodes of one site (None: the shared ones), new nodes inside branches included;
        original nodes moved into a branch are not counted."""
        return sum(1 + self.changes.new_inside.get(k, 0) for k in self.groups.get(site, []))


class Drawing:
    """The DOT picture of a grouping; the rewritten graph's view is built when first drawn."""

    def __init__(self, grouping: Grouping, view: Callable[[], GraphView]) -> None:
        self.grouping = grouping
        self._view = view
        self._after: GraphView | None = None

    @property
    def after(self) -> GraphView:
        if self._after is None:
            self._after = self._view()
        return self._after

    def to_dot(self, *, title: str) -> str:
        ids: dict[str, str] = {}

        def ident(key: str) -> str:
            return ids.setdefault(key, f"n{len(ids)}")

        lines = [
            "digraph optrewrite {",
            '  graph [rankdir=TB, fontname="Helvetica", fontsize=12, labelloc=t, '
            f'label={_q(printable(title) + LEGEND)}];',
            '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, fillcolor="white"];',
            '  edge [color="#555555"];',
        ]
        consumers = self.after.consumers()
        groups, labels = self.grouping.groups, self.grouping.labels
        inserted = set(self.grouping.changes.inserted)
        shown: set[str] = set()
        neighbours: dict[str, None] = {}
        for i, (site, keys) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))):
            lines.append(f"  subgraph cluster_{i} {{")
            label = _q(printable(labels[site]))
            lines.append(f'    label={label}; style="rounded,filled"; fillcolor="#fbfbff"; color="#7799cc";')
            members = set(keys)
            for key in keys:
                lines.append(f"    {ident(key)} [label={_q(self._label(key))}, fillcolor=\"{_INSERTED}\"];")
                shown.add(key)
            lines.append("  }")
            near: dict[str, None] = {}
            for key in keys:
                node = self.after.nodes[key]
                for src in (*node.inputs, *node.controls):
                    if src not in members:
                        near[src] = None
                for dst, _ in consumers.get(key, []):
                    if dst not in members:
                        near[dst] = None
            outside = [k for k in near if k in self.after.nodes and k not in inserted]
            for key in outside[:MAX_NEIGHBOURS]:
                neighbours[key] = None
            if len(outside) > MAX_NEIGHBOURS:
                more = f"more_{i}"
                lines.append(f'  {ident(more)} [label="... {len(outside) - MAX_NEIGHBOURS} more neighbours", '
                             'shape=plaintext, style=""];')
        for key in neighbours:
            color = _CHANGED if key in self.grouping.changes.changed else _NEIGHBOUR
            lines.append(f"  {ident(key)} [label={_q(self._label(key))}, fillcolor=\"{color}\"];")
            shown.add(key)
        for key in sorted(shown, key=ident):
            node = self.after.nodes[key]
            for src in dict.fromkeys(node.inputs):
                if src in shown:
                    lines.append(f"  {ident(src)} -> {ident(key)};")
            for src in dict.fromkeys(node.controls):
                if src in shown:
                    lines.append(f"  {ident(src)} -> {ident(key)} [style=dashed];")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _label(self, key: str) -> str:
        node = self.after.nodes[key]
        extra = f" ({len(node.nested)} nodes inside)" if node.nested else ""
        mark = "\n(changed)" if key in self.grouping.changes.changed else ""
        return f"{printable(key)}\n{printable(node.op)}{extra}{mark}"


def _q(text: str) -> str:
    """``text`` as a DOT string: its newlines are the label's line breaks; names in it are
    already :func:`printable`, so no other control character is left."""
    lines = (printable(line) for line in text.split("\n"))
    return '"' + "\\n".join(line.replace("\\", "\\\\").replace('"', '\\"') for line in lines) + '"'


def group(changes: Changes, sites: Sequence[tuple[str, str, str]]) -> Grouping:
    """Group the inserted nodes by site. ``sites``: (site key, name prefix of its nodes, ending
    in "/", label); a node belongs to the site with the longest prefix of its name."""
    owners = {prefix: site for site, prefix, _ in sites}
    groups: dict[str | None, list[str]] = {}
    labels: dict[str | None, str] = {None: "shared"}
    for site, _, label in sites:
        labels[site] = label
    for key in changes.inserted:
        owner = None
        cut = key.rfind("/")
        while cut >= 0:
            owner = owners.get(key[: cut + 1])
            if owner is not None:
                break
            cut = key.rfind("/", 0, cut)
        groups.setdefault(owner, []).append(key)
    return Grouping(changes, groups, labels)


def _differs(a: GNode, b: GNode) -> bool:
    return (a.op, a.inputs, a.controls, a.nested) != (b.op, b.inputs, b.controls, b.nested)
