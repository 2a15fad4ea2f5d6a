"""Editing an ONNX graph: fresh names, typed constants, blocks of new nodes, the final order.

Every edit goes through :class:`Editor`, which records it: new nodes are emitted into
:class:`Block` s; a block replaces an original node, goes before or after one
(:meth:`Editor.replace_node`, :meth:`Editor.insert_before`, :meth:`Editor.insert_after`), or
becomes an ``If`` branch; an original node's inputs and outputs change only through
:meth:`Editor.set_io`. :meth:`Editor.finish` assembles the node list once, keeps the
original order wherever the dependencies allow (a stable topological sort runs only when an
insertion needs it), and checks that every tensor a node uses is defined before it. What
changed (:meth:`Editor.edited_keys`) is known without comparing or serializing nodes.

Nodes the rewrite creates are named ``optrewrite/...``; ONNX has no free-form node
attributes, so the name is the provenance.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from optrewrite.errors import InputError

PREFIX = "optrewrite"
PREVIEW_DOMAIN = "ai.onnx.preview.training"
MIN_OPSET = 13  # ReduceSum takes its axes as an input from opset 13 on
DEFAULT_OPSET = 17
_SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})
_PLAIN_DOMAINS = frozenset({"", "ai.onnx", PREVIEW_DOMAIN})  # no op of these has a graph attribute but those above


def elem_type_name(elem: int | None) -> str:
    """An element type as messages and tables name it: ``float``, ``double``, ``int64``, ..."""
    try:
        return onnx.TensorProto.DataType.Name(elem).lower()
    except ValueError:
        return f"element type {elem}"


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def has_subgraphs(node: onnx.NodeProto) -> bool:
    return node.op_type in _SUBGRAPH_OPS or (node.domain not in _PLAIN_DOMAINS and any(subgraphs(node)))


def free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph uses from its enclosing scopes."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(node_uses(node) - defined)
        defined.update(node.output)
    used.update(o.name for o in graph.output if o.name not in defined)
    return used


def node_uses(node: onnx.NodeProto) -> set[str]:
    """Every tensor a node reads, including those its subgraphs read from outside."""
    used = {i for i in node.input if i}
    if has_subgraphs(node):
        for sub in subgraphs(node):
            used |= free_names(sub)
    return used


def check_graph(graph: onnx.GraphProto) -> str | None:
    """Why the main graph is malformed, or None.

    Every name it defines (graph inputs, initializers, node outputs) is UTF-8 text (protobuf
    hands invalid UTF-8 in ONNX's proto2 strings back as bytes) and defined once, and every
    tensor a node reads, its subgraphs included, is defined before it: nodes are in
    topological order, so there are no dangling inputs and no cycles.
    """
    defined: set[str] = {""}
    for name in [*(i.name for i in graph.input), *(t.name for t in graph.initializer),
                 *(s.values.name for s in graph.sparse_initializer)]:
        if type(name) is not str:
            return f"the graph input or initializer name {name!r} is not UTF-8 text"
        defined.add(name)
    issuperset, add = defined.issuperset, defined.add
    for i, node in enumerate(graph.node):
        if type(node.name) is not str or type(node.op_type) is not str or type(node.domain) is not str:
            return f"node #{i} has a name, op_type or domain that is not UTF-8 text"
        if not issuperset(node.input) or has_subgraphs(node) and not issuperset(node_uses(node)):
            missing = sorted((n for n in node_uses(node) if n not in defined), key=repr)[0]
            later = any(missing in n.output for n in graph.node[i:])
            why = ("which a later node produces (nodes must be in topological order)" if later
                   else "which nothing defines")
            return f"node {node.name or f'#{i}'!r} ({node.op_type}) uses {missing!r}, {why}"
        for out in node.output:
            if out in defined and out:
                return f"{out!r} is defined twice (node {node.name or f'#{i}'!r} produces it again)"
            if type(out) is not str:
                return f"node {node.name or f'#{i}'!r} has an output name that is not UTF-8 text"
            add(out)
    for out in graph.output:
        if out.name not in defined:
            return f"the graph output {out.name!r} is not defined"
    return None


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name of a graph and of its subgraphs."""
    names = {i.name for i in graph.input} | {o.name for o in graph.output}
    names |= {t.name for t in graph.initializer} | {v.name for v in graph.value_info}
    for node in graph.node:
        names.update(node.output)
        if node.name:
            names.add(node.name)
        if has_subgraphs(node):
            for sub in subgraphs(node):
                names |= all_names(sub)
    return names


@dataclass
class Block:
    """New nodes in emission order, named under ``scope``."""

    editor: "Editor"
    scope: str
    nodes: list[onnx.NodeProto] = field(default_factory=list)

    def op(self, op_type: str, inputs: Sequence[str], *, out: str | None = None,
           domain: str = "", **attrs: object) -> str:
        """Emit a single-output node; return its output (named ``out`` when given)."""
        (name,) = self.emit(op_type, inputs, outs=[out] if out else None, domain=domain, **attrs)
        return name

    def emit(self, op_type: str, inputs: Sequence[str], *, outs: Sequence[str] | None = None,
             outputs: int = 1, domain: str = "", **attrs: object) -> list[str]:
        ed = self.editor
        node_name = ed.fresh(f"{self.scope}/{op_type}")
        if outs is None:
            outs = [node_name] if outputs == 1 else [ed.fresh(f"{node_name}:{k}") for k in range(outputs)]
        ed.created += 1
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outs), name=node_name,
                                           domain=domain or None, **attrs))
        return list(outs)

    def const(self, value: float | int | Sequence[int], elem_type: int) -> str:
        return self.editor.const(value, elem_type)

    def reduce(self, op_type: str, x: str, axes: Sequence[int] | None, *, keepdims: int) -> str:
        """A reduction over ``axes`` (all when None), in the form the model's opset takes:
        axes are an input from opset 13 for ReduceSum and from 18 for the others."""
        since = 13 if op_type == "ReduceSum" else 18
        if axes is None:
            return self.op(op_type, [x], keepdims=keepdims)
        if (self.editor.opset or 0) >= since:
            return self.op(op_type, [x, self.const(list(axes), TensorProto.INT64)], keepdims=keepdims)
        return self.op(op_type, [x], axes=list(axes), keepdims=keepdims)


class Editor:
    """One ONNX graph under rewrite."""

    def __init__(self, model: onnx.ModelProto, *, known_names: bool = True) -> None:
        """``known_names=False`` promises that no name in the model contains ``optrewrite``
        (e.g. its bytes do not), so fresh names, which all do, cannot collide."""
        self.model = model
        self.graph = model.graph
        self.opset = self._default_opset()
        # A name that is not UTF-8 (bytes, see check_graph) cannot collide with a fresh one.
        self._taken = {n for n in all_names(self.graph) if type(n) is str and PREFIX in n} if known_names else set()
        self._consts: dict[tuple[int, bytes, tuple[int, ...]], str] = {}
        self._new_initializers: list[TensorProto] = []
        self._replace: dict[int, list[onnx.NodeProto]] = {}
        self._before: dict[int, list[onnx.NodeProto]] = {}
        self._after: dict[int, list[onnx.NodeProto]] = {}
        self._edited: set[int] = set()  # original nodes whose inputs or outputs changed in place
        self._rebuilt: list[onnx.NodeProto] = []  # replacements standing for an original node
        self.types: dict[str, onnx.TypeProto] = {}
        for vi in [*self.graph.input, *self.graph.value_info, *self.graph.output]:
            if vi.type.HasField("tensor_type"):
                self.types.setdefault(vi.name, vi.type)
        for t in self.graph.initializer:
            self.types[t.name] = helper.make_tensor_type_proto(t.data_type, list(t.dims))
        self.initializers = {t.name for t in self.graph.initializer}
        self.graph_inputs = {i.name for i in self.graph.input}
        self.created = 0  # nodes emitted, branch nodes included
        self._edited_keys: set[str] = set()

    def _default_opset(self) -> int | None:
        for imp in self.model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                return imp.version
        return None

    def require_opset(self, source: object) -> None:
        """New nodes need ai.onnx opset 13 or newer; a model importing none gets opset 17."""
        if self.opset is None:
            self.model.opset_import.append(helper.make_opsetid("", DEFAULT_OPSET))
            self.opset = DEFAULT_OPSET
        elif self.opset < MIN_OPSET:
            raise InputError(
                f"{source}: the model imports ai.onnx opset {self.opset}; rewriting needs opset "
                f"{MIN_OPSET} or newer (convert it with onnx.version_converter first)"
            )

    # ------------------------------------------------------------------ names and constants

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self._taken:
            k += 1
            name = f"{base}_{k}"
        self._taken.add(name)
        return name

    def block(self, scope: str) -> Block:
        return Block(self, scope)

    def const(self, value: float | int | Sequence[int], elem_type: int) -> str:
        """A shared initializer holding ``value`` (a scalar, or a 1-D list) of ``elem_type``."""
        array = np.asarray(value, dtype=helper.tensor_dtype_to_np_dtype(elem_type))
        key = (elem_type, array.tobytes(), array.shape)
        if key not in self._consts:
            tensor = numpy_helper.from_array(array, self.fresh(f"{PREFIX}/const"))
            self._new_initializers.append(tensor)
            self._consts[key] = tensor.name
        return self._consts[key]

    def add_state(self, base: str, elem_type: int) -> tuple[str, str]:
        """New state the step carries, as its optimizer states: a scalar graph input and the
        output ``<input>/new`` for its next value, which the caller feeds back. Returns both names."""
        name = self.fresh(base)
        new = self.fresh(f"{name}/new")
        self.graph.input.append(helper.make_tensor_value_info(name, elem_type, []))
        self.graph.output.append(helper.make_tensor_value_info(new, elem_type, []))
        self.types[name] = self.types[new] = helper.make_tensor_type_proto(elem_type, [])
        return name, new

    def elem_type(self, name: str) -> int | None:
        t = self.types.get(name)
        return t.tensor_type.elem_type if t is not None else None

    def rank(self, name: str) -> int | None:
        t = self.types.get(name)
        if t is None or not t.tensor_type.HasField("shape"):
            return None
        return len(t.tensor_type.shape.dim)

    def learn_types(self) -> None:
        """Fill in tensor types from ONNX shape inference (only when a type is missing)."""
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model, strict_mode=False)
        except Exception:  # noqa: BLE001 - inference is a best effort; missing types are reported later
            return
        for vi in inferred.graph.value_info:
            if vi.type.HasField("tensor_type"):
                self.types.setdefault(vi.name, vi.type)

    # ------------------------------------------------------------------ recorded edits

    def replace_node(self, index: int, nodes: Sequence[onnx.NodeProto], *,
                     rebuilt: onnx.NodeProto | None = None) -> None:
        """Put ``nodes`` where original node ``index`` stands (none: remove it). ``rebuilt``,
        one of them, is the original node itself with other inputs or outputs."""
        self._replace[index] = list(nodes)
        if rebuilt is not None:
            self._rebuilt.append(rebuilt)

    def insert_before(self, index: int, nodes: Sequence[onnx.NodeProto]) -> None:
        self._before.setdefault(index, []).extend(nodes)

    def insert_after(self, index: int, nodes: Sequence[onnx.NodeProto]) -> None:
        self._after.setdefault(index, []).extend(nodes)

    def set_io(self, index: int, *, inputs: Sequence[str] | None = None,
               outputs: Sequence[str] | None = None) -> None:
        """Change original node ``index``'s inputs and outputs in place."""
        node = self.graph.node[index]
        # Assigned even when equal: protobuf then refuses a name that is not UTF-8 text.
        for current, names in ((node.input, inputs), (node.output, outputs)):
            if names is not None:
                if list(current) != list(names):
                    self._edited.add(index)
                current[:] = names

    @property
    def replaced(self) -> int:
        """How many original nodes were replaced (or removed)."""
        return len(self._replace)

    def edited_keys(self) -> set[str]:
        """After :meth:`finish`: the original nodes the rewrite changed that are still in the
        main graph, by name (an unnamed one by its first output): edited in place, or rebuilt."""
        return set(self._edited_keys)

    # ------------------------------------------------------------------ assembly

    def finish(self) -> None:
        """Write the new node list and initializers; raise if a node uses an undefined tensor."""
        originals = list(self.graph.node)
        nodes: list[onnx.NodeProto] = []
        original_ids: set[int] = set()
        for i, node in enumerate(originals):
            nodes.extend(self._before.get(i, ()))
            if i in self._replace:
                nodes.extend(self._replace[i])
            else:
                nodes.append(node)
                original_ids.add(id(node))
            nodes.extend(self._after.get(i, ()))
        kept = [originals[i] for i in self._edited if i not in self._replace]
        self._edited_keys = {n.name or (n.output[0] if n.output else "") for n in kept + self._rebuilt} - {""}
        self.graph.initializer.extend(self._new_initializers)
        defined = {i.name for i in self.graph.input} | {t.name for t in self.graph.initializer} | {""}
        if not _in_order(nodes, defined):
            nodes = _stable_topological(nodes, defined, original_ids)
        del self.graph.node[:]
        self.graph.node.extend(nodes)


def _in_order(nodes: Sequence[onnx.NodeProto], defined: set[str]) -> bool:
    seen = set(defined)
    issuperset, update = seen.issuperset, seen.update
    for node in nodes:
        if not issuperset(node.input):
            return False
        if has_subgraphs(node) and not issuperset(node_uses(node)):
            return False
        update(node.output)
    return True


def _stable_topological(nodes: Sequence[onnx.NodeProto], defined: set[str],
                        original_ids: set[int]) -> list[onnx.NodeProto]:
    """Nodes in dependency order, each as early in the given order as its inputs allow."""
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for out in node.output:
            if out:
                producer[out] = i
    waiting = [0] * len(nodes)
    consumers: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        for name in node_uses(node):
            if name in defined:
                continue
            if name not in producer:
                who = "the input graph" if id(node) in original_ids else "the rewrite"
                raise (InputError if id(node) in original_ids else AssertionError)(
                    f"{who}: node {node.name or node.op_type!r} uses {name!r}, which nothing defines"
                )
            waiting[i] += 1
            consumers[producer[name]].append(i)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order: list[onnx.NodeProto] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for j in consumers[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        stuck = sorted(i for i, n in enumerate(waiting) if n)
        raise InputError(
            f"the rewrite would make a cycle through {nodes[stuck[0]].name or nodes[stuck[0]].op_type!r}: "
            "a selected gradient depends on an update"
        )
    return order


def value_info(name: str, like: onnx.TypeProto | None) -> onnx.ValueInfoProto:
    vi = onnx.ValueInfoProto(name=name)
    if like is not None:
        vi.type.CopyFrom(like)
    return vi


def branch(name: str, nodes: Iterable[onnx.NodeProto], outputs: Sequence[onnx.ValueInfoProto]) -> onnx.GraphProto:
    return helper.make_graph(list(nodes), name, [], list(outputs))
