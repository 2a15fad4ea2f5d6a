"""Finding the optimizer's per-variable updates in a GraphDef.

An *update site* is everything one optimizer does to one variable in a step:

1. one ``Apply*`` / ``SparseApply*`` / ``ResourceApply*`` / ``ResourceSparseApply*`` op, whose
   variable, slot, gradient and indices inputs come from ``update_ops.json`` (generated from
   TensorFlow's op registry by tools/gen_tf_op_table.py); or
2. a *decomposed group*: the ops under one ``<optimizer>/update_<var>/`` name scope that write
   state without an Apply op — GradientDescent on a sparse gradient (``ScatterSub`` /
   ``ResourceScatterAdd``) and Adam on a sparse gradient (``Assign`` + ``ScatterAdd`` +
   ``AssignSub`` or their resource forms). The group is guarded and clipped as one unit.

A candidate that cannot be rewritten safely is returned as a :class:`Skip` with the reason
(an update of a variable that is not float, one inside a function, ...); an update op whose
inputs or attrs do not fit its definition is an InputError: the graph would not import.

An Apply op's variable and slot inputs must lead, through ``Identity`` chains, to a variable
node. Where they come from an op that can hand on a variable optrewrite does not follow — a
captured resource placeholder of a TensorFlow 2 function's GraphDef, control flow (``Enter``,
``Switch``, ``Merge``, ...), a function call or argument, a temporary variable — the update
is skipped; from any other op (a ``Const``, a value placeholder, ``ReadVariableOp``, ...) it
is an InputError: that op holds no variable, so the graph cannot run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from optrewrite.core import Skip
from optrewrite.errors import InputError, quoted
from optrewrite.tf import proto
from optrewrite.tf.graph import TAG_ATTR, GraphEditor, canonical_tensor, node_of

VARIABLE_OPS = frozenset({"VariableV2", "Variable", "VarHandleOp"})
_PASS_THROUGH = frozenset({"Identity", "RefIdentity"})
_PLACEHOLDERS = frozenset({"Placeholder", "PlaceholderV2", "PlaceholderWithDefault"})
# Ops through which a variable's ref or resource legitimately reaches an update op, and which
# optrewrite does not follow: loop frames and cond branches, function calls and arguments,
# temporary variables. An update behind one is skipped, not refused.
OPAQUE_VARIABLE_OPS = frozenset(
    {
        "Enter", "RefEnter", "Exit", "RefExit", "Switch", "RefSwitch", "_SwitchN", "Merge", "RefMerge",
        "NextIteration", "RefNextIteration", "If", "StatelessIf", "While", "StatelessWhile", "Case",
        "StatelessCase", "PartitionedCall", "StatefulPartitionedCall", "_Arg", "TemporaryVariable",
        "_VarHandlesOp",
    }
)  # fmt: skip
# Ops that write variable state inside a decomposed update group.
WRITE_OPS = frozenset(
    {
        "Assign", "AssignAdd", "AssignSub", "ScatterAdd", "ScatterSub", "ScatterUpdate",
        "ScatterMul", "ScatterDiv", "ScatterMax", "ScatterMin",
        "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp",
        "ResourceScatterAdd", "ResourceScatterSub", "ResourceScatterUpdate",
        "ResourceScatterMul", "ResourceScatterDiv", "ResourceScatterMax", "ResourceScatterMin",
    }
)  # fmt: skip
_SCATTER_ADDS = frozenset({"ScatterAdd", "ScatterSub", "ResourceScatterAdd", "ResourceScatterSub"})
# Data inputs of the write ops: (ref or resource, value) or (ref or resource, indices, updates).
_WRITE_ARITY = {op: 3 if "Scatter" in op else 2 for op in WRITE_OPS}


def _load_table() -> dict[str, dict]:
    text = resources.files("optrewrite.tf").joinpath("update_ops.json").read_text()
    return json.loads(text)["ops"]


UPDATE_OPS: dict[str, dict] = _load_table()


@dataclass(frozen=True)
class UpdateSite:
    key: str  # the Apply op's name, or the decomposed group's scope
    kind: str  # the Apply op type, or "GradientDescent (decomposed)" / "Adam (decomposed)"
    variable: str
    resource: bool
    dtype: int
    shape: tuple[int, ...] | None  # None: unknown rank
    sparse: bool
    gradient: str  # canonical tensor name ("x:0")
    indices: str | None
    indices_dtype: int  # DT_INT32 or DT_INT64; meaningless without indices
    slots: tuple[str, ...]
    members: frozenset[str]  # the nodes of the update
    writes: tuple[str, ...]  # members that write state: made dead when guarded
    sinks: tuple[str, ...]  # members that nodes outside the update depend on
    grad_uses: tuple[tuple[str, int], ...]  # (member, input position) consuming the gradient
    device: str
    scope: str  # where inserted nodes are named

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def dtype_name(self) -> str:
        """The variable's float type as numpy names it ("float32", ...)."""
        return proto.FLOAT_NAMES[self.dtype]


def _resolve_variable(g: GraphEditor, tensor: str) -> proto.NodeDef | None:
    node = _source(g, tensor)
    return node if node.op in VARIABLE_OPS else None


def _source(g: GraphEditor, tensor: str) -> proto.NodeDef:
    """The node behind ``tensor`` and the ``Identity`` chain it comes through (however long)."""
    node = g.producer(tensor)
    seen = {node.name}
    while node.op in _PASS_THROUGH and node.input and not node.input[0].startswith("^"):
        node = g.producer(node.input[0])
        if node.name in seen:  # an Identity cycle: a graph check refuses it, but never loop here
            break
        seen.add(node.name)
    return node


def _captured(g: GraphEditor, tensor: str) -> str | None:
    """The name of the resource placeholder behind ``tensor`` (a TensorFlow 2 function's
    captured variable, in a GraphDef of the function), or None."""
    node = _source(g, tensor)
    value = node.attr.get("dtype") if node.op in _PLACEHOLDERS else None
    if value is not None and value.WhichOneof("value") == "type" and value.type == proto.DT_RESOURCE:
        return node.name
    return None


def _update_variable(g: GraphEditor, update: proto.NodeDef, pos: int, what: str) -> proto.NodeDef | str:
    """The variable node behind input ``pos`` of an Apply op, or why the update is skipped;
    InputError when that input comes from an op that holds no variable (module docstring)."""
    tensor = update.input[pos]
    node = _source(g, tensor)
    if node.op in VARIABLE_OPS:
        return node
    direct = node.name == tensor.partition(":")[0]
    if _captured(g, tensor) is not None:
        source = "" if direct else f" (through {tensor!r})"
        return (f"{what} input {node.name!r}{source} is a captured resource placeholder, as in a GraphDef "
                "of a TensorFlow 2 function; rewrite the TensorFlow 2 SavedModel instead")
    kind = f"{_article(node.op)} {node.op} node" if node.op else "a node without op"
    if node.op in OPAQUE_VARIABLE_OPS:
        source = "is" if direct else f"comes through {node.name!r},"
        return f"{what} input {tensor!r} {source} {kind}, which optrewrite does not follow to a variable"
    source = "is" if direct else f"leads to {quoted(node.name)},"
    raise InputError(f"node {quoted(update.name)} ({update.op}): its {what} input {quoted(tensor)} {source} "
                     f"{kind}, not a variable")


def _article(word: str) -> str:
    return "an" if word[:1] in ("A", "E", "I", "O", "U") else "a"


def _check_arity(node: proto.NodeDef, expected: int) -> None:
    have = sum(1 for i in node.input if not i.startswith("^"))
    if have != expected:
        raise InputError(f"node {node.name!r} ({node.op}) has {have} data inputs; {node.op} takes {expected}")


def _type_attr(node: proto.NodeDef, key: str) -> int:
    value = node.attr.get(key)  # never node.attr[key]: that would add the attr to the input graph
    if value is None or value.WhichOneof("value") != "type":
        raise InputError(f"node {node.name!r} ({node.op}) has no type attr {key!r}")
    return value.type


def _shape(var: proto.NodeDef) -> tuple[int, ...] | None:
    value = var.attr.get("shape")
    if value is None or value.WhichOneof("value") != "shape" or value.shape.unknown_rank:
        return None
    return tuple(d.size for d in value.shape.dim)


def _not_float(var: proto.NodeDef) -> str | None:
    """Why the variable's updates cannot be guarded and clipped, when it is not float."""
    value = var.attr.get("dtype")
    if value is None or value.WhichOneof("value") != "type":
        return f"the variable {var.name!r} has no dtype attr"
    if value.type not in proto.FLOAT_TYPES:
        return f"the variable {var.name!r} is {proto.dtype_name(value.type)}; only float variables are rewritten"
    return None


def _scope_of(name: str) -> str:
    return name.rsplit("/", 1)[0] if "/" in name else ""


def is_update_scope(scope: str) -> bool:
    """Whether a name scope is (within) an optimizer's ``update_<var>`` scope."""
    return any(part.startswith("update_") for part in scope.split("/"))


def _sinks(g: GraphEditor, members: frozenset[str]) -> tuple[list[str], str | None]:
    """Members that nodes outside the update wait for; a reason when one is used as data."""

    def outside(i: int) -> bool:
        node = g.graph.node[i]
        return node.name not in members and TAG_ATTR not in node.attr

    sinks = []
    for name in sorted(members):
        for i in g.data_consumers(name):
            if outside(i):
                return [], f"its output {name!r} is used as data by {g.graph.node[i].name!r}"
        if any(outside(i) for i in g.control_consumers(name)):
            sinks.append(name)
    return sinks, None


def _grad_uses(g: GraphEditor, members: frozenset[str], gradient: str) -> list[tuple[str, int]]:
    uses = []
    for name in sorted(members):
        for pos, inp in enumerate(g.node(name).input):
            if not inp.startswith("^") and canonical_tensor(inp) == gradient:
                uses.append((name, pos))
    return uses


def _apply_site(g: GraphEditor, node: proto.NodeDef) -> UpdateSite | Skip:
    info = UPDATE_OPS[node.op]
    _check_arity(node, len(info["inputs"]))
    indices_dtype = _type_attr(node, "Tindices") if info["indices"] is not None else proto.DT_INT32
    var = _update_variable(g, node, info["var"], "variable")
    if isinstance(var, str):
        return Skip(node.name, _captured(g, node.input[info["var"]]), f"the {var}")
    why = _not_float(var)
    if why:
        return Skip(node.name, var.name, why)
    slots = []
    for pos in info["slots"]:
        slot = _update_variable(g, node, pos, "slot")
        if isinstance(slot, str):
            return Skip(node.name, var.name, f"its {slot}")
        slots.append(slot.name)
    members = frozenset({node.name})
    sinks, why = _sinks(g, members)
    if why:
        return Skip(node.name, var.name, why)
    gradient = canonical_tensor(node.input[info["grad"]])
    return UpdateSite(
        key=node.name,
        kind=node.op,
        variable=var.name,
        resource=info["resource"],
        dtype=var.attr["dtype"].type,
        shape=_shape(var),
        sparse=info["sparse"],
        gradient=gradient,
        indices=canonical_tensor(node.input[info["indices"]]) if info["indices"] is not None else None,
        indices_dtype=indices_dtype,
        slots=tuple(slots),
        members=members,
        writes=(node.name,),
        sinks=tuple(sinks),
        grad_uses=((node.name, info["grad"]),),
        device=node.device,
        scope=_scope_of(node.name) or node.name,
    )


def _strip(g: GraphEditor, tensor: str, members: frozenset[str]) -> str:
    """The gradient behind a scatter's ``updates``: peel the optimizer's own scaling ops."""
    node = g.producer(tensor)
    if node.name not in members:
        return canonical_tensor(tensor)
    if node.op == "Mul" and len(node.input) >= 2:
        a, b = node.input[0], node.input[1]
        if canonical_tensor(a) == canonical_tensor(b):  # grad * grad (Adam's v)
            return canonical_tensor(a)
        inner = g.producer(a)
        if inner.name in members and inner.op == "Neg" and inner.input:  # -grad * lr (resource GradientDescent)
            return canonical_tensor(inner.input[0])
        if (inner.name in members and inner.op == "Mul" and len(inner.input) >= 2
                and canonical_tensor(inner.input[0]) == canonical_tensor(inner.input[1])):
            return canonical_tensor(inner.input[0])
        return canonical_tensor(a)
    return canonical_tensor(tensor)


def _group_site(g: GraphEditor, scope: str, members: frozenset[str], writes: list[str]) -> UpdateSite | Skip:
    targets: dict[str, proto.NodeDef] = {}
    for name in writes:
        _check_arity(g.node(name), _WRITE_ARITY[g.node(name).op])
    for name in writes:
        var = _resolve_variable(g, g.node(name).input[0])
        if var is None:
            return Skip(scope, None, f"{name!r} writes to something that is not a variable node")
        targets[name] = var
    # The updated variable is the one the scope is named after: <opt>/update_<var name>.
    var = None
    for cand in sorted({v.name for v in targets.values()}, key=len, reverse=True):
        parts = cand.split("/")
        if any(scope.endswith("update_" + "/".join(parts[i:])) for i in range(len(parts))):
            var = g.node(cand)
            break
    if var is None:
        return Skip(scope, None, "no variable written in this update scope matches its name")
    why = _not_float(var)
    if why:
        return Skip(scope, var.name, why)
    scatters = [w for w in writes if g.node(w).op in _SCATTER_ADDS]
    if not scatters:
        return Skip(scope, var.name, "update group without a scatter op: not a known decomposed update")
    grads = {_strip(g, g.node(s).input[2], members) for s in scatters}
    indices = {canonical_tensor(g.node(s).input[1]) for s in scatters}
    if len(grads) != 1 or len(indices) != 1:
        return Skip(scope, var.name, "its scatter ops disagree on the gradient or indices")
    gradient = grads.pop()
    if node_of(gradient) in members and g.producer(gradient).op not in ("UnsortedSegmentSum",):
        return Skip(scope, var.name, f"cannot tell the gradient apart from the update math ({gradient})")
    sinks, why = _sinks(g, members)
    if why:
        return Skip(scope, var.name, why)
    resource = var.op == "VarHandleOp"
    slots = tuple(sorted({v.name for v in targets.values()} - {var.name}))
    kind = "Adam (decomposed)" if slots else "GradientDescent (decomposed)"
    primary = next((w for w in writes if targets[w].name == var.name), writes[0])
    return UpdateSite(
        key=scope,
        kind=kind,
        variable=var.name,
        resource=resource,
        dtype=var.attr["dtype"].type,
        shape=_shape(var),
        sparse=True,
        gradient=gradient,
        indices=indices.pop(),
        indices_dtype=_type_attr(g.node(scatters[0]), "Tindices"),
        slots=slots,
        members=members,
        writes=tuple(writes),
        sinks=tuple(sinks),
        grad_uses=tuple(_grad_uses(g, members, gradient)),
        device=g.node(primary).device,
        scope=scope,
    )


@dataclass(frozen=True)
class Discovery:
    sites: list[UpdateSite]  # in graph order
    skips: list[Skip]
    tagged: list[str]  # nodes an earlier optrewrite run inserted


def find_update_sites(g: GraphEditor) -> Discovery:
    """All update sites of the graph, the candidates skipped, and earlier inserted nodes."""
    applies: list[proto.NodeDef] = []
    group_writes: dict[str, list[str]] = {}
    apply_scopes: set[str] = set()
    tagged: list[str] = []
    captured_writes: dict[str, proto.NodeDef] = {}  # resource placeholder -> its first write
    for node in g.graph.node:
        if TAG_ATTR in node.attr:
            tagged.append(node.name)
            continue
        if node.op in UPDATE_OPS:
            applies.append(node)
            apply_scopes.add(_scope_of(node.name))
        elif node.op in WRITE_OPS:
            scope = _scope_of(node.name)
            if scope and is_update_scope(scope):
                group_writes.setdefault(scope, []).append(node.name)
            elif node.input:
                placeholder = _captured(g, node.input[0])
                if placeholder is not None:
                    captured_writes.setdefault(placeholder, node)
    for scope in apply_scopes:
        group_writes.pop(scope, None)

    members: dict[str, set[str]] = {scope: set() for scope in group_writes}
    if members:
        for node in g.graph.node:
            if "update_" not in node.name or TAG_ATTR in node.attr:
                continue
            scope = node.name
            while "/" in scope:
                scope = scope.rsplit("/", 1)[0]
                if scope in members:
                    members[scope].add(node.name)
                    break

    found: list[tuple[int, UpdateSite | Skip]] = []
    for node in applies:
        found.append((g.index[node.name], _apply_site(g, node)))
    for scope, writes in group_writes.items():
        first = min(g.index[w] for w in writes)
        found.append((first, _group_site(g, scope, frozenset(members[scope]), writes)))
    found.sort(key=lambda item: item[0])
    sites = [s for _, s in found if isinstance(s, UpdateSite)]
    skips = [s for _, s in found if isinstance(s, Skip)]
    # A Keras 3 optimizer traced in a function writes its variables with plain assign ops; in
    # a GraphDef of the function they are captured resource placeholders, and which write
    # comes from which gradient is found only in the SavedModel's functions (optrewrite.tf2).
    for placeholder, node in captured_writes.items():
        skips.append(Skip(node.name, placeholder, f"written by {node.op} through a captured resource placeholder, "
                          "as in a GraphDef of a TensorFlow 2 function; rewrite the TensorFlow 2 SavedModel instead"))
    for function in g.graph.library.function:
        for node in function.node_def:
            if node.op in UPDATE_OPS:
                skips.append(Skip(f"{function.signature.name}/{node.name}", None,
                                  "inside a library function; updates in functions are not rewritten"))
    return Discovery(sites=sites, skips=skips, tagged=tagged)
