"""Verifying an ONNX model: run it once on generated inputs.

This process loads the model (:func:`optrewrite.onnx.io.load`), checks it and plans its
inputs; the model runs in a child process (:func:`optrewrite.verify.run_isolated`).

**Checked before anything runs.** Every node — of the graph, of its subgraphs (``If``,
``Loop``, ``Scan`` bodies) and of the model-local functions those nodes call — must be of
one of the standard domains :data:`STANDARD_DOMAINS` or call a model-local function;
anything else is refused with :class:`optrewrite.verify.OpNotAllowed` naming the op and
node. Custom domains are where custom-op libraries plug in; onnxruntime's own contrib ops
(``com.microsoft``) are refused too: no ONNX training step needs them, and none of the
standard domains' ops reads or writes files. External data must lie in the model's
directory.

**In the child.** The model runs in onnxruntime's CPU provider, every graph input that is
not an initializer fed and every output fetched; a model that still holds
``ai.onnx.preview.training`` ops, which onnxruntime does not implement, runs in
``onnx.reference.ReferenceEvaluator`` instead (after strict type and shape inference, since
the evaluator checks no types of training ops). External data is resolved beside ``path``.
The summary counts the outputs whose values are all finite. Errors name the node and op
(when the model has them), the error's class or onnxruntime's status and a fixed phrase
(:data:`_PHRASES`), never the runtime's text.

Values are generated as :mod:`optrewrite.verify` describes; an unknown dimension (a
dim_param) is :data:`UNKNOWN_DIM`, and the step counters, fed 1, are the integer inputs that
are an int64 scalar or are named like ``step`` or ``T``. onnxruntime is imported only in the
verification process, with ``ORT_DISABLE_TELEMETRY=1`` (unless set otherwise): version 1.31
on Linux otherwise writes telemetry state to ``$TMPDIR`` and ``~/.cache`` on import.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from optrewrite.errors import InputError, quoted
from optrewrite.verify import (
    Budget,
    VerificationFailed,
    count_finite,
    failed,
    generate,
    named,
    not_allowed,
    reason,
    run_isolated,
)

UNKNOWN_DIM = 1  # the size of a dimension without a dim_value
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training")
_ORT_STATUS = re.compile(r"\[ONNXRuntimeError\] : \d+ : (\w+) :")
_ORT_CODES = frozenset({
    "FAIL", "INVALID_ARGUMENT", "NO_SUCHFILE", "NO_MODEL", "ENGINE_ERROR", "RUNTIME_EXCEPTION", "INVALID_PROTOBUF",
    "MODEL_LOADED", "NOT_IMPLEMENTED", "INVALID_GRAPH", "EP_FAIL", "MODEL_LOAD_CANCELED", "MODEL_REQUIRES_COMPILATION",
    "NOT_FOUND",
})  # fmt: skip
_ORT_NODE = re.compile(r"running (\S+) node\. Name:'([^']*)'")
_STEP_NAME = re.compile(r"(^|[/_.:])(t|step|steps|iter|iters|iteration|global_step|step_count)$", re.IGNORECASE)
# What onnxruntime's, onnx's and numpy's errors say, in words of our own (the first pattern
# found wins). The runtime's text is never quoted: it holds values (shapes, indices, data).
_PHRASES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), phrase)
    for pattern, phrase in (
        (r"[Ff]ailed to allocate|bad_alloc|[Oo]ut of memory|MemoryError", "out of memory"),
        (r"cannot be reshaped|[Cc]annot reshape", "the input cannot be reshaped to the requested shape"),
        (r"could not be broadcast|[Bb]roadcast|Incompatible dimensions|shapes? .*(mismatch|do not match|differ)|"
         r"ShapeInferenceError|[Ss]hape mismatch", "the shapes do not match"),
        (r"bound to different types|Type Error|TypeInferenceError|[Tt]ype mismatch|Unexpected input data type|"
         r"type .* (is invalid|does not match)|unsupported type|[Ii]nvalid (tensor )?(data )?type",
         "a type the op does not accept"),
        (r"out of (range|bounds)|[Ii]ndex|indices", "an index is out of range"),
        (r"NOT_IMPLEMENTED|Could not find an implementation|not implemented|No Op registered|"
         r"[Uu]nrecognized|is not a registered function/op", "an op or type the runtime does not implement"),
        (r"[Mm]issing (required )?(input|attribute)|[Rr]equired attribute|attribute .* (missing|not found)",
         "a missing input or attribute"),
        (r"INVALID_GRAPH|[Cc]ycle|topological", "the graph is invalid"),
        (r"INVALID_PROTOBUF|[Pp]rotobuf parsing failed", "the model cannot be parsed"),
    )
)  # fmt: skip


def _has_preview_ops(graph: Any) -> bool:
    """Whether a graph (or function), or a subgraph of one of its nodes, holds a preview training op."""
    from optrewrite.onnx.graph import PREVIEW_DOMAIN, subgraphs  # noqa: PLC0415

    for node in graph.node:
        if node.domain == PREVIEW_DOMAIN:
            return True
        if any(_has_preview_ops(sub) for sub in subgraphs(node)):
            return True
    return False


def _walk(graph: Any, functions: dict[tuple[str, str], Any], seen: set[tuple[str, str]],
          function: str = "") -> Iterator[tuple[Any, str]]:
    """Every node ``graph`` may run, with the local function holding it ("" for the model's
    graphs): its nodes, their subgraphs', and the bodies of the local functions they call."""
    from optrewrite.onnx.graph import subgraphs  # noqa: PLC0415

    for node in graph.node:
        yield node, function
        for sub in subgraphs(node):
            yield from _walk(sub, functions, seen, function)
        key = (node.domain, node.op_type)
        if key in functions and key not in seen:
            seen.add(key)
            yield from _walk(functions[key], functions, seen, f"{node.domain}:{node.op_type}")


def _check_ops(model: Any) -> None:
    """OpNotAllowed for the first node of a domain that is not standard (see the module docstring)."""
    functions = {(f.domain, f.name): f for f in model.functions}
    for node, function in _walk(model.graph, functions, set()):
        if node.domain in STANDARD_DOMAINS or (node.domain, node.op_type) in functions:
            continue
        where = f" in function {quoted(function)}" if function else ""
        raise not_allowed(f"{node.domain}:{node.op_type}", node.name, where,
                          "verification runs only ops of the standard domains '', ai.onnx, ai.onnx.ml "
                          "and ai.onnx.preview.training")


def _inputs(model: Any) -> list[tuple[str, tuple[int, ...], np.dtype, bool]]:
    """Every graph input that no initializer gives: name, shape, numpy type, step counter."""
    from onnx import helper  # noqa: PLC0415

    graph = model.graph
    initialized = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    budget = Budget()
    inputs = []
    for value_info in graph.input:
        name = value_info.name
        if name in initialized:
            continue
        if value_info.type.WhichOneof("value") != "tensor_type":
            raise failed(f"input {name!r}: only tensor inputs can be generated")
        tensor_type = value_info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else UNKNOWN_DIM for d in tensor_type.shape.dim]
        shape = budget.take(f"input {name!r}", dims)
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        except (KeyError, TypeError, ValueError):
            raise failed(f"input {name!r}: unknown element type {tensor_type.elem_type}") from None
        step = dtype.kind in "iu" and ((dtype == np.int64 and shape == ()) or bool(_STEP_NAME.search(name)))
        if generate(np.random.default_rng(0), (0,), dtype) is None:
            raise failed(f"input {name!r}: cannot generate values of type {dtype}")
        inputs.append((name, shape, dtype, step))
    return inputs


def _feed(inputs: list[tuple[str, tuple[int, ...], np.dtype, bool]], seed: int) -> dict[str, np.ndarray]:
    """Generated values for the inputs :func:`_inputs` lists, in their order."""
    rng = np.random.default_rng(seed)
    feed = {}
    for name, shape, dtype, step in inputs:
        value = generate(rng, tuple(shape), dtype, step=step)
        assert value is not None  # _inputs checked the type
        feed[name] = value
    return feed


def _error(what: str, exc: BaseException, model: Any) -> VerificationFailed:
    """A one-line failure from an onnxruntime, onnx or numpy exception: the node and op it
    reports (when the model has that node), onnxruntime's status or the exception's class,
    and a phrase of ours; never its text."""
    from optrewrite.onnx.graph import subgraphs  # noqa: PLC0415

    text = str(exc)
    ops: dict[str, str] = {}

    def collect(graph: Any) -> None:
        for node in graph.node:
            if node.name:
                ops.setdefault(node.name, node.op_type)
            for sub in subgraphs(node):
                collect(sub)

    collect(model.graph)
    for function in model.functions:
        collect(function)
    candidates = [m.group(2) for m in _ORT_NODE.finditer(text)]
    candidates += re.findall(r"node \(([^()]+)\)", text) + re.findall(r"node name: ([^)\s,]+)", text)
    candidates += re.findall(r"[Nn]ode '([^']+)'", text)
    name = named(candidates, ops)
    status = _ORT_STATUS.match(text)  # onnxruntime's status leads its message: nothing else is taken for one
    kind = status.group(1) if status and status.group(1) in _ORT_CODES else type(exc).__name__
    where = f" at node {quoted(name)} ({ops[name]})" if name else ""
    phrase = reason(text, _PHRASES)
    return failed(f"{what}{where}: {kind}" + (f": {phrase}" if phrase else ""))


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


def verify_graph(path: Path, like: Path, raw: bytes, *, seed: int, timeout_s: float) -> str:
    """Run the ONNX model ``raw`` (read from ``path``, whose directory holds its external
    data; ``like`` names it in messages) once on inputs generated from ``seed``, in a child
    process stopped after ``timeout_s``; a one-line summary.

    Raises OpNotAllowed when the model holds an op of another domain; VerificationFailed when
    the model cannot be loaded or run; InputError when onnx or onnxruntime is not installed.
    """
    try:
        from optrewrite.onnx import io as onnx_io  # noqa: PLC0415
    except ImportError:
        raise InputError("verifying an ONNX model needs onnx and onnxruntime: pip install onnx onnxruntime (in a checkout: pip install '.[onnx]')") from None
    try:
        model = onnx_io.load(like, raw).model
        onnx_io.check_external_files(model, path.parent, like)
    except InputError as exc:
        raise failed(f"cannot load the model: {exc}") from None
    _check_ops(model)
    inputs = _inputs(model)
    preview = _has_preview_ops(model.graph) or any(_has_preview_ops(f) for f in model.functions)
    if not preview and importlib.util.find_spec("onnxruntime") is None:
        raise InputError("verifying an ONNX model needs onnxruntime: pip install onnxruntime (in a checkout: pip install '.[onnx]')")
    request = {
        "path": str(path.resolve()), "like": str(like), "sha256": hashlib.sha256(raw).hexdigest(),
        "inputs": inputs, "seed": seed, "preview": preview,
    }  # fmt: skip
    runtime = "onnx.reference" if preview else None
    return str(run_isolated(__name__, "run_step", request, timeout_s=timeout_s, runtime=runtime))


# ------------------------------------------------------------------ in the verification process


def prepare() -> str:
    """Import onnx, its reference evaluator and onnxruntime (without telemetry) once, for
    every child; onnxruntime's name and version."""
    # onnxruntime 1.31 on Linux writes telemetry state ($TMPDIR/.ses, ~/.cache/Microsoft/...)
    # when imported, unless this is set first.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnx  # noqa: F401, PLC0415
    import onnx.reference  # noqa: F401, PLC0415 - preview training ops run there
    from onnx.reference.ops.aionnx_preview_training import op_adam  # noqa: F401, PLC0415

    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError:
        return "onnxruntime (not installed)"
    return f"onnxruntime {ort.__version__}"


def run_step(request: dict[str, Any]) -> str:
    """Run the checked model once (see the module docstring); the summary."""
    from optrewrite.onnx import io as onnx_io  # noqa: PLC0415

    path = Path(request["path"])
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != request["sha256"]:
        raise failed(f"{path} changed while it was verified")
    model = onnx_io.load(Path(request["like"]), raw).model
    feed = _feed(request["inputs"], request["seed"])
    if request["preview"]:
        import onnx  # noqa: PLC0415
        from onnx.reference import ReferenceEvaluator  # noqa: PLC0415

        runtime = f"onnx.reference {onnx.__version__} (preview training ops)"
        try:  # the evaluator checks no types of training ops: strict inference does
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        except Exception as exc:  # noqa: BLE001
            raise _error(f"{runtime}: the model fails strict type and shape inference", exc, model) from None
        try:
            outputs = ReferenceEvaluator(str(path), new_ops=_reference_ops()).run(None, feed)
        except Exception as exc:  # noqa: BLE001 - whatever the evaluator rejects is the finding
            raise _error(f"{runtime} step failed", exc, model) from None
    else:
        import onnxruntime as ort  # noqa: PLC0415

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
            raise _error(f"{runtime} cannot load the model", exc, model) from None
        try:
            outputs = session.run(None, feed)
        except Exception as exc:  # noqa: BLE001
            raise _error(f"{runtime} step failed", exc, model) from None
    finite, total = count_finite(outputs)
    return f"ran one step in {runtime}: {finite} of {total} outputs finite"
