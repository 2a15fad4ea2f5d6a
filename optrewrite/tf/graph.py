"""An editor over a GraphDef: lookup by name, consumer queries, node creation, rewiring.

Every edit goes through :class:`GraphEditor`, so it knows which input nodes changed (for
byte-preserving output) and which nodes are new. New nodes are appended in creation order
and carry the ``_optrewrite`` attr naming the pass that made them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from optrewrite.tf import proto

TAG_ATTR = "_optrewrite"
_NP_DTYPES = {
    proto.DT_FLOAT: np.float32,
    proto.DT_DOUBLE: np.float64,
    proto.DT_HALF: np.float16,
    proto.DT_INT32: np.int32,
    proto.DT_INT64: np.int64,
}


def node_of(tensor: str) -> str:
    """The producing node of a tensor or control input string ("a", "a:1", "^a")."""
    if tensor.startswith("^"):
        return tensor[1:]
    return tensor.split(":", 1)[0]


def canonical_tensor(tensor: str) -> str:
    """'a' and 'a:0' name the same tensor; return the 'a:0' spelling."""
    return tensor if ":" in tensor else f"{tensor}:0"


def short_tensor(tensor: str) -> str:
    return tensor[:-2] if tensor.endswith(":0") else tensor


@dataclass(frozen=True)
class Placement:
    """Where inserted nodes go: the device of their update, and optional colocation."""

    device: str
    colocate_with: str | None = None


class GraphEditor:
    def __init__(self, graph: proto.GraphDef) -> None:
        self.graph = graph
        self.first_new = len(graph.node)
        self.index = {node.name: i for i, node in enumerate(graph.node)}
        self.changed: set[int] = set()
        self._consumers: dict[str, list[int]] | None = None

    # ----------------------------------------------------------------- queries
    def node(self, name: str) -> proto.NodeDef:
        return self.graph.node[self.index[name]]

    def has(self, name: str) -> bool:
        return name in self.index

    def producer(self, tensor: str) -> proto.NodeDef:
        return self.node(node_of(tensor))

    def consumers(self, name: str) -> list[int]:
        """Indices of nodes with any input (data or control) from node ``name``."""
        if self._consumers is None:
            table: dict[str, list[int]] = {}
            for i, node in enumerate(self.graph.node):
                for inp in node.input:
                    src = node_of(inp)
                    lst = table.get(src)
                    if lst is None:
                        table[src] = [i]
                    elif lst[-1] != i:
                        lst.append(i)
            self._consumers = table
        return self._consumers.get(name, [])

    def is_new(self, name: str) -> bool:
        return self.index[name] >= self.first_new

    def tagged(self) -> list[proto.NodeDef]:
        return [n for n in self.graph.node if TAG_ATTR in n.attr]

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
        if self._consumers is not None:
            for inp in node.input:
                self._consumers.setdefault(node_of(inp), []).append(self.index[name])
        return name

    def mark_changed(self, name: str) -> None:
        i = self.index[name]
        if i < self.first_new:
            self.changed.add(i)

    def add_control_input(self, name: str, source: str) -> None:
        node = self.node(name)
        ctl = f"^{source}"
        if ctl not in node.input:
            node.input.append(ctl)
            self.mark_changed(name)
            if self._consumers is not None:
                self._consumers.setdefault(source, []).append(self.index[name])

    def replace_input(self, name: str, position: int, tensor: str) -> None:
        node = self.node(name)
        node.input[position] = tensor
        self.mark_changed(name)
        self._consumers = None

    def reroute_control(self, consumer: str, old: str, new: str) -> None:
        """In ``consumer``, replace the control input ^old by ^new (once)."""
        node = self.node(consumer)
        inputs = list(node.input)
        ctl_old, ctl_new = f"^{old}", f"^{new}"
        out = []
        for inp in inputs:
            if inp == ctl_old:
                inp = ctl_new
            if inp == ctl_new and ctl_new in out:
                continue
            out.append(inp)
        del node.input[:]
        node.input.extend(out)
        self.mark_changed(consumer)
        self._consumers = None

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

    def const(self, name: str, value: object, dtype: int, *, placement: Placement, tag: str) -> str:
        """A Const node holding ``value`` (a scalar or nested list) as ``dtype``."""
        tensor = proto.TensorProto(dtype=dtype)
        array = np.asarray(value)
        for dim in array.shape:
            tensor.tensor_shape.dim.add(size=dim)
        if dtype == proto.DT_BFLOAT16:
            bits = np.asarray(array, np.float32).reshape(-1).view(np.uint32)
            # round to nearest even, as TF's float -> bfloat16 conversion does
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            tensor.tensor_content = rounded.tobytes()
        else:
            tensor.tensor_content = np.asarray(array, _NP_DTYPES[dtype]).tobytes()
        return self.add(
            name,
            "Const",
            attrs={"dtype": self.type_attr(dtype), "value": proto.AttrValue(tensor=tensor)},
            placement=placement,
            tag=tag,
        )
