"""Verifying a TensorFlow graph: import it and run one training step on generated data.

The graph (GraphDef or MetaGraphDef, binary or text) is parsed by
:func:`optrewrite.tf.io.load` in this process, which plans the step and checks it without
TensorFlow; the step itself runs in a child process (:func:`optrewrite.verify.run_isolated`).

*One step* is one ``Session.run`` of the last nodes downstream of an optimizer update — an
op of ``optrewrite/tf/update_ops.json``, a state write under an ``update_<var>`` scope (a
decomposed update), or a call of a function holding either — that no checkpoint, summary
or debug writer (Save/Restore, summaries, debug dumps, a ``PrintV2`` to a file) precedes,
and whose consumers, if any, all come after one: normally the train op (a sink); the update
ops themselves when everything after them also saves a checkpoint. When every update waits
for such a writer, the step is the updates themselves, and the check below refuses the
writer. A graph without an optimizer update is loaded, nothing is run, and the summary says
so (it is not a failure).

**Checked before anything runs.** The nodes the targets reach through their data and
control inputs, and every function those nodes may call (by op name, by a function-valued
attr, or as the gradient the library registers for one), transitively, must hold only ops
of :data:`optrewrite.tf.verify_ops.ALLOWED_OPS`, plus ``PrintV2`` to a stream; otherwise
the graph is refused with :class:`optrewrite.verify.OpNotAllowed` naming the op and node.
Only those nodes and functions are imported (devices and colocation cleared); a graph
without a step imports the nodes of allowed ops whose inputs are too.

**In the child.** The checked graph is imported into a fresh ``tf.Graph`` (through
TensorFlow's C import: no Python object per node) and run in a single-threaded CPU
``tf.compat.v1.Session``. Every variable the step reads or writes (``VariableV2``,
``Variable``, ``VarHandleOp``) is given generated values by assign ops added to the GraphDef
before it is imported (the graph's own initializers, and so its lookup tables, are not
run), and is read by a second run after the step's; the summary counts those that changed.
Every ``Placeholder`` the step needs is fed. The graph runs as TensorFlow runs it by
default, grappler included (grappler costs most of a large graph's run, and turning it off
changes the numbers of the benchmark graph's step). The session's deadline, for each run, is what is left of
``timeout_s``, so a step waiting on an empty queue fails with a message saying
so. Errors name the node and op (when the graph has them), the error's class and a fixed
phrase (:data:`_PHRASES`), never the runtime's text.

Values are generated as :mod:`optrewrite.verify` describes; an unknown dimension is
:data:`UNKNOWN_DIM`. TensorFlow is imported only in the verification process.
"""
from __future__ import annotations

import importlib.util
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from optrewrite.errors import InputError, quoted
from optrewrite.tf.sites import UPDATE_OPS, VARIABLE_OPS, WRITE_OPS, is_update_scope
from optrewrite.tf.verify_ops import ALLOWED_OPS
from optrewrite.verify import (
    Budget,
    OpNotAllowed,
    VerificationFailed,
    count_finite,
    failed,
    generate,
    named,
    not_allowed,
    one_line,
    reason,
    run_isolated,
    same,
)

if TYPE_CHECKING:
    from optrewrite.tf import proto

UNKNOWN_DIM = 2  # the size of a dimension of unknown size (-1)
# Ops that write files (checkpoints, event files, debug dumps), besides every *Summary op;
# the step ends before them. (Whether an op may run at all is ALLOWED_OPS's call.)
_WRITING_OPS = frozenset(
    {
        "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice", "MergeV2Checkpoints",
        "WriteFile", "SaveDataset", "SaveDatasetV2", "DatasetToTFRecord",
        "CreateSummaryFileWriter", "CreateSummaryDbWriter", "SummaryWriter", "FlushSummaryWriter",
        "CloseSummaryWriter", "ImportEvent",
        "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "DebugNanCount",
        "DebugNumericSummary", "DebugNumericSummaryV2",
    }
)  # fmt: skip
_READ_OPS = frozenset({"ReadVariableOp", "Identity", "RefIdentity"})  # not named as the step in the summary
# What TensorFlow's errors say, in words of our own (the first pattern found wins). The
# runtime's text is never quoted: it holds values (an Assert's data, shapes, indices).
_PHRASES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), phrase)
    for pattern, phrase in (
        (r"assertion failed|Assertion failed", "an Assert failed"),
        (r"Tensor had (NaN|Inf)|NaN values|Inf values", "a checked tensor holds Inf or NaN"),
        (r"OOM when allocating|[Oo]ut of memory|bad_alloc|Resource exhausted", "out of memory"),
        (r"Cannot parse tensor from proto", "a tensor could not be built (out of memory?)"),
        (r"Matrix size-incompatible|In\[\d\] (and In\[\d\] )?(has|have|must|is|mismatch)",
         "the operands' shapes do not match"),
        (r"Incompatible shapes|Dimensions must be equal|Shapes must be equal rank|Shape must be rank|"
         r"Dimension \d+ in both shapes must be equal|shapes must be equal|should match",
         "the operands' shapes do not match"),
        (r"[Cc]annot reshape|Input to reshape is a tensor with", "the input cannot be reshaped to the requested shape"),
        (r"indices\[|out of range|not in \[|out of bounds", "an index is out of range"),
        (r"uninitialized|not initialized|Table not initialized", "reads an uninitialized value"),
        (r"Resource .* does not exist|Container .* does not exist|Could not find resource",
         "reads a resource that does not exist"),
        (r"Value for attr '.*' of .* is not in the list of allowed values|allowed values",
         "an attr value the op does not accept"),
        (r"NodeDef mentions attr|NodeDef missing attr|NodeDef expected inputs", "a node that does not match its op's definition"),
        (r"Op type not registered", "an op this TensorFlow does not have"),
        (r"was passed .* from .* incompatible with expected|[Ii]ncompatible with expected|"
         r"[Ee]xpected .* but got .* type|type .* does not match", "an input of the wrong type"),
        (r"[Cc]ycle", "the graph has a cycle"),
        (r"not found|Not found|does not exist", "something the graph names does not exist"),
    )
)  # fmt: skip


_TRACE = re.compile(r"^\s*File \".*$", re.MULTILINE)  # where a node was defined: not what went wrong


@dataclass(frozen=True)
class _Plan:
    """What to run: targets, the variables and placeholders they reach, from the proto alone."""

    targets: list[str]
    variables: list[tuple[str, bool, int, tuple[int, ...]]]  # name, resource, dtype enum, shape
    placeholders: list[tuple[str, int, tuple[int, ...]]]  # name, dtype enum, shape
    why_nothing: str | None  # when there are no targets
    cone: list[int]  # the nodes the targets reach (indices into graph.node)


def _node_funcs(node: Any) -> Iterable[str]:
    """Names of the functions a node calls: its op, and function-valued attrs."""
    yield node.op
    for value in node.attr.values():
        if value.HasField("func"):
            yield value.func.name
        elif value.HasField("list"):
            yield from (f.name for f in value.list.func)


def _functions_where(library: Any, holds: Callable[[Any], bool]) -> set[str]:
    """Library functions holding a node for which ``holds(node)``, directly or by a call."""
    marked: set[str] = set()
    changed = True
    while changed:
        changed = False
        for function in library.function:
            name = function.signature.name
            if name in marked:
                continue
            if any(holds(n) or any(f in marked for f in _node_funcs(n)) for n in function.node_def):
                marked.add(name)
                changed = True
    return marked


def _is_update(node: Any) -> bool:
    """Whether a node is an optimizer update: an update op, or a state write under an update scope."""
    if node.op in UPDATE_OPS:
        return True
    scope = node.name.rsplit("/", 1)[0] if "/" in node.name else ""
    return node.op in WRITE_OPS and is_update_scope(scope)


def _writes_files(node: Any) -> bool:
    """Whether running a node writes files (checkpoints, summaries, debug dumps, prints to a file)."""
    if node.op in _WRITING_OPS or node.op.endswith(("Summary", "SummaryV2")):
        return True
    if node.op.startswith("Write") and node.op.endswith("Summary"):
        return True
    return node.op == "PrintV2" and node.attr["output_stream"].s.startswith(b"file://")


def _shape(what: str, shape: Any, budget: Budget) -> tuple[int, ...]:
    """The shape to generate for a TensorShapeProto, counted against ``budget``."""
    if shape.unknown_rank:
        return budget.take(what, ())
    dims = []
    for d in shape.dim:
        if d.size < -1:
            raise failed(f"{what}: invalid dimension {d.size}")
        dims.append(UNKNOWN_DIM if d.size == -1 else d.size)
    return budget.take(what, dims)


def _plan(graph: proto.GraphDef, topology: Any) -> _Plan:
    """The step's targets and the variables and placeholders they reach (see the module docstring)."""
    nodes = graph.node
    consumers = (topology.data_consumers, topology.control_consumers)

    def downstream(seeds: Iterable[int]) -> set[int]:
        seen = set(seeds)
        stack = list(seen)
        while stack:
            name = nodes[stack.pop()].name
            for table in consumers:
                for j in table.get(name, ()):
                    if j not in seen:
                        seen.add(j)
                        stack.append(j)
        return seen

    updating = _functions_where(graph.library, _is_update)
    writing = _functions_where(graph.library, _writes_files)
    def calls(node: Any, functions: set[str]) -> bool:  # a graph without a library skips the attr scan
        return bool(functions) and any(f in functions for f in _node_funcs(node))

    updates = [i for i, n in enumerate(nodes) if _is_update(n) or calls(n, updating)]
    # The step: the last nodes after an update that no file write precedes; their consumers
    # are all after a file write (or there are none).
    runnable = downstream(updates) - downstream(
        i for i, n in enumerate(nodes) if _writes_files(n) or calls(n, writing)
    )
    targets = [
        i for i in sorted(runnable)
        if not any(j in runnable for table in consumers for j in table.get(nodes[i].name, ()))
    ]  # fmt: skip
    if not updates:
        return _Plan([], [], [], "no optimizer update found", [])
    if not targets:  # every update waits for a writer: the step would run it, which the check refuses
        targets = sorted(updates)

    index = topology.index
    cone = set(targets)
    stack = list(targets)
    while stack:
        for inp in nodes[stack.pop()].input:
            j = index[inp[1:] if inp[0] == "^" else inp.split(":", 1)[0]]
            if j not in cone:
                cone.add(j)
                stack.append(j)
    budget = Budget()
    variables = []
    placeholders = []
    for i in sorted(cone):
        node = nodes[i]
        if node.op in VARIABLE_OPS:
            shape = _shape(f"variable {node.name!r}", node.attr["shape"].shape, budget)
            variables.append((node.name, node.op == "VarHandleOp", node.attr["dtype"].type, shape))
        elif node.op == "Placeholder":
            shape = _shape(f"placeholder {node.name!r}", node.attr["shape"].shape, budget)
            placeholders.append((node.name, node.attr["dtype"].type, shape))
    return _Plan([nodes[i].name for i in targets], variables, placeholders, None, sorted(cone))


@dataclass(frozen=True)
class _Refusal:
    """An op that may not run: where it is (``function``: the innermost function holding it) and why."""

    op: str
    node: str
    function: str = ""
    why: str = ""

    def error(self, caller: str = "") -> VerificationFailed:
        called = f", which node {quoted(caller)} calls" if caller else ""
        if not self.op:  # the function itself, not one of its ops
            return OpNotAllowed(one_line(f"function {quoted(self.function)}{called + ',' if called else ''} "
                                         f"may not run: {self.why}"))
        where = f" in function {quoted(self.function)}{called}" if self.function else ""
        return not_allowed(self.op, self.node, where, self.why)


class _Checker:
    """Which nodes may run: their ops on the list, and the functions they may call too.

    A function is checked once (its body's nodes, the functions they call, and the gradient
    the library registers for it); a call of a function the library does not define is
    refused, as TensorFlow would look for it elsewhere.
    """

    def __init__(self, library: Any) -> None:
        self.functions = {f.signature.name: f for f in library.function}
        self.gradients = {g.function_name: g.gradient_func for g in library.gradient}
        self.checked: dict[str, _Refusal | None] = {}

    def refusal(self, node: Any, function: str = "") -> _Refusal | None:
        """Why ``node`` (of ``function``, or of the graph) may not run, or None."""
        op = node.op
        if op in self.functions:
            refused = self.function(op)
        elif op in ALLOWED_OPS or (op == "PrintV2" and not _writes_files(node)):
            refused = None
        else:
            return _Refusal(op, node.name, function, "it prints to a file" if op == "PrintV2" else "")
        for name in _called(node):
            if refused is not None:
                break
            if name not in self.functions:
                return _Refusal(op, node.name, function, f"it calls {quoted(name)}, which the graph does not define")
            refused = self.function(name)
        return refused

    def function(self, name: str) -> _Refusal | None:
        if name in self.checked:
            return self.checked[name]
        self.checked[name] = None  # a recursive call is checked by the outer one
        refused = None
        function = self.functions[name]
        for node in function.node_def:
            refused = self.refusal(node, name)
            if refused is not None:
                break
        for attr in function.signature.attr:  # a function-valued attr's default is called too
            for default in _called_by(attr.default_value):
                if refused is not None:
                    break
                refused = (self.function(default) if default in self.functions else
                           _Refusal("", name, name, f"its attr {quoted(attr.name)} defaults to {quoted(default)}, "
                                    "which the graph does not define"))
        gradient = self.gradients.get(name)
        if refused is None and gradient:
            refused = (self.function(gradient) if gradient in self.functions else
                       _Refusal("", name, name, f"its gradient {quoted(gradient)} is not in the graph"))
        self.checked[name] = refused
        return refused

    def reached(self) -> set[str]:
        """The functions checked so far, and so imported."""
        return set(self.checked)


def _called(node: Any) -> Iterator[str]:
    """The functions a node's function-valued attrs name (nested ones too)."""
    for value in node.attr.values():
        yield from _called_by(value)


def _called_by(value: Any) -> Iterator[str]:
    """The functions an AttrValue names, and those its functions' attrs name."""
    if value.HasField("func"):
        yield value.func.name
        for inner in value.func.attr.values():
            yield from _called_by(inner)
    elif value.HasField("list"):
        for func in value.list.func:
            yield func.name
            for inner in func.attr.values():
                yield from _called_by(inner)


def check_ops(nodes: Iterable[Any], library: Any) -> None:
    """OpNotAllowed for the first of ``nodes`` (NodeDefs) that may not run, checked with the
    functions of ``library`` (a FunctionDefLibrary) they may call, as the step's nodes are
    (see the module docstring): for any TensorFlow graph about to run, a SavedModel's too."""
    checker = _Checker(library)
    for node in nodes:
        refused = checker.refusal(node)
        if refused is not None:
            raise refused.error(node.name)


def _runnable(graph: proto.GraphDef, topology: Any, plan: _Plan) -> proto.GraphDef:
    """The nodes verification imports, with the functions they may call; OpNotAllowed when
    one of them is not on the list (see the module docstring)."""
    from optrewrite.tf import proto as tf_proto  # noqa: PLC0415

    nodes = graph.node
    checker = _Checker(graph.library)
    if plan.targets:
        keep = plan.cone
        for i in keep:
            refused = checker.refusal(nodes[i])
            if refused is not None:
                raise refused.error(nodes[i].name)
    else:  # nothing runs: import the nodes of allowed ops whose inputs are imported too
        left_out = [i for i, n in enumerate(nodes) if checker.refusal(n) is not None]
        seen = set(left_out)
        while left_out:
            name = nodes[left_out.pop()].name
            for table in (topology.data_consumers, topology.control_consumers):
                for j in table.get(name, ()):
                    if j not in seen:
                        seen.add(j)
                        left_out.append(j)
        keep = [i for i in range(len(nodes)) if i not in seen]
    out = tf_proto.GraphDef()
    out.versions.CopyFrom(graph.versions)
    for i in keep:
        node = out.node.add()
        node.CopyFrom(nodes[i])
        node.device = ""
        if "_class" in node.attr:
            del node.attr["_class"]
    reached = checker.reached()
    for function in graph.library.function:
        if function.signature.name in reached:
            out.library.function.add().CopyFrom(function)
    for gradient in graph.library.gradient:
        if gradient.function_name in reached:
            out.library.gradient.add().CopyFrom(gradient)
    return out


def verify_graph(path: Path, like: Path, raw: bytes, *, seed: int, timeout_s: float) -> str:
    """Run one step of the TensorFlow graph ``raw`` (read from ``path``, encoded as ``like``
    names) on values generated from ``seed``; a one-line summary.

    Raises OpNotAllowed when the step would run an op that is not on the list,
    VerificationFailed when the graph cannot be loaded, imported or run, or the step runs
    past ``timeout_s``; InputError when TensorFlow is not installed.
    """
    from optrewrite.tf import io as tf_io  # noqa: PLC0415

    try:
        loaded = tf_io.load(like, raw)
    except InputError as exc:
        raise failed(f"cannot load the graph: {exc}") from None
    plan = _plan(loaded.graph, loaded.topology)
    graph = _runnable(loaded.graph, loaded.topology, plan)
    if importlib.util.find_spec("tensorflow") is None:
        raise InputError("verifying a TensorFlow graph needs TensorFlow: pip install tensorflow-cpu (in a checkout: pip install '.[tf]')")
    request = {
        "graph": graph.SerializeToString(), "targets": plan.targets, "variables": plan.variables,
        "placeholders": plan.placeholders, "why_nothing": plan.why_nothing, "seed": seed, "timeout_s": timeout_s,
    }  # fmt: skip
    return str(run_isolated(__name__, "run_step", request, timeout_s=timeout_s))


# ------------------------------------------------------------------ in the verification process


def prepare() -> str:
    """Import TensorFlow quietly and with reproducible CPU kernels; its name and version.

    It also touches the lazily loaded parts of the API :func:`run_step` uses, so that they
    are imported once here rather than in every child. It builds no graph and creates no
    session: a ``tf.Graph`` starts a thread (``tf_graph_runner``) that a forked child would
    not have, so TensorFlow starts no thread of its own here before the fork.
    """
    import numpy.random  # noqa: F401, PLC0415

    tf = _import_tf()
    v1 = tf.compat.v1
    for api in (v1.GraphDef, v1.import_graph_def, v1.placeholder, v1.assign, v1.Session, v1.ConfigProto,
                v1.RunOptions, tf.raw_ops.AssignVariableOp, tf.raw_ops.ReadVariableOp, tf.identity,
                tf.name_scope, tf.as_dtype, tf.errors.DeadlineExceededError):  # fmt: skip
        assert api is not None
    return f"TensorFlow {tf.__version__}"


def _import_tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # same reduction order every run
    import tensorflow as tf  # noqa: PLC0415

    tf.get_logger().setLevel("ERROR")
    return tf


def _import(tf: Any, serialized: bytes, names: list[str]) -> tuple[Any, dict[str, Any]]:
    """A ``tf.Graph`` holding the serialized GraphDef, and the operations ``names`` of it.

    ``import_graph_def`` makes a Python ``Operation`` for every node (about 130 µs each: 9 s
    for 70k nodes); TensorFlow's C import, which it calls, makes none, and a session runs the
    C graph. So the graph is imported through the C API, asking back only the operations
    the run names; where that API is not as expected, through ``import_graph_def``.
    """
    graph = tf.Graph()
    try:
        from tensorflow.python.client import pywrap_tf_session as c_api  # noqa: PLC0415
        from tensorflow.python.framework import c_api_util  # noqa: PLC0415

        wrap = graph._create_op_from_tf_operation  # noqa: SLF001
        options = c_api.TF_NewImportGraphDefOptions()
    except (ImportError, AttributeError):
        with graph.as_default():
            tf.compat.v1.import_graph_def(tf.compat.v1.GraphDef.FromString(serialized), name="")
        return graph, {name: graph.get_operation_by_name(name) for name in names}
    try:
        unique = list(dict.fromkeys(names))
        for name in unique:
            c_api.TF_ImportGraphDefOptionsAddReturnOperation(options, name)
        with c_api_util.tf_buffer(serialized) as buffer, graph._c_graph.get() as c_graph:  # noqa: SLF001
            results = c_api.TF_GraphImportGraphDefWithResults(c_graph, buffer, options)
            returned = c_api.TF_ImportGraphDefResultsReturnOperations(results)
    finally:
        c_api.TF_DeleteImportGraphDefOptions(options)
    return graph, {name: wrap(c_op) for name, c_op in zip(unique, returned)}


def _error(what: str, exc: BaseException, names: Any) -> VerificationFailed:
    """A one-line failure from a TensorFlow exception: the node and op it reports (when the
    graph has that node), the exception's class and a phrase of ours; never its text."""
    node = getattr(exc, "node_def", None) or getattr(exc, "op", None)
    text = str(getattr(exc, "message", None) or exc)
    name = named([getattr(node, "name", "") or "", *re.findall(r"\{\{node ([^}]+)\}\}", text),
                  *re.findall(r"node '([^']+)'", text), *re.findall(r"\bnode (\S+?)[:,.]?(?:\s|$)", text)],
                 names)  # fmt: skip
    op = names.get(name, "") if name else ""
    where = f" at node {quoted(name)} ({op})" if name else ""
    phrase = reason(_TRACE.sub("", text), _PHRASES)
    return failed(f"{what}{where}: {type(exc).__name__}" + (f": {phrase}" if phrase else ""))


def run_step(request: dict[str, Any]) -> str:
    """Import the checked graph and run its step (see the module docstring); the summary."""
    start = time.monotonic()
    timeout_s = float(request["timeout_s"])
    tf = _import_tf()
    runtime = f"TensorFlow {tf.__version__}"
    graph_def = tf.compat.v1.GraphDef.FromString(request.pop("graph"))
    names = {n.name: n.op for n in graph_def.node}
    for function in graph_def.library.function:
        names.update((n.name, n.op) for n in function.node_def)
    rng = np.random.default_rng(request["seed"])
    # The ops that set and read the variables are added to the GraphDef before it is imported
    # (as NodeDefs: thousands of variables would cost seconds through the Python API). Every
    # node that takes a variable directly (and so everything that reads or writes one) waits
    # for ``assign_all``, so the run of the targets sets them first; a second run reads them.
    # (Reads that waited for the targets in the same run would die with any target that a
    # v1 cond leaves dead — a branch not taken — and a dead fetch fails the run.)
    prefix = "optrewrite_verify"
    while any(n == prefix or n.startswith(prefix + "/") for n in names):
        prefix += "_"
    reads: list[str] = []  # the read nodes, one per variable
    before: list[np.ndarray] = []  # the values assigned
    if request["targets"]:
        variables = {v[0] for v in request["variables"]}
        for node in graph_def.node:
            if any((i[1:] if i[0] == "^" else i.partition(":")[0]) in variables for i in node.input):
                node.input.append(f"^{prefix}/assign_all")
        assign_all = graph_def.node.add(name=f"{prefix}/assign_all", op="NoOp")
        for k, (name, resource, dtype_enum, shape) in enumerate(request["variables"]):
            dtype = tf.as_dtype(dtype_enum).base_dtype
            value = generate(rng, tuple(shape), np.dtype(dtype.as_numpy_dtype)) if dtype.is_numpy_compatible else None
            if value is None:
                raise failed(f"variable {quoted(name)}: cannot generate values of type {dtype.name}")
            const = graph_def.node.add(name=f"{prefix}/value_{k}", op="Const")
            const.attr["dtype"].type = dtype.as_datatype_enum
            const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
            before.append(value)
            assign = graph_def.node.add(name=f"{prefix}/assign_{k}", input=[name, const.name])
            read = graph_def.node.add(name=f"{prefix}/read_{k}", input=[name])
            if resource:
                assign.op, read.op = "AssignVariableOp", "ReadVariableOp"
                assign.attr["dtype"].type = read.attr["dtype"].type = dtype.as_datatype_enum
            else:
                assign.op, read.op = "Assign", "Identity"
                assign.attr["T"].type = read.attr["T"].type = dtype.as_datatype_enum
                assign.attr["validate_shape"].b = False
            assign_all.input.append(f"^{assign.name}")
            reads.append(read.name)
    wanted = [*request["targets"], *reads, *(p[0] for p in request["placeholders"])]
    try:
        graph, ops = _import(tf, graph_def.SerializeToString(), wanted)
    except Exception as exc:  # noqa: BLE001 - whatever the runtime rejects is the finding
        raise _error(f"{runtime} cannot import the graph", exc, names) from None
    del graph_def  # the imported graph holds the nodes now; the run needs the memory
    if not request["targets"]:
        return f"loaded in {runtime}; {request['why_nothing']}, nothing run"
    feed: dict[Any, np.ndarray] = {}
    for name, dtype_enum, shape in request["placeholders"]:
        dtype = tf.as_dtype(dtype_enum)
        value = generate(rng, tuple(shape), np.dtype(dtype.as_numpy_dtype)) if dtype.is_numpy_compatible else None
        if value is None:
            raise failed(f"placeholder {quoted(name)}: cannot generate values of type {dtype.name}")
        feed[ops[name].outputs[0]] = value
    targets = [ops[name] for name in request["targets"]]
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=1, inter_op_parallelism_threads=1,
        allow_soft_placement=True, device_count={"GPU": 0},
    )  # fmt: skip

    def options() -> Any:  # the session's deadline: what is left of timeout_s
        left = timeout_s - (time.monotonic() - start)
        return tf.compat.v1.RunOptions(timeout_in_ms=max(1, int(left * 1000)))

    def late() -> VerificationFailed:
        return failed(f"{runtime}: the step did not finish in {timeout_s:g} s (waiting on a queue or reader?)")

    with tf.compat.v1.Session(graph=graph, config=config) as session:
        try:
            session.run(targets, feed_dict=feed, options=options())
            values = session.run([ops[r].outputs[0] for r in reads], options=options())
        except tf.errors.DeadlineExceededError:
            raise late() from None
        except Exception as exc:  # noqa: BLE001
            failing = getattr(getattr(exc, "node_def", None), "name", "") or getattr(getattr(exc, "op", None), "name", "")
            what = ("cannot set the variables" if failing.startswith(f"{prefix}/assign_") else
                    "cannot read the variables after the step" if failing.startswith(f"{prefix}/read_") else
                    "step failed")
            raise _error(f"{runtime} {what}", exc, names) from None
        after = [np.array(v, copy=True) for v in values]
    changed = sum(not same(a, b) for a, b in zip(before, after))
    finite, total = count_finite(after)
    main = next((t for t in request["targets"] if ops[t].type not in _READ_OPS),
                request["targets"][0])  # fmt: skip
    shown = repr(main) + (f" and {len(request['targets']) - 1} more" if len(request["targets"]) > 1 else "")
    summary = f"ran one step ({shown}) in {runtime}: {changed} of {total} variables changed"
    if finite < total:
        summary += f", {total - finite} not finite"
    return summary
