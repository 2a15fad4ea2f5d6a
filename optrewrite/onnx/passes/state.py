"""An ONNX update site as the passes transform it, and what its passes share.

A site is one tensor X of a preview-training node (:class:`NodeGroup` holds what the node's
tensors share), or a site a spec declares in a step written in plain ops
(:class:`Declared` holds the producer and reader tables the declared sites share).

The site's *update* (X and its states to their new values) is placed once, by the first
pass that needs it (:meth:`SiteState.place_update`): inside the guard's branch, before the
clip, or by the lowering; an update that no pass placed stays in the training node.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import onnx

from optrewrite.errors import InputError
from optrewrite.onnx.graph import PREFIX, PREVIEW_DOMAIN, Block, Editor, node_uses
from optrewrite.onnx import lowering
from optrewrite.onnx.sites import TrainingNode, UpdateSite
from optrewrite.passes import Selection


@dataclass
class NodeGroup:
    """One preview-training node under rewrite: its attributes, its block (the step scalars
    and the updates placed outside a guard), and its sites' states."""

    editor: Editor
    node: TrainingNode
    lower: bool
    states: list[SiteState] = field(default_factory=list)
    _block: Block | None = None
    attrs: dict[str, object] = field(default_factory=dict)
    shared: dict[int, lowering.Shared] = field(default_factory=dict)  # per element type, when lowered

    @property
    def proto(self) -> onnx.NodeProto:
        return self.editor.graph.node[self.node.index]

    def start(self) -> Block:
        """The node's block, started on first use: the node's attributes checked and, when
        lowered, the step scalars its tensors share emitted."""
        if self._block is None:
            ed, node = self.editor, self.proto
            self.attrs = lowering.attributes(node, self.node.sites[0].key)
            self._block = ed.block(f"{PREFIX}/{node.name or self.node.kind}")
            if self.lower:
                r, t = node.input[0], node.input[1]
                r_type = ed.elem_type(r) or self.node.sites[0].elem_type
                self.shared = {elem: lowering.shared_scalars(self._block, self.node.kind, self.attrs, r, t, r_type, elem)
                               for elem in sorted({s.elem_type for s in self.node.sites})}
        return self._block

    @property
    def touched(self) -> bool:
        return any(st.selection.touched for st in self.states)

    def assemble(self) -> None:
        """Replace the training node by its block, then what is left of it (its tensors no
        pass placed elsewhere, in one node of the same kind and name), then each tensor's
        guard and clips."""
        ed = self.editor
        block = self.start()
        node = self.proto
        kept = [st for st in self.states if not st.placed]
        replacement = list(block.nodes)
        rebuilt = None
        if kept:
            inputs = [node.input[0], node.input[1], *(st.site.variable for st in kept), *(st.gradient for st in kept)]
            outputs = [st.x_out for st in kept]
            for k in range(len(kept[0].site.states)):
                inputs += [st.site.states[k][0] for st in kept]
                outputs += [st.site.states[k][1] for st in kept]
            rebuilt = onnx.NodeProto()
            rebuilt.CopyFrom(node)
            del rebuilt.input[:], rebuilt.output[:]
            rebuilt.input.extend(inputs)
            rebuilt.output.extend(outputs)
            replacement.append(rebuilt)
        for st in self.states:
            for tail in st.tails:
                replacement.extend(tail.nodes)
        ed.replace_node(self.node.index, replacement, rebuilt=rebuilt)


@dataclass
class Declared:
    """Who produces and who reads each tensor, and which nodes the selected gradients need.

    Built once, on first use, for all declared sites: a site's edits rename only its own
    results and move only nodes no other site reads, so the tables stay valid for the next.
    """

    editor: Editor
    sites: list[UpdateSite]
    _tables: tuple[dict[str, int], dict[str, set[int]], set[int]] | None = None

    def _build(self) -> tuple[dict[str, int], dict[str, set[int]], set[int]]:
        if self._tables is None:
            nodes = self.editor.graph.node
            producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
            readers: dict[str, set[int]] = {}
            for i, n in enumerate(nodes):
                for name in node_uses(n):
                    readers.setdefault(name, set()).add(i)
            for o in self.editor.graph.output:
                readers.setdefault(o.name, set()).add(-1)
            starts = [producer[s.gradient] for s in self.sites if s.gradient in producer]
            self._tables = producer, readers, ancestors(nodes, producer, starts, stop=set())
        return self._tables

    @property
    def producer(self) -> dict[str, int]:
        return self._build()[0]

    @property
    def readers(self) -> dict[str, set[int]]:
        return self._build()[1]

    @property
    def gradient_side(self) -> set[int]:
        """Nodes some selected gradient depends on: they always run."""
        return self._build()[2]


def ancestors(nodes: Sequence[onnx.NodeProto], producer: dict[str, int], start: list[int], *,
              stop: set[int]) -> set[int]:
    """``start`` and the nodes they depend on, not walking into ``stop``."""
    seen: set[int] = set()
    stack = [i for i in start if i not in stop]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        stack.extend(j for name in node_uses(nodes[i]) if (j := producer.get(name)) is not None and j not in stop)
    return seen


@dataclass
class SiteState:
    """One site during the rewrite.

    ``gradient`` is what the update consumes (the global-norm clip replaces it); ``x_out``
    the name the update gives X's new value (a fresh one when a clip follows, which then
    produces the site's original output); ``tails`` the blocks emitted after the update, in
    order (the guard, the clip chain).
    """

    selection: Selection[UpdateSite]
    editor: Editor
    gradient: str
    group: NodeGroup | None = None  # the training node; None: a declared site
    declared: Declared | None = None
    tails: list[Block] = field(default_factory=list)
    placed: bool = False  # the update was emitted (in a branch, lowered) outside the training node
    applied: str | None = None  # the guard's scalar bool: the update ran this step
    step_finite: str | None = None  # guard scope step: every selected gradient is finite
    counters: list[str] = field(default_factory=list)  # guard counters: the state inputs added
    _cone: set[int] | None = None
    _x_out: str | None = None

    @property
    def x_out(self) -> str:
        if self._x_out is None:
            clipped = self.selection.has("clip")
            self._x_out = self.editor.fresh(f"{self.site.updated}/{PREFIX}_unclipped") if clipped else self.site.updated
        return self._x_out

    @property
    def site(self) -> UpdateSite:
        return self.selection.site

    @property
    def scope(self) -> str:
        return f"{PREFIX}/{self.site.variable}"

    @property
    def outs(self) -> list[str]:
        """The update's results: X's new value, then each state's."""
        return [self.x_out, *(new for _, new in self.site.states)]

    @property
    def olds(self) -> list[str]:
        """What the update reads and replaces: X, then each state."""
        return [self.site.variable, *(old for old, _ in self.site.states)]

    @property
    def lowered(self) -> bool:
        return self.selection.has("lower")

    def place_update(self, block: Block, outs: Sequence[str]) -> None:
        """Emit this training-node tensor's update into ``block``, writing ``outs``: standard
        ops when lowered, else a one-tensor training node of the same kind."""
        assert self.group is not None and not self.placed
        group, site = self.group, self.site
        node = group.proto
        group.start()
        if self.lowered:
            lowering.update(block, group.node.kind, group.attrs, group.shared[site.elem_type], site.variable,
                            self.gradient, self.olds[1:], site.elem_type, list(outs))
        else:
            block.emit(group.node.kind, [node.input[0], node.input[1], site.variable, self.gradient, *self.olds[1:]],
                       outs=list(outs), domain=PREVIEW_DOMAIN, **group.attrs)
        self.placed = True

    def settle_update(self) -> None:
        """Fix where an update no guard placed happens, before a clip follows it or the
        lowering: a lowered one goes into the node's block, another training-node tensor's
        stays in the training node; a declared update's result is renamed to ``x_out``."""
        if self.placed:
            return
        if self.group is None:
            d = self.declared
            assert d is not None
            i = d.producer[self.site.updated]
            node = self.editor.graph.node[i]
            self.editor.set_io(i, outputs=[self.x_out if o == self.site.updated else o for o in node.output])
            self.placed = True
        elif self.lowered:
            self.place_update(self.group.start(), self.outs)
        else:
            self.group.start()

    @property
    def cone(self) -> set[int]:
        """A declared site: the nodes its results depend on, short of the gradient's side."""
        if self._cone is None:
            assert self.declared is not None
            d = self.declared
            self._cone = ancestors(self.editor.graph.node, d.producer, [d.producer[o] for o in self.site_outs],
                                   stop=d.gradient_side)
        return self._cone

    @property
    def site_outs(self) -> list[str]:
        """The site's own result names (X's next value as the graph names it, then the states')."""
        return [self.site.updated, *(new for _, new in self.site.states)]


def cycle_error(site: UpdateSite, name: str) -> InputError:
    return InputError(f"{site.key}: a selected gradient depends on this update's result {name!r}; "
                      "guarding it would make a cycle")


def site_states(ed: Editor, nodes: Sequence[TrainingNode], selections: Sequence[Selection[UpdateSite]], *,
                lower: bool) -> tuple[list[SiteState], list[NodeGroup]]:
    """One state per site, in the selections' order, with the training nodes' groups and the
    declared sites' shared tables; nothing is emitted yet."""
    groups = {tn.index: NodeGroup(ed, tn, lower) for tn in nodes}
    declared = Declared(ed, [sel.site for sel in selections if sel.site.node is None and sel.touched])
    states = []
    for sel in selections:
        node = sel.site.node
        st = SiteState(sel, ed, sel.site.gradient, group=groups[node] if node is not None else None,
                       declared=declared if node is None else None)
        if st.group is not None:
            st.group.states.append(st)
        states.append(st)
    return states, list(groups.values())
