"""Finding optimizer updates inside the functions of a TF2 SavedModel.

1. **Variables** are the object graph's ``variable`` nodes, named by their path from the root:
   breadth-first over ``children[].local_name``, preferring a path without list indices and
   not through an optimizer object (one with an ``iterations`` child or slot variables), each
   component with one leading underscore stripped (``net/head_a/_kernel`` reads
   ``net/head_a/kernel``, Keras 3's ``variable.path``). A path through a list index
   (``net/operations/1/kernel``: a functional or Sequential Keras model) gives way to the
   variable's saved name where that is a path unique among the variables (Keras 3 saves
   ``variable.path``, ``conv/kernel``). What an optimizer object holds is optimizer state.
2. **Bindings**: each concrete function of the object graph binds its last
   ``len(bound_inputs)`` inputs to the objects ``bound_inputs`` lists; calls
   (``StatefulPartitionedCall``, ``PartitionedCall``) pass them on positionally, and so do
   ``While`` / ``StatelessWhile`` to their body and condition (the loop variables), and
   ``If`` / ``StatelessIf`` / ``Case`` / ``StatelessCase`` to every branch (their inputs
   after the predicate or index): the updates inside a branch (a loss-scale optimizer's
   "apply when finite", gradient accumulation) are sites of the branch function, its
   gradient a branch input. A function
   reached with two different variables on one input has that input unbound. The
   ``_traced_save`` / ``_traced_restore`` functions are never read.
3. **Sites**, per function and trainable variable V, by data flow: the writes to V
   (``AssignSubVariableOp``, ``AssignAddVariableOp``, ``AssignVariableOp``,
   ``ResourceScatterAdd/Sub/Update``), then its **gradient**: the tensor closest to those
   writes (backwards over data edges and the control edges automatic control dependencies
   add between ops on one resource) that every write to V depends on, that has V's dtype and
   shape (rows of V for a scatter), that is no constant, and that depends on no read of a
   non-trainable variable (slots, the iteration counter, the learning rate, a loss scale).
   Where that finds none because the forward pass reads non-trainable variables too (a
   dropout layer's seed, batch-norm statistics, a frozen layer), only reads of optimizer
   state count. Never the gradient: a tensor computed from variables alone (``var ** 2``
   for a norm), or, where only data edges are followed, one that feeds state V's writes do
   not read (other variables' slots: a forward tensor of V's shape).
   Writes that only assign that tensor itself (``AssignVariableOp(V, x)``: a ``restore``
   signature setting V from its input) set V, they do not update it: no site.
   The site's **slot writes** are the writes to non-trainable variables that depend on the
   gradient; a non-trainable variable written from the gradients of several variables
   (shared state) belongs to no site. Writes with no gradient (restores, assignments of
   constants, the iteration counter) are no sites.
4. **Skips** (the report says why): a trainable variable written in a function where no
   gradient can be told apart, whose gradient also feeds another trainable variable's
   writes, or that is written by an op the guard cannot gate.
5. **Fused updates** (``ResourceApply*``, ``ResourceSparseApply*``: tf.compat.v1 optimizers
   in a ``tf.function``) are sites as they stand: the variable and slots are the op's resource
   inputs, the gradient its ``grad`` input (``optrewrite.tf.sites.UPDATE_OPS``).
"""
from __future__ import annotations

import re
from collections import Counter, deque
from typing import Container, Iterable, Sequence
from dataclasses import dataclass, field, replace

from optrewrite.core import Skip
from optrewrite.errors import InputError, quoted
from optrewrite.tf import proto
from optrewrite.tf.sites import UPDATE_OPS
from optrewrite.tf.graph import TAG_ATTR
from optrewrite.tf2.functions import BRANCH_OPS, LOOP_OPS, branches, node_of

DENSE_WRITES = frozenset({"AssignSubVariableOp", "AssignAddVariableOp", "AssignVariableOp"})
SCATTER_WRITES = frozenset({"ResourceScatterAdd", "ResourceScatterSub", "ResourceScatterUpdate"})
OTHER_WRITES = frozenset({"ResourceScatterMul", "ResourceScatterDiv", "ResourceScatterMax", "ResourceScatterMin",
                          "ResourceScatterNdAdd", "ResourceScatterNdSub", "ResourceScatterNdUpdate",
                          "ResourceStridedSliceAssign"})
WRITES = DENSE_WRITES | SCATTER_WRITES | OTHER_WRITES
READS = frozenset({"ReadVariableOp", "ResourceGather", "ResourceGatherNd", "VariableShape"})
CALLS = frozenset({"StatefulPartitionedCall", "PartitionedCall"})
SKIPPED_FUNCTIONS = re.compile(r"^__inference__traced_(save|restore)_\d+$")
_PASS_THROUGH = frozenset({"Identity"})
_MAX_CANDIDATES = 24  # gradient candidates weighed per variable (the gradient is a few ops from the writes)
_MAX_CACHED = 4096  # descendant sets a body keeps
_INDEX_AFTER = 4  # descendant walks, in body sizes, after which a body indexes its writes


@dataclass(frozen=True)
class Variable:
    """A variable of the object graph."""

    node_id: int
    path: str
    trainable: bool
    dtype: int
    shape: tuple[int, ...] | None
    optimizer_state: bool = False  # held by an optimizer object (a slot, the iteration counter, a loss scale)


@dataclass(frozen=True)
class FunctionSite:
    """One variable's update in one function body."""

    function: str
    var: Variable
    gradient: str  # the body input string of the gradient (a sparse gradient's values)
    gradient_node: str
    indices: str | None  # a scatter update's indices, as a body input string
    indices_dtype: int
    writes: tuple[str, ...]  # every write of the group, in body order
    var_writes: tuple[str, ...]  # the writes to the variable itself
    slots: tuple[Variable, ...]
    resource: dict[str, str] = field(default_factory=dict, compare=False, hash=False)  # write -> resource ref
    kind: str = ""  # the ops writing the variable: "AssignSubVariableOp", ...
    fused: tuple[str, ...] = ()  # a fused ResourceApply* op's state: the resource refs of var, then its slots

    @property
    def variable(self) -> str:
        """The variable's object-graph path, as specs select it."""
        return self.var.path

    @property
    def key(self) -> str:
        return f"{self.function}/{self.var_writes[-1]}"

    @property
    def sparse(self) -> bool:
        return self.indices is not None

    @property
    def scope(self) -> str:
        return f"optrewrite/{self.var.path}"


# ---------------------------------------------------------------------------- variables


def _strip(component: str) -> str:
    return component[1:] if component.startswith("_") and len(component) > 1 else component


def variables(og: proto.SavedObjectGraph) -> dict[int, Variable]:
    """Every variable node of the object graph, by node id, with its preferred path."""
    nodes = og.nodes
    if not nodes:
        return {}
    optimizers = {i for i, n in enumerate(nodes)
                  if n.slot_variables or any(c.local_name in ("iterations", "_iterations", "iter") for c in n.children)}
    owned = _held_by(nodes, optimizers)
    paths: dict[int, list[tuple[tuple[bool, bool, int, int], str]]] = {}
    first: dict[int, tuple[str, bool, bool]] = {0: ("", False, False)}
    queue = deque([0])
    order = 0
    while queue:
        i = queue.popleft()
        prefix, indexed, through_opt = first[i]
        through_opt = through_opt or i in optimizers
        for child in nodes[i].children:
            j = child.node_id
            if not 0 <= j < len(nodes):
                continue
            name = child.local_name
            path = f"{prefix}/{name}" if prefix else name
            idx = indexed or name.isdigit()
            order += 1
            if nodes[j].WhichOneof("kind") == "variable":
                rank = (idx, through_opt, path.count("/"), order)
                paths.setdefault(j, []).append((rank, path))
            if j not in first:
                first[j] = (path, idx, through_opt)
                queue.append(j)
    out: dict[int, Variable] = {}
    indexed: set[int] = set()
    for j, found in paths.items():
        path = min(found)[1]
        v = nodes[j].variable
        shape = None if v.shape.unknown_rank else tuple(d.size for d in v.shape.dim)
        rank = min(found)[0]
        # a variable reached only through an optimizer object is optimizer state (Nadam's
        # u_product), whatever its trainable flag says
        trainable = v.trainable and not rank[1]
        out[j] = Variable(j, "/".join(_strip(c) for c in path.split("/")), trainable, v.dtype, shape,
                          j in owned and not trainable)
        if rank[0]:
            indexed.add(j)
    return _saved_names(nodes, out, indexed)


def _saved_names(nodes: Sequence[proto.SavedObject], found: dict[int, Variable], indexed: set[int]
                 ) -> dict[int, Variable]:
    """Where a variable's object-graph path goes through a list index, name it by its saved
    name if that is a path unique among the variables: a Keras 3 functional or Sequential model
    reaches its variables as ``net/operations/1/kernel`` but saves ``variable.path``
    (``conv/kernel``). Other variables keep their object-graph path."""
    saved = {j: nodes[j].variable.name for j in found}
    counts = Counter(saved.values())
    names = {j: saved[j] if j in indexed and "/" in saved[j] and counts[saved[j]] == 1 else v.path
             for j, v in found.items()}
    taken = Counter(names.values())
    return {j: v if names[j] == v.path else
            replace(v, path=names[j] if taken[names[j]] == 1 else v.path) for j, v in found.items()}


def _held_by(nodes: Sequence[proto.SavedObject], optimizers: set[int]) -> set[int]:
    """The nodes an optimizer object holds: its children, theirs, and its slot variables."""
    held: set[int] = set()
    queue = deque(optimizers)
    while queue:
        i = queue.popleft()
        node = nodes[i]
        for j in [c.node_id for c in node.children] + [s.slot_variable_node_id for s in node.slot_variables]:
            if 0 <= j < len(nodes) and j not in held:
                held.add(j)
                queue.append(j)
    return held


# ---------------------------------------------------------------------------- bindings


def bindings(meta: proto.MetaGraphDef) -> dict[str, dict[str, Variable | None]]:
    """For every function reached from the object graph's concrete functions: input arg -> variable."""
    functions = {f.signature.name: f for f in meta.graph_def.library.function}
    known = variables(meta.object_graph_def)
    bound: dict[str, dict[str, Variable | None]] = {}
    todo: deque[str] = deque()
    queued: set[str] = set()

    def visit(fname: str) -> None:
        if fname not in queued:
            queued.add(fname)
            todo.append(fname)

    def bind(fname: str, arg: str, var: Variable | None) -> None:
        have = bound.setdefault(fname, {})
        if arg in have and have[arg] != var:
            var = None
        if have.get(arg, ...) != var:
            have[arg] = var
            visit(fname)

    for fname, cf in meta.object_graph_def.concrete_functions.items():
        fn = functions.get(fname)
        if fn is None or SKIPPED_FUNCTIONS.match(fname):
            continue
        args = fn.signature.input_arg
        n = len(cf.bound_inputs)
        bound.setdefault(fname, {})
        visit(fname)
        if n > len(args):
            continue
        for arg, node_id in zip(args[len(args) - n:], cf.bound_inputs):
            bind(fname, arg.name, known.get(node_id))
    # a function is (re)visited only when one of its bindings changed; a binding only ever
    # goes from unknown to a variable to None (two variables), so this ends
    seen: set[str] = set()
    while todo:
        fname = todo.popleft()
        queued.discard(fname)
        fn = functions[fname]
        seen.add(fname)
        local = bound[fname]
        for node in fn.node_def:
            kept = _loop_invariant(node, functions) if node.op in LOOP_OPS else None
            for callee, data in _callees(node):
                target = functions.get(callee)
                if target is None or SKIPPED_FUNCTIONS.match(callee):
                    continue
                bound.setdefault(callee, {})
                for pos, arg in enumerate(target.signature.input_arg):
                    if pos < len(data) and ":" not in data[pos] and data[pos] in local:
                        bind(callee, arg.name, local[data[pos]] if kept is None or pos in kept else None)
                if callee not in seen:
                    visit(callee)
    return bound


def _callees(node: proto.NodeDef) -> list[tuple[str, list[str]]]:
    """The functions ``node`` runs, each with the body inputs its arguments take: a call's
    ``f`` takes all data inputs, an ``If``'s / ``Case``'s branches all but the first (the
    predicate or branch index), a ``While``'s body and condition all (the loop variables; a
    variable the body uses is one that it passes on unchanged)."""
    if node.op not in CALLS and node.op not in BRANCH_OPS and node.op not in LOOP_OPS:
        return []
    data = [i for i in node.input if not i.startswith("^")]
    if node.op in CALLS:
        return [(node.attr["f"].func.name, data)] if "f" in node.attr else []
    if node.op in LOOP_OPS:
        return [(node.attr[k].func.name, data) for k in ("body", "cond") if k in node.attr]
    return [(name, data[1:]) for name in branches(node)]


def _loop_invariant(node: proto.NodeDef, functions: dict[str, proto.FunctionDef]) -> set[int]:
    """The loop variables a ``While``'s body returns unchanged (its output k is its input k):
    only those hold the same variable in every iteration."""
    body = functions.get(node.attr["body"].func.name) if "body" in node.attr else None
    if body is None:
        return set()
    args, outs = body.signature.input_arg, body.signature.output_arg
    return {k for k in range(min(len(args), len(outs))) if body.ret.get(outs[k].name) == args[k].name}


# ---------------------------------------------------------------------------- one body


@dataclass
class Body:
    """Dependency tables of one function body (data and control edges)."""

    fn: proto.FunctionDef
    nodes: dict[str, proto.NodeDef]
    order: list[str]  # topological
    consumers: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # node or arg -> (consumer, input)
    by_ref: dict[str, list[str]] = field(default_factory=dict)  # input string -> the nodes taking it
    out_refs: dict[str, list[str]] = field(default_factory=dict)  # node or arg -> the input strings naming it
    _descendants: dict[tuple[str, bool, str | None], set[str]] = field(default_factory=dict, repr=False)
    _positions: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)
    _split: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict, repr=False)
    _above: dict[str, set[str]] = field(default_factory=dict, repr=False)  # node -> its ancestors
    position: dict[str, int] = field(default_factory=dict)  # node -> its place in ``order``
    edges: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # node -> (input, the node or arg it names)
    _writes: dict[str, int] = field(default_factory=dict, repr=False)  # see index_writes
    _walked: int = 0  # nodes the descendant walks have visited
    _write_reach: dict[str, frozenset[int]] | None = field(default=None, repr=False)
    arg_position: dict[str, int] = field(default_factory=dict)  # input arg -> its place in the signature

    @classmethod
    def of(cls, fn: proto.FunctionDef) -> Body:
        nodes = {n.name: n for n in fn.node_def}
        # each node's inputs once, as (input string, the node or arg it names)
        edges = {name: [(inp, inp[1:] if inp[0] == "^" else inp.split(":", 1)[0]) for inp in n.input]
                 for name, n in nodes.items()}
        order: list[str] = []
        state: dict[str, int] = {}
        for root in nodes:
            if root in state:
                continue
            stack = [(root, False)]
            while stack:
                name, done = stack.pop()
                if done:
                    state[name] = 2
                    order.append(name)
                    continue
                if state.get(name):
                    continue
                state[name] = 1
                stack.append((name, True))
                stack.extend((src, False) for _, src in edges[name] if src in nodes and not state.get(src))
        consumers: dict[str, list[tuple[str, str]]] = {}
        by_ref: dict[str, list[str]] = {}
        out_refs: dict[str, list[str]] = {}
        for name in order:
            for inp, src in edges[name]:
                consumers.setdefault(src, []).append((name, inp))
                users = by_ref.get(inp)
                if users is None:
                    out_refs.setdefault(src, []).append(inp)
                    by_ref[inp] = [name]
                else:
                    users.append(name)
        return cls(fn, nodes, order, consumers, by_ref, out_refs,
                   position={name: i for i, name in enumerate(order)},
                   edges=edges,
                   arg_position={a.name: i for i, a in enumerate(fn.signature.input_arg)})

    def tensor_descendants(self, ref: str, *, data_only: bool = False, avoid: str | None = None) -> set[str]:
        """The nodes that depend on the tensor ``ref`` (not merely on its node: one output of an
        IdentityN carries one gradient); ``data_only``: over data edges alone, and through an
        IdentityN only along the output that carries the input reached (Keras groups all
        gradients in one IdentityN: each output depends on its own input alone); ``avoid``: not
        through the edges that take the tensor ``avoid``."""
        key = (ref, data_only, avoid)
        cached = self._descendants.get(key)
        if cached is not None:
            return cached
        by_ref = self.by_ref
        work = [(c, ref) for c in by_ref.get(ref, ())]
        seen: set[str] = set()
        through: set[tuple[str, str]] = set()  # (IdentityN, the output followed)
        while work:
            n, via = work.pop()
            node = self.nodes.get(n)
            if node is not None and node.op == "IdentityN" and not via.startswith("^"):
                # an IdentityN passes each input to its own output (Keras groups all
                # gradients in one): follow only the output that carries ``via``
                out = f"{n}:output:{self._position(n, via)}"
                if (n, out) in through:
                    continue
                through.add((n, out))
                seen.add(n)
                edges = [out] if data_only else [out, f"^{n}"]
            elif n in seen:
                continue
            else:
                seen.add(n)
                edges = self._outputs(n, data_only)
            for edge in edges:
                if edge == avoid:
                    continue
                work.extend((c, edge) for c in by_ref.get(edge, ()))
        self._walked += len(seen)
        if len(self._descendants) < _MAX_CACHED:
            self._descendants[key] = seen
        return seen

    def index_writes(self, writes: dict[str, int]) -> None:
        """Record, for every tensor, up to two of the variables (``writes``: write node ->
        variable id) whose writes are among its :meth:`tensor_descendants` (data and control
        edges, an IdentityN output carrying its own input alone): one pass, last node first,
        made once the descendant walks have visited the body ``_INDEX_AFTER`` times over (a
        search among thousands of tensors of one shape: batch-norm statistics)."""
        self._writes = writes
        self._write_reach = None  # made by writes_other_than

    def _index(self, writes: dict[str, int]) -> dict[str, frozenset[int]]:
        reach: dict[str, frozenset[int]] = {}  # input string -> variables written below it
        node_reach: dict[str, frozenset[int]] = {}
        nothing: frozenset[int] = frozenset()
        grouped = {n for n, node in self.nodes.items() if node.op == "IdentityN"}

        def tensor(ref: str) -> frozenset[int]:
            found = nothing
            for c in self.by_ref.get(ref, ()):
                w = writes.get(c)
                if w is not None and w not in found:
                    found = found | {w}
                if c in grouped and ref[0] != "^":  # this input's own output, and the node's control edge
                    more = reach.get(f"{c}:output:{self._position(c, ref)}", nothing) | reach.get(f"^{c}", nothing)
                else:
                    more = node_reach.get(c, nothing)
                if more and not more <= found:
                    found = found | more
                if len(found) >= 2:  # two variables answer "another one than V?" for every V
                    break
            return found

        for name in [*reversed(self.order), *self.arg_position]:
            acc = nothing
            for ref in self.out_refs.get(name, ()):
                found = reach[ref] = tensor(ref)
                if len(acc) < 2 and found and not found <= acc:
                    acc = acc | found
            node_reach[name] = acc
        return reach

    def writes_other_than(self, ref: str, var: int) -> bool:
        """Whether a write of a variable other than ``var`` (one :meth:`index_writes` was
        given) depends on the tensor ``ref``; False while there is no index."""
        if self._write_reach is None:
            if not self._writes or self._walked <= _INDEX_AFTER * len(self.nodes):
                return False
            self._write_reach = self._index(self._writes)
        found = self._write_reach.get(ref)
        return found is not None and bool(found - {var})

    def split_inputs(self, name: str) -> tuple[list[str], list[str]]:
        """A node's data inputs and control inputs."""
        split = self._split.get(name)
        if split is None:
            inputs = self.nodes[name].input
            split = self._split[name] = ([i for i in inputs if not i.startswith("^")],
                                         [i for i in inputs if i.startswith("^")])
        return split

    def _position(self, name: str, ref: str) -> int:
        """Where ``ref`` is among the data inputs of node ``name`` (the first place)."""
        table = self._positions.get(name)
        if table is None:
            data = self.split_inputs(name)[0]
            table = self._positions[name] = {}
            for k, i in enumerate(data):
                table.setdefault(i, k)
        return table[ref]

    def _outputs(self, name: str, data_only: bool) -> list[str]:
        """The input strings other nodes name ``name``'s outputs by (its control edge unless ``data_only``)."""
        refs = self.out_refs.get(name, [])
        return [r for r in refs if not r.startswith("^")] if data_only else refs

    def depends(self, node: str, on: str) -> bool:
        """Whether ``node`` depends on node ``on`` (over data and control edges)."""
        above = self._above.get(node)
        if above is None:
            above = self._above[node] = self.ancestors_of([node])
        return on in above

    def ancestors_of(self, targets: Iterable[str]) -> set[str]:
        """The body nodes any of ``targets`` depends on (data and control edges; themselves excluded)."""
        seen: set[str] = set()
        stack = [node_of(i) for t in set(targets) if t in self.nodes for i in self.nodes[t].input]
        while stack:
            name = stack.pop()
            if name in seen or name not in self.nodes:
                continue
            seen.add(name)
            stack.extend(node_of(i) for i in self.nodes[name].input)
        return seen

    def descendants_of(self, sources: Iterable[str]) -> set[str]:
        """The body nodes that depend on any of ``sources`` (nodes or inputs; themselves excluded)."""
        seen: set[str] = set()
        stack = [c for src in sources for c, _ in self.consumers.get(src, ())]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            stack.extend(c for c, _ in self.consumers.get(name, ()))
        return seen

    def from_nothing(self, name: str) -> bool:
        """Whether no body node is upstream of ``name`` (a constant, or built from the inputs alone)."""
        return not any(node_of(i) in self.nodes for i in self.nodes[name].input)


def _resource(body: Body, ref: str, local: dict[str, Variable | None]) -> Variable | None:
    for _ in range(8):
        name = node_of(ref)
        if ":" not in ref and name in local:
            return local[name]
        node = body.nodes.get(name)
        if node is None or node.op not in _PASS_THROUGH or not node.input:
            return None
        ref = node.input[0]
    return None


def _output_shape(node: proto.NodeDef, ref: str) -> tuple[int, ...] | None:
    value = node.attr.get("_output_shapes")
    if value is None or not value.list.shape:
        return None
    shapes = value.list.shape
    index = int(ref.rsplit(":", 1)[1]) if ref.count(":") == 2 else 0
    if len(shapes) != 1 and ref.count(":") == 2 and index >= len(shapes):
        return None
    shape = shapes[index] if len(shapes) > 1 else shapes[0]
    if len(shapes) > 1 and index == 0 and ref.count(":") == 2:
        # several output args: the index counts within one arg; only trust single-arg ops
        pass
    if shape.unknown_rank:
        return None
    return tuple(d.size for d in shape.dim)


def _dtype_ok(node: proto.NodeDef, dtype: int) -> bool:
    for key in ("T", "dtype", "DstT", "out_type"):
        value = node.attr.get(key)
        if value is not None and value.WhichOneof("value") == "type":
            return value.type == dtype
    return True


def find_sites(fn: proto.FunctionDef, local: dict[str, Variable | None]) -> tuple[list[FunctionSite], list[Skip]]:
    """The update sites of one function body, given which inputs carry which variables."""
    fname = fn.signature.name
    body = Body.of(fn)
    skips: list[Skip] = []
    args = {a.name: a for a in fn.signature.input_arg}
    writes: dict[int, list[str]] = {}  # variable node id -> writes to it, in body order
    fused_sites: list[FunctionSite] = []
    target: dict[str, Variable] = {}
    resource_ref: dict[str, str] = {}
    blocked: set[str] = set()  # reads of non-trainable variables
    optimizer_reads: set[str] = set()  # those of them an optimizer object holds
    trainable_reads: set[str] = set()
    for name in body.order:
        node = body.nodes[name]
        if TAG_ATTR in node.attr:
            continue
        if node.op in READS and node.input:
            var = _resource(body, node.input[0], local)
            if var is not None and not var.trainable:
                blocked.add(name)
                if var.optimizer_state:
                    optimizer_reads.add(name)
            elif var is not None:
                trainable_reads.add(name)
        elif node.op in WRITES and node.input:
            var = _resource(body, node.input[0], local)
            if var is None:
                continue
            arity = 3 if node.op in SCATTER_WRITES else 2 if node.op in DENSE_WRITES else None
            data = body.split_inputs(name)[0]
            if arity is not None and (len(data) != arity or data[0] != node.input[0]):
                raise InputError(f"function {quoted(fname)}: node {quoted(name)} ({node.op}) has {len(data)} data "
                                 f"inputs, {arity} expected, the variable first")
            target[name] = var
            resource_ref[name] = node.input[0]
            writes.setdefault(var.node_id, []).append(name)
        elif node.op in UPDATE_OPS:
            fused = _fused_site(fname, body, node, local)
            (skips if isinstance(fused, Skip) else fused_sites).append(fused)  # type: ignore[arg-type]
    tainted = blocked | body.descendants_of(blocked)  # computed from a non-trainable variable
    # A tensor computed from variables alone (``var ** 2`` for a norm, ``2 * l2 * var``) is no
    # gradient. Nor is one computed from optimizer state: at first, from any non-trainable
    # variable; where that finds none because the forward pass reads non-trainable variables
    # too (a dropout layer's seed, batch-norm statistics, a frozen layer), only from the
    # optimizers' own variables.
    pure = _from_variables(body, local)
    not_gradients = [_AnyOf(tainted, pure)]
    if optimizer_reads != blocked:
        not_gradients.append(_AnyOf(optimizer_reads, body.descendants_of(optimizer_reads), pure))
    is_arg_input = {a for a, d in args.items() if d.type in proto.FLOAT_TYPES}

    state_writes = {w for w, v in target.items() if not v.trainable}
    trainable_writes = {w for w, v in target.items() if v.trainable}
    body.index_writes({w: target[w].node_id for w in trainable_writes})
    writes_of: dict[int, list[str]] = {}
    for w, v in target.items():
        writes_of.setdefault(v.node_id, []).append(w)
    found: list[tuple[FunctionSite, int]] = []
    for ws in writes.values():
        var = target[ws[0]]
        if not var.trainable:
            continue
        if var.dtype not in proto.FLOAT_TYPES:
            skips.append(Skip(f"{fname}/{ws[-1]}", var.path, f"the variable is {proto.dtype_name(var.dtype)}; "
                              "only float variables are rewritten"))
            continue
        other = [w for w in ws if body.nodes[w].op not in DENSE_WRITES | SCATTER_WRITES]
        if other:
            skips.append(Skip(f"{fname}/{ws[-1]}", var.path, f"written by {body.nodes[other[0]].op}, which the guard cannot gate"))
            continue
        scatter = [w for w in ws if body.nodes[w].op in SCATTER_WRITES]
        if scatter and len(scatter) != len(ws):
            skips.append(Skip(f"{fname}/{ws[-1]}", var.path, "written both densely and by scatter ops"))
            continue
        indices = None
        if scatter:
            idx = {body.nodes[w].input[1] for w in scatter}
            if len(idx) != 1:
                skips.append(Skip(f"{fname}/{ws[-1]}", var.path, "its scatter writes use different indices"))
                continue
            indices = idx.pop()

        grad = None
        for excluded in not_gradients:
            grad, site_indices, site_scatter = _site_gradient(body, ws, var, excluded, is_arg_input, state_writes,
                                                              trainable_writes, target, indices, scatter)
            if grad is not None:
                indices, scatter = site_indices, site_scatter
                break
        if grad is None:
            after_reads = body.descendants_of(trainable_reads)
            if any(w in tainted or w in after_reads for w in ws):
                skips.append(Skip(f"{fname}/{ws[-1]}", var.path,
                                  "no gradient can be told apart from the update math (written without one?)"))
            continue
        gref, gnode = grad
        if all(body.nodes[w].op == "AssignVariableOp" and _through_identity(body, body.nodes[w].input[1]) == gref
               for w in ws):
            continue  # the variable is set to a value (a restore signature's input), not updated
        found.append((FunctionSite(fname, var, gref, gnode, indices,
                                   _indices_dtype(body, scatter), (), tuple(ws), (), {}), 0))
    # slot writes: writes to non-trainable variables that depend on exactly one site's gradient
    claims: dict[str, list[int]] = {}
    sites: list[FunctionSite] = []
    # a slot write takes the gradient as data; control edges (an optimizer's "after every
    # update" ops: beta powers, the iteration counter) do not make a write a slot write
    reach = [body.tensor_descendants(site.gradient, data_only=True) for site, _ in found]
    for k, (site, _) in enumerate(found):
        for w in state_writes.intersection(reach[k]):
            claims.setdefault(w, []).append(k)
    shared_vars = {target[w].node_id for w, ks in claims.items() if len(ks) > 1}
    only_claimed_by: dict[int, list[str]] = {}
    for w, ks in claims.items():
        if len(ks) == 1:
            only_claimed_by.setdefault(ks[0], []).append(w)
    # writes some gradient depends on (run before the gradients exist) cannot be gated by them
    before_grads = body.ancestors_of(site.gradient_node for site, _ in found)
    owner = {w: j for j, (s, _) in enumerate(found) for w in s.var_writes}
    for k, (site, _) in enumerate(found):
        bad = [found[owner[w]][0].var.path for w in sorted(reach[k].intersection(owner), key=body.position.__getitem__)
               if owner[w] != k]
        if bad:
            skips.append(Skip(site.key, site.var.path, f"its gradient also feeds the update of {bad[0]}"))
            continue
        # every write of a slot variable belongs to the site, also those that take no gradient
        # (tf.compat.v1 sparse Adam decays m by an assignment before scattering the rows in)
        slot_ids = {target[w].node_id for w in only_claimed_by.get(k, ()) if target[w].node_id not in shared_vars}
        slot_writes = [w for i in slot_ids for w in writes_of[i] if w in claims or w not in before_grads]
        bad_ops = [w for w in slot_writes if body.nodes[w].op not in DENSE_WRITES | SCATTER_WRITES]
        if bad_ops:
            skips.append(Skip(site.key, site.var.path,
                              f"its slot is written by {body.nodes[bad_ops[0]].op}, which the guard cannot gate"))
            continue
        all_writes = sorted({*site.var_writes, *slot_writes}, key=body.position.__getitem__)
        slots: dict[int, Variable] = {}
        for w in slot_writes:
            slots.setdefault(target[w].node_id, target[w])
        sites.append(FunctionSite(
            function=fname, var=site.var, gradient=site.gradient, gradient_node=site.gradient_node,
            indices=site.indices, indices_dtype=site.indices_dtype, writes=tuple(all_writes),
            var_writes=site.var_writes, slots=tuple(sorted(slots.values(), key=lambda v: v.path)),
            resource={w: resource_ref[w] for w in all_writes},
            kind=" + ".join(sorted({body.nodes[w].op for w in site.var_writes}))))
    fused_vars = {s.var.node_id for s in fused_sites}
    for site in sites:
        if site.var.node_id in fused_vars:
            skips.append(Skip(site.key, site.var.path, "also updated by a fused op in the same function"))
    return [s for s in sites if s.var.node_id not in fused_vars] + fused_sites, skips


def _from_variables(body: Body, local: dict[str, Variable | None]) -> _Not:
    """The body nodes whose every input, data or control, comes from variables and constants
    alone: those no function input that is not a variable handle is upstream of."""
    return _Not(body.descendants_of(a for a in body.arg_position if local.get(a) is None))


class _Not:
    """Every name but those of a set."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def __contains__(self, item: object) -> bool:
        return item not in self.names


class _AnyOf:
    """The union of some sets, without building it."""

    def __init__(self, *sets: Container[str]) -> None:
        self.sets = sets

    def __contains__(self, item: object) -> bool:
        return any(item in s for s in self.sets)


def _site_gradient(body: Body, ws: list[str], var: Variable, tainted: Container[str], data_args: set[str],
                   state_writes: set[str], trainable_writes: set[str], target: dict[str, Variable],
                   indices: str | None,
                   scatter: list[str]) -> tuple[tuple[str, str] | None, str | None, list[str]]:
    """The gradient of the variable written by ``ws`` (see :func:`_gradient`), with the indices
    and scatter writes of its rows where the optimizer densifies or scatters IndexedSlices."""
    grad = _gradient(body, ws, var, tainted, data_args, sparse=bool(scatter), state_writes=state_writes,
                     trainable_writes=trainable_writes)
    if grad is None:
        grad = _gradient(body, ws, var, tainted, data_args, sparse=bool(scatter),
                         state_writes=state_writes, trainable_writes=trainable_writes, data_only=True)
    densified = grad is not None and (body.nodes.get(grad[1]) is not None
                                      and body.nodes[grad[1]].op == "UnsortedSegmentSum"
                                      or _segment_values(body, grad[0], ws[-1]))
    if not scatter and (grad is None or densified):
        # an IndexedSlices gradient the optimizer densifies (UnsortedSegmentSum) or scatters
        # into its slots: the site's gradient is the slices' values (as the reference and
        # the graph passes test them), found as rows of the variable; also where the values
        # happen to have the variable's shape (as many looked-up rows as the table has)
        rows = _gradient(body, ws, var, tainted, data_args, sparse=True, state_writes=state_writes,
                         trainable_writes=trainable_writes)
        if rows is not None and (grad is None or rows[0] == grad[0] or grad[1] in body.tensor_descendants(rows[0])):
            below = body.tensor_descendants(rows[0])
            segs = [n for n in body.order if n in below and body.nodes[n].op == "UnsortedSegmentSum"
                    and body.depends(ws[-1], n) and not _unique_positions(body, body.nodes[n].input[1])]
            if not segs:
                # rows scattered into the slots, the variable written densely from them
                # (tf.compat.v1 Adam's sparse update, after summing duplicate rows by the
                # positions Unique gives): the slots' scatter gives the row indices
                segs = [w for w in body.order if w in below and w in target and not target[w].trainable
                        and body.nodes[w].op in SCATTER_WRITES and body.depends(ws[-1], w)]
            if segs:
                grad = rows
                indices = body.nodes[segs[0]].input[1]
                scatter = [segs[0]]
    return grad, indices, scatter


def _segment_values(body: Body, ref: str, write: str) -> bool:
    """Whether ``ref`` is the data an ``UnsortedSegmentSum`` upstream of ``write`` sums: the
    values of an IndexedSlices gradient the optimizer densifies."""
    return any(body.nodes[c].op == "UnsortedSegmentSum" and body.split_inputs(c)[0][:1] == [ref]
               and body.depends(write, c) for c in body.by_ref.get(ref, ()))


def _fused_site(fname: str, body: Body, node: proto.NodeDef, local: dict[str, Variable | None]) -> FunctionSite | Skip:
    """A fused ``ResourceApply*`` / ``ResourceSparseApply*`` op as a site: its variable and slots
    are its resource inputs (the table optrewrite.tf.sites.UPDATE_OPS), its gradient its grad input."""
    info = UPDATE_OPS[node.op]
    key = f"{fname}/{node.name}"
    data = [i for i in node.input if not i.startswith("^")]
    if len(data) != len(info["inputs"]):
        return Skip(key, None, f"{node.op} has {len(data)} inputs, {len(info['inputs'])} expected")
    var = _resource(body, data[info["var"]], local)
    if var is None:
        return Skip(key, None, f"the variable {node.op} updates is not one of the object graph's")
    if not var.trainable:
        return Skip(key, var.path, "the variable is not trainable")
    if var.dtype not in proto.FLOAT_TYPES:
        return Skip(key, var.path, f"the variable is {proto.dtype_name(var.dtype)}; only float variables are rewritten")
    slots = [_resource(body, data[p], local) for p in info["slots"]]
    indices = data[info["indices"]] if info["indices"] is not None else None
    tindices = node.attr.get("Tindices")
    return FunctionSite(
        function=fname, var=var, gradient=data[info["grad"]], gradient_node=node_of(data[info["grad"]]),
        indices=indices, indices_dtype=tindices.type if tindices is not None else proto.DT_INT32,
        writes=(node.name,), var_writes=(node.name,),
        slots=tuple(sorted({v.node_id: v for v in slots if v is not None}.values(), key=lambda v: v.path)),
        resource={node.name: data[info["var"]]}, kind=node.op,
        fused=(data[info["var"]], *(data[p] for p in info["slots"])))


def _through_identity(body: Body, ref: str) -> str:
    """The tensor ``ref`` is, behind ``Identity`` nodes."""
    node = body.nodes.get(node_of(ref))
    while node is not None and node.op == "Identity" and not ref.startswith("^"):
        ref = body.split_inputs(node.name)[0][0]
        node = body.nodes.get(node_of(ref))
    return ref


def _unique_positions(body: Body, ref: str) -> bool:
    """Whether ``ref`` is a ``Unique``'s second output (positions into its unique values, not rows)."""
    node = body.nodes.get(node_of(ref))
    return node is not None and node.op in ("Unique", "UniqueV2") and ref.split(":")[1:2] == ["idx"]


def _indices_dtype(body: Body, scatter: list[str]) -> int:
    if not scatter:
        return proto.DT_INT32
    node = body.nodes[scatter[0]]
    value = node.attr.get("Tindices") or node.attr.get("Tindices")
    if node.op == "UnsortedSegmentSum":
        value = node.attr.get("Tindices")
    return value.type if value is not None else proto.DT_INT32


def _gradient(body: Body, ws: list[str], var: Variable, blocked: Container[str], data_args: set[str],
              *, sparse: bool, state_writes: set[str], trainable_writes: set[str],
              data_only: bool = False) -> tuple[str, str] | None:
    """The variable's gradient among the tensors its last write depends on: no constant, the
    variable's dtype and shape (rows of it when ``sparse``), no read of a non-trainable variable
    upstream. Of those, the one the most writes of non-trainable variables (``state_writes``:
    the slots) depend on (an optimizer's ``g * (1 - beta)`` feeds one slot, ``g`` feeds them
    all), then the closest to the writes that no other such candidate upstream of it bypasses
    on its way to a write (``g1 + g2`` of a variable used twice is the gradient, not ``g1``;
    FTRL's ``g`` and not ``square(g)``, which feeds both slots too); a tensor that also feeds
    another trainable variable's writes (``trainable_writes`` but ``ws``) is upstream of the
    gradient. Returns (body input string, producing node)."""
    last = ws[-1]
    starts = [body.nodes[last].input[2 if body.nodes[last].op in SCATTER_WRITES else 1]]
    seen: set[str] = set()
    queue: deque[str] = deque(starts)
    control: deque[str] = deque()
    found: list[tuple[int, str, str, set[str]]] = []  # (score, ref, node, descendants), closest first
    while queue or control:
        ref = queue.popleft() if queue else control.popleft()
        if ref in seen:
            continue
        seen.add(ref)
        if not data_only and body.writes_other_than(ref, var.node_id):
            # another variable's write depends on it, and so on everything upstream of it:
            # neither it nor what it is computed from is this variable's gradient
            continue
        name = node_of(ref)
        node = body.nodes.get(name)
        ok = False
        if node is None:  # a function input
            ok = name in data_args and _arg_fits(body, name, var, sparse)
        elif not ref.startswith("^"):
            ok = _candidate(body, node, ref, var, blocked, sparse)
        if ok:
            below = body.tensor_descendants(ref)
            # another variable's write after this tensor disqualifies it; ``data_only``: only a
            # write that takes it as data (automatic control dependencies chain every update
            # of an If branch after every gradient)
            others_below = body.tensor_descendants(ref, data_only=True) if data_only else below
            if last in below and trainable_writes.intersection(others_below).issubset(ws):
                if data_only and any(not body.depends(last, w) for w in state_writes.intersection(others_below)):
                    # it feeds state this update does not read (other variables' slots,
                    # batch-norm statistics): a forward tensor of the variable's shape, which
                    # reaches no trainable write by data when the optimizer writes the
                    # variable from its slots' new values (Keras 3 Adam), not a gradient
                    continue
                found.append((len(state_writes.intersection(below)), ref, name, below))
                if len(found) >= _MAX_CANDIDATES:
                    break
        if node is not None:
            if node.op == "IdentityN" and ref.count(":") == 2:
                # an IdentityN output carries its own input alone (Keras groups all gradients in one)
                k = int(ref.rsplit(":", 1)[1])
                data, ctl = body.split_inputs(name)
                inputs = [*ctl, *data[k:k + 1]]
            else:
                inputs = list(node.input)
            for inp in inputs:
                (control if inp.startswith("^") else queue).append(inp)
    if not found:
        return None
    top = max(score for score, *_ in found)
    best = [c for c in found if c[0] == top]
    for _, ref, name, below in best:
        # a tensor computed from the gradient that feeds every slot (FTRL's ``square(g)``) is
        # not the gradient: the gradient reaches some write around it
        writes = {last, *state_writes.intersection(below)}
        if not any(other != ref and name in other_below
                   and writes & body.tensor_descendants(other, avoid=ref)
                   for _, other, _, other_below in best):
            return ref, name
    return best[0][1], best[0][2]


def _arg_fits(body: Body, arg: str, var: Variable, sparse: bool) -> bool:
    """Whether the function input ``arg`` has the variable's dtype and (known) shape."""
    pos = body.arg_position[arg]
    if body.fn.signature.input_arg[pos].type != var.dtype:
        return False
    attrs = body.fn.arg_attr.get(pos)
    value = attrs.attr.get("_output_shapes") if attrs is not None else None
    if value is None or len(value.list.shape) != 1 or value.list.shape[0].unknown_rank or var.shape is None:
        return False
    shape = tuple(d.size for d in value.list.shape[0].dim)
    if sparse:
        return len(shape) == len(var.shape) and shape[1:] == var.shape[1:]
    return shape == var.shape


def _candidate(body: Body, node: proto.NodeDef, ref: str, var: Variable, blocked: Container[str],
               sparse: bool) -> bool:
    """Whether ``ref`` (an output of ``node``, upstream of the variable's last write) may be
    its gradient: no constant, no read or write, nothing computed from optimizer state
    (``blocked``), the variable's dtype and shape (rows of it when ``sparse``)."""
    name = node.name
    if node.op in ("Const", "Placeholder") or node.op in READS or node.op in WRITES:
        return False
    if name in blocked:
        return False
    if body.from_nothing(name):  # a constant expression, or the function's inputs combined
        return False
    if not _dtype_ok(node, var.dtype):
        return False
    shape = _output_shape(node, ref)
    if var.shape is not None and shape is not None:
        if sparse:
            if len(shape) != len(var.shape) or tuple(shape[1:]) != tuple(var.shape[1:]):
                return False
        elif tuple(shape) != tuple(var.shape):
            return False
    elif var.shape is not None and shape is None:
        return False
    return True
