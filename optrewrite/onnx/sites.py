"""Finding the per-tensor updates of an ONNX training step.

1. ``ai.onnx.preview.training`` Adam / Adagrad / Momentum nodes: one node updates N tensors;
   inputs are ``R, T, X_1..X_N, G_1..G_N`` then each state's block, outputs ``X'_1..X'_N``
   then each state's new block. Each tensor i is one site, named by X_i's tensor name.
2. Decomposed steps written in plain ops: the spec's ``updates:`` entries name the sites.
3. onnxruntime training artifacts (``com.microsoft`` optimizer ops over tensor sequences)
   are refused: see :data:`ORT_OPTIMIZERS`.

Training nodes inside subgraphs or local functions are reported as skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from optrewrite.core import Skip
from optrewrite.errors import InputError, SpecError, quoted, shorten
from optrewrite.onnx.graph import PREVIEW_DOMAIN, Editor, elem_type_name, has_subgraphs, subgraphs
from optrewrite.spec import Spec

STATES = {"Adagrad": ("H",), "Momentum": ("V",), "Adam": ("V", "H")}
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
PREVIEW_VERSION = 1  # the only version of the training domain

ORT_OPTIMIZERS = frozenset({
    "AdamWOptimizer", "SGDOptimizerV2", "AdamOptimizer", "SGDOptimizer", "LambOptimizer",
})
_ORT_REFUSAL = (
    "one update_signal updates all its tensors, so none can skip a step alone; "
    "rewrite the step before generating artifacts"
)


@dataclass(frozen=True)
class UpdateSite:
    key: str  # "Adam 'node'[i]" or "updates[k]"
    kind: str  # Adam | Adagrad | Momentum | decomposed
    variable: str
    gradient: str
    updated: str  # the tensor that becomes the variable's next value
    states: tuple[tuple[str, str], ...]  # (current, next) per optimizer state
    elem_type: int
    rank: int | None
    node: int | None = None  # index of the preview-training node; None: a declared site


@dataclass(frozen=True)
class TrainingNode:
    index: int
    kind: str
    sites: tuple[UpdateSite, ...]


@dataclass
class Discovery:
    sites: list[UpdateSite] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    nodes: list[TrainingNode] = field(default_factory=list)


def _label(node: onnx.NodeProto, index: int) -> str:
    """The node as sites are keyed and reported: its op and whole name (a message shortens it)."""
    return f"{node.op_type} {node.name!r}" if node.name else f"{node.op_type} #{index}"


def _typed(ed: Editor, name: str, where: str) -> tuple[int, int | None]:
    elem = ed.elem_type(name)
    if elem is None:
        ed.learn_types()
        elem = ed.elem_type(name)
    if elem is None:
        raise InputError(f"{where}: the element type of {name!r} is unknown; add it to the graph's value_info")
    if elem not in FLOAT_TYPES:
        raise InputError(
            f"{where}: {shorten(repr(name))} is {elem_type_name(elem)}; "
            "only float and double tensors are updated"
        )
    return elem, ed.rank(name)


def _training_node(ed: Editor, index: int, node: onnx.NodeProto) -> TrainingNode:
    key = _label(node, index)
    label = shorten(key, 80)
    states = STATES[node.op_type]
    width = 2 + len(states)
    body = len(node.input) - 2
    if body <= 0 or body % width or len(node.output) != body // width * (1 + len(states)):
        raise InputError(
            f"{label}: expected R, T and {width} blocks of N inputs and {1 + len(states)} blocks "
            f"of N outputs, got {len(node.input)} inputs and {len(node.output)} outputs"
        )
    n = body // width
    for name, what, allowed in ((node.input[0], "R", FLOAT_TYPES), (node.input[1], "T", (onnx.TensorProto.INT64,))):
        if ed.elem_type(name) not in (None, *allowed):
            raise InputError(f"{label}: its {what} input {shorten(repr(name))} is {elem_type_name(ed.elem_type(name))}; "
                             f"{node.op_type} takes {' or '.join(elem_type_name(t) for t in allowed)}")
    sites = []
    for i in range(n):
        x, g = node.input[2 + i], node.input[2 + n + i]
        state_pairs = tuple(
            (node.input[2 + (2 + k) * n + i], node.output[(1 + k) * n + i]) for k in range(len(states))
        )
        if not x or not g or not node.output[i] or any(not a or not b for a, b in state_pairs):
            raise InputError(f"{label}: tensor {i} has an empty input or output name")
        elem, rank = _typed(ed, x, label)
        for other in (g, *(name for pair in state_pairs for name in pair), node.output[i]):
            if ed.elem_type(other) not in (None, elem):
                raise InputError(
                    f"{label}: tensor {i}: {shorten(repr(other))} is {elem_type_name(ed.elem_type(other))} but "
                    f"{shorten(repr(x))} is {elem_type_name(elem)}; {node.op_type} takes one type for X, G and its states"
                )
            if not _same_shape(_dims(ed, other), _dims(ed, x)):
                raise InputError(
                    f"{label}: tensor {i}: {shorten(repr(other))} has shape {shorten(str(_dims(ed, other)), 40)} but "
                    f"{shorten(repr(x))} has {shorten(str(_dims(ed, x)), 40)}; "
                    f"{node.op_type} takes one shape for X, G and its states"
                )
        sites.append(UpdateSite(
            key=f"{key}[{i}]", kind=node.op_type, variable=x, gradient=g, updated=node.output[i],
            states=state_pairs, elem_type=elem, rank=rank, node=index,
        ))
    return TrainingNode(index=index, kind=node.op_type, sites=tuple(sites))


def _dims(ed: Editor, name: str) -> list[int | str] | None:
    """The tensor's declared shape (a symbolic dim by its name), or None when unknown."""
    t = ed.types.get(name)
    if t is None or not t.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in t.tensor_type.shape.dim]


def _same_shape(a: list[int | str] | None, b: list[int | str] | None) -> bool:
    """False only when both shapes are known and differ in rank or in a fixed dim."""
    if a is None or b is None:
        return True
    return len(a) == len(b) and all(x == y or isinstance(x, str) or isinstance(y, str) for x, y in zip(a, b))


def _nested_training(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    found = []
    for node in graph.node:
        if node.domain == PREVIEW_DOMAIN and node.op_type in STATES:
            found.append(node)
        for sub in subgraphs(node):
            found.extend(_nested_training(sub))
    return found


def find_update_sites(ed: Editor, spec: Spec, source: object) -> Discovery:
    found = Discovery()
    preview = next((imp.version for imp in ed.model.opset_import if imp.domain == PREVIEW_DOMAIN), None)
    for index, node in enumerate(ed.graph.node):
        if node.domain == "com.microsoft" and node.op_type in ORT_OPTIMIZERS:
            raise InputError(
                f"{source}: {shorten(_label(node, index))} (com.microsoft::{node.op_type}) is an "
                f"onnxruntime training optimizer: {_ORT_REFUSAL}"
            )
        if node.domain == PREVIEW_DOMAIN and node.op_type in STATES:
            if preview not in (None, PREVIEW_VERSION):
                raise InputError(f"{source}: the model imports {PREVIEW_DOMAIN} version {preview}; "
                                 f"its training ops exist in version {PREVIEW_VERSION} only")
            tn = _training_node(ed, index, node)
            if any(other.sites[0].key == tn.sites[0].key for other in found.nodes):
                raise InputError(f"{source}: two training nodes are named {shorten(repr(node.name))}; "
                                 "node names must be unique")
            found.nodes.append(tn)
            found.sites.extend(tn.sites)
        elif has_subgraphs(node):
            for sub in subgraphs(node):
                for inner in _nested_training(sub):
                    found.skips.append(Skip(
                        update=_label(inner, index), variable=inner.input[2] if len(inner.input) > 2 else None,
                        reason=f"inside a subgraph of {shorten(_label(node, index))}; updates in subgraphs are not rewritten",
                    ))
    for function in ed.model.functions:
        for inner in function.node:
            if inner.domain == PREVIEW_DOMAIN and inner.op_type in STATES:
                found.skips.append(Skip(
                    update=f"{function.domain}::{function.name}/{_label(inner, 0)}", variable=None,
                    reason="inside a local function; updates in functions are not rewritten",
                ))
    if spec.updates:
        found.sites.extend(_declared_sites(ed, spec, found))
    return found


def _declared_sites(ed: Editor, spec: Spec, found: Discovery) -> list[UpdateSite]:
    """The spec's ``updates:`` entries, checked against the graph."""
    produced = {out for node in ed.graph.node for out in node.output if out}
    holders = ed.graph_inputs | ed.initializers
    known = holders | produced
    taken = {s.variable: s.key for s in found.sites}
    outputs_taken = {s.updated for s in found.sites}
    sites = []
    for k, entry in enumerate(spec.updates):
        field_ = f"updates[{k}]"

        def fail(sub: str, message: str) -> SpecError:
            return SpecError(spec.source, f"{field_}.{sub}", message, entry.line)  # noqa: B023

        if entry.variable not in holders:
            raise fail("variable", f"{quoted(entry.variable)} is not a graph input or initializer")
        if entry.variable in taken:
            raise fail("variable", f"{quoted(entry.variable)} is already updated by {taken[entry.variable]}")
        if entry.gradient not in known:
            raise fail("gradient", f"no tensor named {quoted(entry.gradient)}")
        for sub, name in [("updated", entry.updated), *((f"state[{j}][1]", b) for j, (_, b) in enumerate(entry.state))]:
            if name not in produced:
                raise fail(sub, f"{quoted(name)} is not produced by any node")
            if name in outputs_taken:
                raise fail(sub, f"{quoted(name)} is already named by another update")
            outputs_taken.add(name)
        for j, (old, _) in enumerate(entry.state):
            if old not in holders:
                raise fail(f"state[{j}][0]", f"{quoted(old)} is not a graph input or initializer")
        elem, rank = _typed(ed, entry.variable, f"{spec.source}: {field_}")
        taken[entry.variable] = field_
        sites.append(UpdateSite(
            key=field_, kind="decomposed", variable=entry.variable, gradient=entry.gradient,
            updated=entry.updated, states=tuple(entry.state), elem_type=elem, rank=rank,
        ))
    return sites


