"""An editor over a GraphDef: lookup by name, consumer queries, node creation, rewiring.

Every edit goes through :class:`GraphEditor`, so it knows which input nodes changed (for
byte-preserving output) and which nodes are new. New nodes are appended in creation order
and carry the ``_optrewrite`` attr naming the pass that made them.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, Sequence

from optrewrite.errors import quoted
from optrewrite.tf import proto

TAG_ATTR = "_optrewrite"
_STRUCT_CODES = {
    proto.DT_FLOAT: "f",
    proto.DT_DOUBLE: "d",
    proto.DT_HALF: "e",
    proto.DT_INT32: "i",
    proto.DT_INT64: "q",
}


def node_of(tensor: str) -> str:
    """The producing node of a tensor or control input string ("a", "a:1", "^a")."""
    if tensor.startswith("^"):
        return tensor[1:]
    return tensor.split(":", 1)[0]


def canonical_tensor(tensor: str) -> str:
    """'a' and 'a:0' name the same tensor; return the 'a:0' spelling."""
    return tensor if ":" in tensor else f"{tensor}:0"


@dataclass(frozen=True)
class Placement:
    """Where inserted nodes go: the device of their update, and optional colocation."""

    device: str
    colocate_with: str | None = None


@dataclass
class Topology:
    """Name index and consumer tables of a graph, built in one pass over every input."""

    index: dict[str, int]
    data_consumers: dict[str, list[int]]
    control_consumers: dict[str, list[int]]


class GraphError(ValueError):
    """The graph itself is malformed (duplicate names, dangling inputs, a cycle)."""


LOOP_BACK_EDGES = frozenset({"NextIteration", "RefNextIteration"})  # while-loop back edges: their consumers do not wait
LOOP_MERGES = frozenset({"Merge", "RefMerge"})  # what a back edge feeds


def build_topology(graph: proto.GraphDef) -> Topology:
    """Index and consumer tables; raises GraphError unless every node has a unique name and an
    op, every input names a node (data inputs first, output indices int32), the graph has no
    cycle but loops, and every ``NextIteration`` feeds only a ``Merge`` (the back edge of a
    while loop: TensorFlow's executor crashes on one that feeds anything else)."""
    index: dict[str, int] = {}
    back_edges: list[str] = []
    for i, node in enumerate(graph.node):
        if not node.name or not node.op:
            raise GraphError("a node has no name or op")
        if index.setdefault(node.name, i) != i:
            raise GraphError(f"duplicate node name {quoted(node.name)}")
        if node.op in LOOP_BACK_EDGES:
            back_edges.append(node.name)
    data: dict[str, list[int]] = {}
    control: dict[str, list[int]] = {}
    ordered = True  # every input comes from an earlier node: no cycle is possible
    for i, node in enumerate(graph.node):
        controls = False
        for inp in node.input:
            if not inp:
                raise GraphError(f"node {quoted(node.name)} has an empty input")
            if inp[0] == "^":
                src, table = inp[1:], control
                controls = True
            else:
                if controls:
                    raise GraphError(f"node {quoted(node.name)} has data input {quoted(inp)} after a control input")
                src, _, port = inp.partition(":")
                table = data
                if port and not (port.isascii() and port.isdigit() and len(port) <= 10 and int(port) < 2**31):
                    # TensorFlow's importer reads the output index as an int32 (2**31 crashes it)
                    raise GraphError(f"node {quoted(node.name)} has input {quoted(inp)}, whose output index is no int32")
            j = index.get(src)
            if j is None:
                raise GraphError(f"node {quoted(node.name)} has input {quoted(inp)}, which names no node")
            if j >= i:
                ordered = False
            lst = table.get(src)
            if lst is None:
                table[src] = [i]
            elif lst[-1] != i:
                lst.append(i)
    for name in back_edges:
        for j in data.get(name, ()):
            if graph.node[j].op not in LOOP_MERGES:
                raise GraphError(f"node {quoted(name)} ({graph.node[index[name]].op}) feeds {quoted(graph.node[j].name)} "
                                 f"({graph.node[j].op}), not the Merge of a while loop")
    topology = Topology(index=index, data_consumers=data, control_consumers=control)
    if not ordered:
        _check_acyclic(graph, topology)
    return topology


def _check_acyclic(graph: proto.GraphDef, topology: Topology) -> None:
    """Raise GraphError naming a node on a cycle that no while-loop back edge breaks."""
    nodes = graph.node
    tables = (topology.data_consumers, topology.control_consumers)
    waiting = [0] * len(nodes)
    for table in tables:
        for src, consumers in table.items():
            if nodes[topology.index[src]].op not in LOOP_BACK_EDGES:
                for i in consumers:
                    waiting[i] += 1
    ready = [i for i, n in enumerate(waiting) if n == 0]
    while ready:
        j = ready.pop()
        if nodes[j].op in LOOP_BACK_EDGES:
            continue
        for table in tables:
            for i in table.get(nodes[j].name, ()):
                waiting[i] -= 1
                if waiting[i] == 0:
                    ready.append(i)
    stuck = next((i for i, n in enumerate(waiting) if n), None)
    if stuck is None:
        return
    # Every stuck node waits for a stuck input; walk back until a node repeats.
    seen: set[int] = set()
    while stuck not in seen:
        seen.add(stuck)
        inputs = [topology.index[node_of(inp)] for inp in nodes[stuck].input]
        stuck = next(j for j in inputs if waiting[j] and nodes[j].op not in LOOP_BACK_EDGES)
    raise GraphError(f"it has a cycle through node {quoted(nodes[stuck].name)}")


class GraphEditor:
    def __init__(self, graph: proto.GraphDef, topology: Topology | None = None) -> None:
        self.graph = graph
        self.first_new = len(graph.node)
        topo = topology or build_topology(graph)
        self.index = topo.index
        self._topology: Topology | None = topo
        self.changed: set[int] = set()
        self._linted = len(graph.node)  # nodes before this index passed the lint
        self._unlinted: set[int] = set()  # existing nodes changed since the last lint

    # ----------------------------------------------------------------- queries
    def node(self, name: str) -> proto.NodeDef:
        return self.graph.node[self.index[name]]

    def producer(self, tensor: str) -> proto.NodeDef:
        return self.node(node_of(tensor))

    def _topo(self) -> Topology:
        if self._topology is None:
            raise AssertionError("consumer tables are only valid before the first edit")
        return self._topology

    def data_consumers(self, name: str) -> list[int]:
        """Indices of the input graph's nodes that take an output of ``name`` as data."""
        return self._topo().data_consumers.get(name, [])

    def control_consumers(self, name: str) -> list[int]:
        """Indices of the input graph's nodes with a control input ^name."""
        return self._topo().control_consumers.get(name, [])

    # ----------------------------------------------------------------- edits
    def unique_name(self, name: str) -> str:
        if name not in self.index:
            return name
        k = 1
        while f"{name}_{k}" in self.index:
            k += 1
        return f"{name}_{k}"

    def add(
        self,
        name: str,
        op: str,
        inputs: Sequence[str] = (),
        *,
        attrs: dict[str, proto.AttrValue] | None = None,
        placement: Placement,
        tag: str,
        colocate: bool = False,
        control: Iterable[str] = (),
    ) -> str:
        """Append a node and return its (unique) name."""
        name = self.unique_name(name)
        node = self.graph.node.add()
        node.name = name
        node.op = op
        node.input.extend(inputs)
        node.input.extend(f"^{c}" for c in dict.fromkeys(control))
        node.device = placement.device
        for key, value in (attrs or {}).items():
            node.attr[key].CopyFrom(value)
        if colocate and placement.colocate_with:
            node.attr["_class"].list.s.append(f"loc:@{placement.colocate_with}".encode())
        node.attr[TAG_ATTR].s = tag.encode()
        self.index[name] = len(self.graph.node) - 1
        self._topology = None
        return name

    def mark_changed(self, name: str) -> None:
        i = self.index[name]
        if i < self.first_new:
            self.changed.add(i)
            self._unlinted.add(i)

    @property
    def added(self) -> list[str]:
        """The names of the nodes inserted so far, in graph order."""
        return [n.name for n in self.graph.node[self.first_new:]]

    def lint(self) -> None:
        """After an edit: names are unique, and every input of a node added or changed since
        the last lint names an existing node. A failure is a bug of the rewrite."""
        if len(self.index) != len(self.graph.node):
            raise AssertionError("duplicate node names after rewrite")
        nodes, index = self.graph.node, self.index
        for i in [*self._unlinted, *range(self._linted, len(nodes))]:
            node = nodes[i]
            for inp in node.input:
                if node_of(inp) not in index:
                    raise AssertionError(f"rewrite left {node.name!r} with dangling input {inp!r}")
        self._linted = len(nodes)
        self._unlinted.clear()

    def add_control_input(self, name: str, source: str) -> None:
        node = self.node(name)
        ctl = f"^{source}"
        if ctl not in node.input:
            node.input.append(ctl)
            self.mark_changed(name)
            self._topology = None

    def replace_input(self, name: str, position: int, tensor: str) -> None:
        node = self.node(name)
        node.input[position] = tensor
        self.mark_changed(name)
        self._topology = None

    def reroute_controls(self, consumer: str, mapping: dict[str, str]) -> None:
        """In ``consumer``, replace each control input ^old by ^mapping[old], keeping order.

        One rewrite of the input list per consumer, however many inputs change: a train op
        waiting for thousands of updates is rewired in linear time.
        """
        node = self.node(consumer)
        out: list[str] = []
        seen: set[str] = set()
        for inp in node.input:
            if inp[0] == "^" and inp[1:] in mapping:
                inp = "^" + mapping[inp[1:]]
            if inp in seen:
                continue
            seen.add(inp)
            out.append(inp)
        del node.input[:]
        node.input.extend(out)
        self.mark_changed(consumer)
        self._topology = None

    # ----------------------------------------------------------------- attrs and consts
    @staticmethod
    def type_attr(dtype: int) -> proto.AttrValue:
        return proto.AttrValue(type=dtype)

    @staticmethod
    def bool_attr(value: bool) -> proto.AttrValue:
        return proto.AttrValue(b=value)

    @staticmethod
    def int_attr(value: int) -> proto.AttrValue:
        return proto.AttrValue(i=value)

    def const(self, name: str, value: float | int | list, dtype: int, *, placement: Placement, tag: str) -> str:
        """A Const node holding ``value`` (a scalar or a flat list) as ``dtype``."""
        tensor = proto.TensorProto(dtype=dtype)
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list):
            tensor.tensor_shape.dim.add(size=len(values))
        tensor.tensor_content = pack_values(values, dtype)
        return self.add(
            name,
            "Const",
            attrs={"dtype": self.type_attr(dtype), "value": proto.AttrValue(tensor=tensor)},
            placement=placement,
            tag=tag,
        )


def _bfloat16_bits(value: float) -> int:
    """float32 -> bfloat16 by rounding to nearest even, as TensorFlow converts."""
    (bits,) = struct.unpack("<I", struct.pack("<f", value))
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def pack_values(values: list, dtype: int) -> bytes:
    """Little-endian tensor_content bytes of ``values`` as ``dtype``."""
    if dtype == proto.DT_BFLOAT16:
        return struct.pack(f"<{len(values)}H", *(_bfloat16_bits(float(v)) for v in values))
    return struct.pack(f"<{len(values)}{_STRUCT_CODES[dtype]}", *values)
