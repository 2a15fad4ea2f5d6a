"""Verifying a TensorFlow graph: import it and run one training step on generated data.

The graph (GraphDef or MetaGraphDef, binary or text) is parsed by
:func:`optrewrite.tf.io.load`, its device fields are cleared, and it is imported into a
fresh ``tf.Graph`` and run in a single-threaded CPU ``tf.compat.v1.Session``. *One step* is
one ``Session.run`` of the last nodes downstream of an optimizer update — an op of
``optrewrite/tf/update_ops.json``, a state write under an ``update_<var>`` scope (a
decomposed update), or a call of a function holding either — that no file-writing op
(Save/Restore, summaries, debug dumps, a ``PrintV2`` to a file) precedes, and whose
consumers, if any, all come after one: normally the train op (a sink); the update ops
themselves when everything after them also saves a checkpoint. Nothing that writes files
is run. A graph without an update that may run is loaded, nothing is run, and the summary
says so (it is not a failure). Every variable the step reads or writes (``VariableV2``,
``Variable``, ``VarHandleOp``) is given generated values by assign ops added to the
imported graph (the graph's own initializers, and so its lookup tables, are not run), and
is read before and after the step; the summary counts those that changed. Every
``Placeholder`` the step needs is fed. A step that waits longer than ``timeout_s`` (on an
empty queue, say) fails.

Values are generated as :mod:`optrewrite.verify` describes; an unknown dimension is
:data:`UNKNOWN_DIM`. TensorFlow is imported only by :func:`verify_graph`, and nothing is
written, except that ``import tensorflow`` loads Keras 3, which creates its default
``~/.keras/keras.json`` where none exists.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from optrewrite.errors import InputError
from optrewrite.tf.sites import UPDATE_OPS, VARIABLE_OPS, WRITE_OPS, is_update_scope
from optrewrite.verify import Budget, VerificationFailed, count_finite, failed, first_line, generate, same

if TYPE_CHECKING:
    from optrewrite.tf import proto

UNKNOWN_DIM = 2  # the size of a dimension of unknown size (-1)
# Ops that write files (checkpoints, event files, debug dumps), besides every *Summary op;
# a target downstream of one is not run.
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
# TensorFlow 2 wraps a step's error in lines about where the node was defined.
_TF_NOISE = re.compile(r"Graph execution error:|Detected at node|Node: '|\[\[|Original stack trace")


@dataclass(frozen=True)
class _Plan:
    """What to run: targets, the variables and placeholders they reach, from the proto alone."""

    targets: list[str]
    variables: list[tuple[str, bool, int, tuple[int, ...]]]  # name, resource, dtype enum, shape
    placeholders: list[tuple[str, int, tuple[int, ...]]]  # name, dtype enum, shape
    why_nothing: str | None  # when there are no targets


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
    updates = [i for i, n in enumerate(nodes) if _is_update(n) or any(f in updating for f in _node_funcs(n))]
    # The step: the last nodes after an update that no file write precedes; their consumers
    # are all after a file write (or there are none).
    runnable = downstream(updates) - downstream(
        i for i, n in enumerate(nodes) if _writes_files(n) or any(f in writing for f in _node_funcs(n))
    )
    targets = [
        i for i in sorted(runnable)
        if not any(j in runnable for table in consumers for j in table.get(nodes[i].name, ()))
    ]  # fmt: skip
    if not targets:
        why = "no optimizer update found" if not updates else "every optimizer update comes after an op that writes files"
        return _Plan([], [], [], why)

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
    return _Plan([nodes[i].name for i in targets], variables, placeholders, None)


def _error(what: str, exc: Exception) -> VerificationFailed:
    """A one-line failure from a TensorFlow exception, naming the node it reports."""
    node = getattr(exc, "node_def", None) or getattr(exc, "op", None)
    name, op = getattr(node, "name", ""), getattr(node, "op", "") or getattr(node, "type", "")
    text = getattr(exc, "message", None) or str(exc)
    if not name:
        found = re.search(r"\{\{node ([^}]+)\}\}", text)
        name = found.group(1) if found else ""
    where = f" at node {name!r}" + (f" ({op})" if isinstance(op, str) and op else "") if name else ""
    return failed(f"{what}{where}: {type(exc).__name__}: {first_line(text, _TF_NOISE)}")


def _import_tf() -> Any:
    """Import TensorFlow quietly and with reproducible CPU kernels; InputError where it is missing."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # same reduction order every run
    try:
        import tensorflow as tf  # noqa: PLC0415
    except ImportError:
        raise InputError("verifying a TensorFlow graph needs TensorFlow: pip install 'optrewrite[tf]'") from None
    tf.get_logger().setLevel("ERROR")
    return tf


def verify_graph(path: Path, like: Path, raw: bytes, *, seed: int, timeout_s: float) -> str:
    """Run one step of the TensorFlow graph ``raw`` (read from ``path``, encoded as ``like``
    names) on values generated from ``seed``; a one-line summary.

    Raises VerificationFailed when the graph cannot be loaded, imported or run, or the step
    waits longer than ``timeout_s``; InputError when TensorFlow is not installed.
    """
    from optrewrite.tf import io as tf_io  # noqa: PLC0415

    try:
        loaded = tf_io.load(like, raw)
    except InputError as exc:
        raise failed(f"cannot load the graph: {exc}") from None
    plan = _plan(loaded.graph, loaded.topology)
    tf = _import_tf()
    runtime = f"TensorFlow {tf.__version__}"
    graph_def = tf.compat.v1.GraphDef.FromString(loaded.graph.SerializeToString())
    for node in graph_def.node:
        node.device = ""
    graph = tf.Graph()
    with graph.as_default():
        try:
            tf.compat.v1.import_graph_def(graph_def, name="")
        except Exception as exc:  # noqa: BLE001 - whatever the runtime rejects is the finding
            raise _error(f"{runtime} cannot import the graph", exc) from None
        if not plan.targets:
            return f"loaded in {runtime}; {plan.why_nothing}, nothing run"
        rng = np.random.default_rng(seed)
        init_feed: dict[Any, np.ndarray] = {}
        assigns, reads = [], []
        with tf.name_scope("optrewrite_verify"):
            for name, resource, dtype_enum, shape in plan.variables:
                dtype = tf.as_dtype(dtype_enum)
                value = generate(rng, shape, np.dtype(dtype.as_numpy_dtype)) if dtype.is_numpy_compatible else None
                if value is None:
                    raise failed(f"variable {name!r}: cannot generate values of type {dtype.name}")
                handle = graph.get_tensor_by_name(f"{name}:0")
                ph = tf.compat.v1.placeholder(dtype, shape)
                init_feed[ph] = value
                if resource:
                    assigns.append(tf.raw_ops.AssignVariableOp(resource=handle, value=ph))
                    reads.append(tf.raw_ops.ReadVariableOp(resource=handle, dtype=dtype))
                else:
                    assigns.append(tf.compat.v1.assign(handle, ph, validate_shape=False))
                    reads.append(tf.identity(handle))
        feed: dict[str, np.ndarray] = {}
        for name, dtype_enum, shape in plan.placeholders:
            dtype = tf.as_dtype(dtype_enum)
            value = generate(rng, shape, np.dtype(dtype.as_numpy_dtype)) if dtype.is_numpy_compatible else None
            if value is None:
                raise failed(f"placeholder {name!r}: cannot generate values of type {dtype.name}")
            feed[f"{name}:0"] = value
        targets = [graph.get_operation_by_name(name) for name in plan.targets]
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=1, inter_op_parallelism_threads=1,
        allow_soft_placement=True, device_count={"GPU": 0},
    )  # fmt: skip
    options = tf.compat.v1.RunOptions(timeout_in_ms=max(1, int(timeout_s * 1000)))
    with tf.compat.v1.Session(graph=graph, config=config) as session:
        try:
            session.run(assigns, feed_dict=init_feed, options=options)
            before = [np.array(v, copy=True) for v in session.run(reads, options=options)]
        except Exception as exc:  # noqa: BLE001
            raise _error(f"{runtime} cannot set the variables", exc) from None
        try:
            session.run(targets, feed_dict=feed, options=options)
        except tf.errors.DeadlineExceededError:
            raise failed(f"{runtime}: the step did not finish in {timeout_s:g} s (waiting on a queue or reader?)") from None
        except Exception as exc:  # noqa: BLE001
            raise _error(f"{runtime} step failed", exc) from None
        try:
            after = [np.array(v, copy=True) for v in session.run(reads, options=options)]
        except Exception as exc:  # noqa: BLE001
            raise _error(f"{runtime} cannot read the variables after the step", exc) from None
    changed = sum(not same(a, b) for a, b in zip(before, after))
    finite, total = count_finite(after)
    main = next((t for t in plan.targets if graph.get_operation_by_name(t).type not in _READ_OPS), plan.targets[0])
    shown = repr(main) + (f" and {len(plan.targets) - 1} more" if len(plan.targets) > 1 else "")
    summary = f"ran one step ({shown}) in {runtime}: {changed} of {total} variables changed"
    if finite < total:
        summary += f", {total - finite} not finite"
    return summary
