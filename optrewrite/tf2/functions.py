"""An editor over one FunctionDef body, recording what changed.

Function bodies name tensors ``node:out_arg:index`` (``Mul:z:0``) and function inputs by their
bare arg name. :class:`FunctionEditor` offers the GraphEditor calls the TF passes use
(``add``, ``const``, ``unique_name``, attr helpers), so :func:`clip_by_norm_subgraph` runs on
it unchanged: ``add`` returns the new node's first output in function syntax, which is what
the next ``add`` takes as input. Output arg names come from :data:`OUTPUT_ARGS`, a static
table checked against TensorFlow's op registry by the tests.

Every change is recorded: new nodes (tagged with the ``_optrewrite`` attr), existing nodes
whose inputs changed, new control outputs (added to ``signature.control_output`` and
``control_ret`` so that TensorFlow runs them). :class:`LibraryEditor` holds the editors of one
function library, made as the passes ask for them, and knows which branch functions are
alternatives of one another (the branches of one ``If`` / ``Case``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from optrewrite.tf import proto
from optrewrite.tf.graph import TAG_ATTR, Placement, pack_values

# op -> the name of its first output arg (the only one optrewrite reads, except Unique's idx).
OUTPUT_ARGS: dict[str, str] = {
    "All": "output", "Any": "output", "AddV2": "z", "Equal": "z", "LogicalAnd": "z", "LogicalNot": "y",
    "Cast": "y", "Const": "output", "GatherV2": "output",
    "Greater": "z", "Identity": "output", "L2Loss": "output", "Maximum": "z", "Minimum": "z",
    "Mul": "z", "NotEqual": "z", "OnesLike": "y", "Pack": "output", "ReadVariableOp": "value", "RealDiv": "z",
    "Reshape": "output", "ResourceGather": "output", "Select": "output", "SelectV2": "output",
    "Size": "output", "Sqrt": "y", "Sub": "z", "Sum": "output", "Unique": "y", "UnsortedSegmentMax": "output",
    "AssignSubVariableOp": "", "AssignAddVariableOp": "", "AssignVariableOp": "",
    "ResourceScatterSub": "", "ResourceScatterUpdate": "", "NoOp": "",
}  # fmt: skip
# Ops whose second output optrewrite reads.
SECOND_OUTPUT_ARGS: dict[str, str] = {"Unique": "idx"}


def node_of(ref: str) -> str:
    """The node (or function input) a body input names: ``a:z:0`` -> ``a``, ``^a`` -> ``a``."""
    return ref[1:] if ref.startswith("^") else ref.split(":", 1)[0]


@dataclass
class FunctionEditor:
    """Edits one function body; ``added`` and ``changed`` say what it did."""

    fn: proto.FunctionDef
    added: list[str] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)
    control_outputs: list[str] = field(default_factory=list)
    # state the rewrite adds (a counter variable) -> the input arg that brings its resource
    # handle into the body; :func:`optrewrite.tf2.state_vars.thread` appends the args
    captures: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {n.name: i for i, n in enumerate(self.fn.node_def)}
        self.args = {a.name for a in self.fn.signature.input_arg}
        self.first_new = len(self.fn.node_def)  # nodes at this index and after are added
        self._users: dict[str, set[str]] | None = None

    @property
    def name(self) -> str:
        return self.fn.signature.name

    @property
    def touched(self) -> bool:
        return bool(self.added or self.changed or self.control_outputs or self.captures)

    def node(self, name: str) -> proto.NodeDef:
        return self.fn.node_def[self.index[name]]

    def unique_name(self, name: str) -> str:
        def taken(candidate: str) -> bool:
            return candidate in self.index or candidate in self.args

        if not taken(name):
            return name
        k = 1
        while taken(f"{name}_{k}"):
            k += 1
        return f"{name}_{k}"

    def capture(self, key: str) -> str:
        """The input arg that carries the resource handle of ``key``, a variable the rewrite
        adds; its name is reserved here, the arg itself is appended when the library is
        threaded (every caller passes the handle on)."""
        arg = self.captures.get(key)
        if arg is None:
            arg = self.unique_name("optrewrite_state")
            self.args.add(arg)
            self.captures[key] = arg
        return arg

    def add_inputs(self, name: str, refs: Sequence[str]) -> None:
        """Append data inputs to node ``name`` (before its control inputs)."""
        node = self.node(name)
        inputs = list(node.input)
        at = next((k for k, i in enumerate(inputs) if i.startswith("^")), len(inputs))
        del node.input[:]
        node.input.extend([*inputs[:at], *refs, *inputs[at:]])
        self._used(name, refs)
        self._mark(name)

    def add(self, name: str, op: str, inputs: Sequence[str] = (), *,
            attrs: dict[str, proto.AttrValue] | None = None, placement: Placement | None = None,
            tag: str, colocate: bool = False, control: Iterable[str] = ()) -> str:
        """Append a node; return its first output as body inputs name it (its name for ops without outputs)."""
        name = self.unique_name(name)
        node = self.fn.node_def.add()
        node.name = name
        node.op = op
        node.input.extend(inputs)
        node.input.extend(f"^{c}" for c in dict.fromkeys(node_of(c) for c in control))
        if placement is not None and placement.device:
            node.device = placement.device
        for key, value in (attrs or {}).items():
            node.attr[key].CopyFrom(value)
        node.attr[TAG_ATTR].s = tag.encode()
        self.index[name] = len(self.fn.node_def) - 1
        self.added.append(name)
        self._used(name, node.input)
        out = OUTPUT_ARGS[op]
        return f"{name}:{out}:0" if out else name

    def const(self, name: str, value: float | int | list, dtype: int, *,
              placement: Placement | None = None, tag: str) -> str:
        tensor = proto.TensorProto(dtype=dtype)
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list):
            tensor.tensor_shape.dim.add(size=len(values))
        tensor.tensor_content = pack_values(values, dtype)
        return self.add(name, "Const", attrs={"dtype": self.type_attr(dtype), "value": proto.AttrValue(tensor=tensor)},
                        placement=placement, tag=tag)

    def set_input(self, name: str, position: int, ref: str) -> None:
        node = self.node(name)
        node.input[position] = ref
        self._used(name, [ref])
        self._mark(name)

    def add_control_input(self, name: str, source: str) -> None:
        node = self.node(name)
        ctl = f"^{node_of(source)}"
        if ctl not in node.input:
            node.input.append(ctl)
            self._used(name, [ctl])
            self._mark(name)

    def users(self, name: str) -> set[str]:
        """The nodes that take an output of node ``name`` or wait for it (it may be a
        superset after a ``set_input``: check the inputs of what it returns)."""
        if self._users is None:
            self._users = {}
            for node in self.fn.node_def:
                self._used(node.name, node.input)
        return self._users.get(name, set())

    def _used(self, consumer: str, inputs: Iterable[str]) -> None:
        if self._users is not None:
            for inp in inputs:
                self._users.setdefault(node_of(inp), set()).add(consumer)

    def add_control_output(self, node_name: str) -> None:
        """Make the function run ``node_name`` (a stateful op nothing consumes)."""
        sig = self.fn.signature
        key = node_name
        if key not in sig.control_output:
            sig.control_output.append(key)
        self.fn.control_ret[key] = node_name
        self.control_outputs.append(node_name)

    def _mark(self, name: str) -> None:
        if self.index[name] < self.first_new:
            self.changed.add(name)

    # GraphEditor's attr helpers, so the TF passes' subgraph builders run on function bodies
    @staticmethod
    def type_attr(dtype: int) -> proto.AttrValue:
        return proto.AttrValue(type=dtype)

    @staticmethod
    def bool_attr(value: bool) -> proto.AttrValue:
        return proto.AttrValue(b=value)

    @staticmethod
    def int_attr(value: int) -> proto.AttrValue:
        return proto.AttrValue(i=value)


BRANCH_OPS = frozenset({"If", "StatelessIf", "Case", "StatelessCase"})
LOOP_OPS = frozenset({"While", "StatelessWhile"})


def branches(node: proto.NodeDef) -> list[str]:
    """The branch functions of an ``If`` / ``Case`` node, in branch order (none for other ops)."""
    if node.op in ("If", "StatelessIf"):
        return [node.attr[k].func.name for k in ("then_branch", "else_branch") if k in node.attr]
    if node.op in ("Case", "StatelessCase") and "branches" in node.attr:
        return [f.name for f in node.attr["branches"].list.func]
    return []


class LibraryEditor:
    """The editors of one function library's bodies, one per function, made on first use.

    A branch function's **alternatives** are the other branches of every ``If`` / ``Case``
    that runs it: in one step exactly one of them runs, and all take the same inputs (the
    node's inputs after the predicate or index) in the same positions.
    """

    def __init__(self, functions: Iterable[proto.FunctionDef]) -> None:
        self.functions = {f.signature.name: f for f in functions}
        self.editors: dict[str, FunctionEditor] = {}
        self._alternatives: dict[str, list[str]] | None = None
        # the clips copied into alternative branches: (function, variable id[, clip group]) -> write
        self.mirrored: dict[tuple[str, int] | tuple[str, int, int], list[str]] = {}

    def function(self, name: str) -> FunctionEditor:
        editor = self.editors.get(name)
        if editor is None:
            editor = self.editors[name] = FunctionEditor(self.functions[name])
        return editor

    def alternatives(self, name: str) -> list[str]:
        if self._alternatives is None:
            table: dict[str, dict[str, None]] = {}
            for fn in self.functions.values():
                for node in fn.node_def:
                    names = branches(node) if node.op in BRANCH_OPS else ()
                    for b in names:
                        table.setdefault(b, {}).update(dict.fromkeys(x for x in names if x != b))
            self._alternatives = {b: [x for x in alts if x in self.functions] for b, alts in table.items()}
        return self._alternatives.get(name, [])
