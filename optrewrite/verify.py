"""Verifying a written graph: load it in its runtime and run one training step on generated data.

**TensorFlow** (GraphDef or MetaGraphDef, binary or text): the graph is parsed by
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

**ONNX**: the model runs in onnxruntime's CPU provider, every graph input that is not an
initializer fed and every output fetched; a model that still holds
``ai.onnx.preview.training`` ops, which onnxruntime does not implement, runs in
``onnx.reference.ReferenceEvaluator`` instead. External data is resolved beside ``path``.
The summary counts the outputs whose values are all finite. onnxruntime is imported with
``ORT_DISABLE_TELEMETRY=1`` (unless set otherwise): version 1.31 on Linux otherwise writes
telemetry state to ``$TMPDIR`` and ``~/.cache`` on import.

**Generated data** (``numpy.random.default_rng(seed)``, tensors in graph order, so a run is
reproducible): floating values uniform in [0.1, 1.0) — positive, so accumulators such as
Adagrad's stay valid, and below 1, so Adam's beta powers do too; integers 0 (valid indices),
except ONNX step counters (an int64 scalar, or an integer input named like ``step`` or
``T``), which are 1 (the first step); booleans False; strings empty. Unknown dimensions
are 2 in TensorFlow, 1 in ONNX (dim_param). A tensor of more than :data:`MAX_ELEMENTS`
elements, all tensors together more than :data:`MAX_TOTAL_ELEMENTS`, or a negative
dimension is refused before anything is allocated.

TensorFlow and onnxruntime are imported only when a graph of theirs is verified. Nothing is
written, except that ``import tensorflow`` loads Keras 3, which creates its default
``~/.keras/keras.json`` where none exists.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from optrewrite.errors import InputError, shorten
from optrewrite.fileio import is_onnx

if TYPE_CHECKING:
    from optrewrite.tf import proto

MAX_ELEMENTS = 2**27  # one generated tensor (512 MiB of float32)
MAX_TOTAL_ELEMENTS = 2**28  # all generated tensors of one run
TF_UNKNOWN_DIM = 2
ONNX_UNKNOWN_DIM = 1
STEP_TIMEOUT_S = 120.0  # a TensorFlow step waiting on an empty queue or reader fails after this
_MAX_MESSAGE = 300

VARIABLE_OPS = frozenset({"VariableV2", "Variable", "VarHandleOp"})
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
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_ORT_NODE = re.compile(r"running (\S+) node\. Name:'([^']*)' Status Message: (?:\S+:\d+ .*? was false\.\s*)?(.*)")
_PREVIEW_DOMAIN = "ai.onnx.preview.training"
_STEP_NAME = re.compile(r"(^|[/_.:])(t|step|steps|iter|iters|iteration|global_step|step_count)$", re.IGNORECASE)


class VerificationFailed(Exception):
    """The graph cannot be loaded or run in its runtime; the message is one short line."""


class TooLargeToVerify(VerificationFailed):
    """The graph may well run, but its data is more than verification generates."""


def verify_file(
    path: Path | str,
    *,
    like: Path | str | None = None,
    seed: int = 0,
    timeout_s: float = STEP_TIMEOUT_S,
) -> str:
    """Load the graph at ``path`` in its runtime and run one step on generated data.

    ``like`` names the format (its suffix and, for TensorFlow, the content decide, as for
    the input of a rewrite); without it ``path``'s name does. Returns a one-line summary.
    Raises VerificationFailed when the graph cannot be loaded or run, and InputError when
    the runtime is not installed. Nothing is written.
    """
    path = Path(path)
    like = Path(like) if like is not None else path
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise VerificationFailed(f"cannot read {path}: {exc.strerror or exc}") from None
    if is_onnx(like):
        return _verify_onnx(path, like, raw, seed)
    return _verify_tf(like, raw, seed, timeout_s)


# ------------------------------------------------------------------------ helpers


def _first_line(text: str, skip: re.Pattern[str] | None = None) -> str:
    """The first informative line of an error message."""
    for line in text.splitlines():
        line = line.strip()
        if line and not (skip and skip.match(line)):
            return _sentence(line)
    return ""


def _sentence(line: str) -> str:
    """A long line cut at its first sentence end."""
    if len(line) > 160:
        end = line.find(". ", 40)
        if end > 0:
            return line[: end + 1]
    return line


def _failed(message: str, kind: type[VerificationFailed] = VerificationFailed) -> VerificationFailed:
    return kind(shorten(" ".join(message.split()), _MAX_MESSAGE))


class _Budget:
    """Counts generated elements; refuses absurd shapes before anything is allocated."""

    def __init__(self) -> None:
        self.total = 0

    def take(self, what: str, shape: Sequence[int]) -> tuple[int, ...]:
        for d in shape:
            if d < 0:
                raise _failed(f"{what}: negative dimension {d} in shape {list(shape)}")
        n = math.prod(shape)
        if n > MAX_ELEMENTS:
            raise _failed(
                f"{what}: shape {list(shape)} has {n} elements; verify generates at most {MAX_ELEMENTS} per tensor",
                TooLargeToVerify,
            )
        self.total += n
        if self.total > MAX_TOTAL_ELEMENTS:
            raise _failed(f"{what}: the generated data would exceed {MAX_TOTAL_ELEMENTS} elements in all",
                          TooLargeToVerify)
        return tuple(shape)


def _generate(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype, *, step: bool = False
) -> np.ndarray | None:
    """Values of ``dtype`` (see the module docstring); None for a type it cannot generate."""
    kind = dtype.kind
    if kind in "fc" or dtype.name == "bfloat16":  # ml_dtypes' bfloat16 is kind "V"
        return rng.uniform(0.1, 1.0, shape).astype(dtype)
    if kind in "iu":
        return np.full(shape, 1 if step else 0, dtype)
    if kind == "b":
        return np.zeros(shape, bool)
    if kind in "OSU":
        return np.full(shape, b"", object)
    return None


def _count_finite(values: Iterable[Any]) -> tuple[int, int]:
    finite = total = 0
    for value in values:
        total += 1
        arr = np.asarray(value)
        if arr.dtype.kind not in "fc" or bool(np.isfinite(arr).all()):
            finite += 1
    return finite, total


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


# ------------------------------------------------------------------------ TensorFlow


@dataclass(frozen=True)
class _TfPlan:
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


def _functions_where(library: Any, holds: Any) -> set[str]:
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
    from optrewrite.tf import sites  # noqa: PLC0415

    if node.op in sites.UPDATE_OPS:
        return True
    scope = node.name.rsplit("/", 1)[0] if "/" in node.name else ""
    return node.op in sites.WRITE_OPS and any(part.startswith("update_") for part in scope.split("/"))


def _writes_files(node: Any) -> bool:
    if node.op in _WRITING_OPS or node.op.endswith(("Summary", "SummaryV2")):
        return True
    if node.op.startswith("Write") and node.op.endswith("Summary"):
        return True
    return node.op == "PrintV2" and node.attr["output_stream"].s.startswith(b"file://")


def _tf_shape(what: str, shape: Any, budget: _Budget) -> tuple[int, ...]:
    if shape.unknown_rank:
        return budget.take(what, ())
    dims = []
    for d in shape.dim:
        if d.size < -1:
            raise _failed(f"{what}: invalid dimension {d.size}")
        dims.append(TF_UNKNOWN_DIM if d.size == -1 else d.size)
    return budget.take(what, dims)


def _tf_plan(graph: proto.GraphDef, topology: Any) -> _TfPlan:
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
        return _TfPlan([], [], [], why)

    index = topology.index
    cone = set(targets)
    stack = list(targets)
    while stack:
        for inp in nodes[stack.pop()].input:
            j = index[inp[1:] if inp[0] == "^" else inp.split(":", 1)[0]]
            if j not in cone:
                cone.add(j)
                stack.append(j)
    budget = _Budget()
    variables = []
    placeholders = []
    for i in sorted(cone):
        node = nodes[i]
        if node.op in VARIABLE_OPS:
            shape = _tf_shape(f"variable {node.name!r}", node.attr["shape"].shape, budget)
            variables.append((node.name, node.op == "VarHandleOp", node.attr["dtype"].type, shape))
        elif node.op == "Placeholder":
            shape = _tf_shape(f"placeholder {node.name!r}", node.attr["shape"].shape, budget)
            placeholders.append((node.name, node.attr["dtype"].type, shape))
    return _TfPlan([nodes[i].name for i in targets], variables, placeholders, None)


def _tf_error(what: str, exc: Exception) -> VerificationFailed:
    node = getattr(exc, "node_def", None) or getattr(exc, "op", None)
    name, op = getattr(node, "name", ""), getattr(node, "op", "") or getattr(node, "type", "")
    text = getattr(exc, "message", None) or str(exc)
    if not name:
        found = re.search(r"\{\{node ([^}]+)\}\}", text)
        name = found.group(1) if found else ""
    where = f" at node {name!r}" + (f" ({op})" if isinstance(op, str) and op else "") if name else ""
    return _failed(f"{what}{where}: {type(exc).__name__}: {_first_line(text, _TF_NOISE)}")


def _import_tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # same reduction order every run
    try:
        import tensorflow as tf  # noqa: PLC0415
    except ImportError:
        raise InputError("verifying a TensorFlow graph needs TensorFlow: pip install 'optrewrite[tf]'") from None
    tf.get_logger().setLevel("ERROR")
    return tf


def _verify_tf(like: Path, raw: bytes, seed: int, timeout_s: float) -> str:
    from optrewrite.tf import io as tf_io  # noqa: PLC0415

    try:
        loaded = tf_io.load(like, raw)
    except InputError as exc:
        raise _failed(f"cannot load the graph: {exc}") from None
    plan = _tf_plan(loaded.graph, loaded.topology)
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
            raise _tf_error(f"{runtime} cannot import the graph", exc) from None
        if not plan.targets:
            return f"loaded in {runtime}; {plan.why_nothing}, nothing run"
        rng = np.random.default_rng(seed)
        init_feed: dict[Any, np.ndarray] = {}
        assigns, reads = [], []
        with tf.name_scope("optrewrite_verify"):
            for name, resource, dtype_enum, shape in plan.variables:
                dtype = tf.as_dtype(dtype_enum)
                value = _generate(rng, shape, np.dtype(dtype.as_numpy_dtype)) if dtype.is_numpy_compatible else None
                if value is None:
                    raise _failed(f"variable {name!r}: cannot generate values of type {dtype.name}")
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
            value = _generate(rng, shape, np.dtype(dtype.as_numpy_dtype)) if dtype.is_numpy_compatible else None
            if value is None:
                raise _failed(f"placeholder {name!r}: cannot generate values of type {dtype.name}")
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
            raise _tf_error(f"{runtime} cannot set the variables", exc) from None
        try:
            session.run(targets, feed_dict=feed, options=options)
        except tf.errors.DeadlineExceededError:
            raise _failed(f"{runtime}: the step did not finish in {timeout_s:g} s (waiting on a queue or reader?)") from None
        except Exception as exc:  # noqa: BLE001
            raise _tf_error(f"{runtime} step failed", exc) from None
        try:
            after = [np.array(v, copy=True) for v in session.run(reads, options=options)]
        except Exception as exc:  # noqa: BLE001
            raise _tf_error(f"{runtime} cannot read the variables after the step", exc) from None
    changed = sum(not _same(a, b) for a, b in zip(before, after))
    finite, total = _count_finite(after)
    main = next((t for t in plan.targets if graph.get_operation_by_name(t).type not in _READ_OPS), plan.targets[0])
    shown = repr(main) + (f" and {len(plan.targets) - 1} more" if len(plan.targets) > 1 else "")
    summary = f"ran one step ({shown}) in {runtime}: {changed} of {total} variables changed"
    if finite < total:
        summary += f", {total - finite} not finite"
    return summary


# ------------------------------------------------------------------------ ONNX


def _has_preview_ops(graph: Any) -> bool:
    from optrewrite.onnx.graph import subgraphs  # noqa: PLC0415

    for node in graph.node:
        if node.domain == _PREVIEW_DOMAIN:
            return True
        if any(_has_preview_ops(sub) for sub in subgraphs(node)):
            return True
    return False


def _onnx_feed(model: Any, seed: int) -> dict[str, np.ndarray]:
    from onnx import helper  # noqa: PLC0415

    graph = model.graph
    initialized = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    budget = _Budget()
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for value_info in graph.input:
        name = value_info.name
        if name in initialized:
            continue
        if value_info.type.WhichOneof("value") != "tensor_type":
            raise _failed(f"input {name!r}: only tensor inputs can be generated")
        tensor_type = value_info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else ONNX_UNKNOWN_DIM for d in tensor_type.shape.dim]
        shape = budget.take(f"input {name!r}", dims)
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        except (KeyError, TypeError, ValueError):
            raise _failed(f"input {name!r}: unknown element type {tensor_type.elem_type}") from None
        step = dtype.kind in "iu" and ((dtype == np.int64 and shape == ()) or bool(_STEP_NAME.search(name)))
        value = _generate(rng, shape, dtype, step=step)
        if value is None:
            raise _failed(f"input {name!r}: cannot generate values of type {dtype}")
        feed[name] = value
    return feed


def _ort_error(what: str, exc: Exception) -> VerificationFailed:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    text = _ORT_PREFIX.sub("", text)
    found = _ORT_NODE.search(text)
    if found:
        op, name, detail = found.groups()
        return _failed(f"{what} at node {name!r} ({op}): {_sentence(detail)}")
    return _failed(f"{what}: {_sentence(text)}")


def _reference_ops() -> list[type]:
    """onnx.reference's Adam with every result in its input's element type.

    onnx 1.23 computes Adam in float64 and returns a one-tensor node's results so (and casts a
    multi-tensor node's to float32, whatever the input type); the next op's type check then
    rejects them. The rewrite gives each guarded tensor a one-tensor node of its own.
    """
    from onnx.reference.ops.aionnx_preview_training.op_adam import Adam as ReferenceAdam  # noqa: PLC0415

    class Adam(ReferenceAdam):  # the evaluator matches new ops by class name
        def _run(self, *data: Any, **attributes: Any) -> tuple[Any, ...]:
            n = (len(data) - 2) // 4
            results = super()._run(*data, **attributes)
            like = [*data[2 : 2 + n], *data[2 + 2 * n : 2 + 4 * n]]  # X, then V and H
            return tuple(np.asarray(r).astype(x.dtype, copy=False) for r, x in zip(results, like))

    return [Adam]


def _verify_onnx(path: Path, like: Path, raw: bytes, seed: int) -> str:
    try:
        from optrewrite.onnx import io as onnx_io  # noqa: PLC0415
    except ImportError:
        raise InputError("verifying an ONNX model needs onnx and onnxruntime: pip install 'optrewrite[onnx]'") from None
    try:
        model = onnx_io.load(like, raw).model
    except InputError as exc:
        raise _failed(f"cannot load the model: {exc}") from None
    feed = _onnx_feed(model, seed)
    preview = _has_preview_ops(model.graph) or any(_has_preview_ops(f) for f in model.functions)
    if preview:
        import onnx  # noqa: PLC0415
        from onnx.reference import ReferenceEvaluator  # noqa: PLC0415

        runtime = f"onnx.reference {onnx.__version__} (preview training ops)"
        try:  # the evaluator checks no types of training ops: strict inference does
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        except Exception as exc:  # noqa: BLE001
            raise _failed(f"{runtime}: the model fails strict type and shape inference: "
                          f"{type(exc).__name__}: {_first_line(str(exc))}") from None
        try:
            outputs = ReferenceEvaluator(str(path), new_ops=_reference_ops()).run(None, feed)
        except Exception as exc:  # noqa: BLE001 - whatever the evaluator rejects is the finding
            raise _failed(f"{runtime} step failed: {type(exc).__name__}: {_first_line(str(exc))}") from None
    else:
        # onnxruntime 1.31 on Linux writes telemetry state ($TMPDIR/.ses, ~/.cache/Microsoft/...)
        # when imported, unless this is set first.
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        try:
            import onnxruntime as ort  # noqa: PLC0415
        except ImportError:
            raise InputError("verifying an ONNX model needs onnxruntime: pip install 'optrewrite[onnx]'") from None
        runtime = f"onnxruntime {ort.__version__}"
        options = ort.SessionOptions()
        options.log_severity_level = 4  # errors come back as exceptions
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"],
                enable_fallback=0,  # the fallback retries on the CPU again, and prints about it
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            raise _ort_error(f"{runtime} cannot load the model", exc) from None
        try:
            outputs = session.run(None, feed)
        except Exception as exc:  # noqa: BLE001
            raise _ort_error(f"{runtime} step failed", exc) from None
    finite, total = _count_finite(outputs)
    return f"ran one step in {runtime}: {finite} of {total} outputs finite"
