"""Verifying an ONNX model: run it once on generated inputs.

The model runs in onnxruntime's CPU provider, every graph input that is not an initializer
fed and every output fetched; a model that still holds ``ai.onnx.preview.training`` ops,
which onnxruntime does not implement, runs in ``onnx.reference.ReferenceEvaluator`` instead
(after strict type and shape inference, since the evaluator checks no types of training
ops). External data is resolved beside ``path``. The summary counts the outputs whose values
are all finite.

Values are generated as :mod:`optrewrite.verify` describes; an unknown dimension (a
dim_param) is :data:`UNKNOWN_DIM`, and the step counters, fed 1, are the integer inputs that
are an int64 scalar or are named like ``step`` or ``T``. onnx and onnxruntime are imported
only by :func:`verify_graph`; onnxruntime is imported with ``ORT_DISABLE_TELEMETRY=1``
(unless set otherwise): version 1.31 on Linux otherwise writes telemetry state to
``$TMPDIR`` and ``~/.cache`` on import. Nothing is written.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from optrewrite.errors import InputError
from optrewrite.verify import Budget, VerificationFailed, count_finite, failed, first_line, generate, sentence

UNKNOWN_DIM = 1  # the size of a dimension without a dim_value
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_ORT_NODE = re.compile(r"running (\S+) node\. Name:'([^']*)' Status Message: (?:\S+:\d+ .*? was false\.\s*)?(.*)")
_STEP_NAME = re.compile(r"(^|[/_.:])(t|step|steps|iter|iters|iteration|global_step|step_count)$", re.IGNORECASE)


def _has_preview_ops(graph: Any) -> bool:
    """Whether a graph (or function), or a subgraph of one of its nodes, holds a preview training op."""
    from optrewrite.onnx.graph import PREVIEW_DOMAIN, subgraphs  # noqa: PLC0415

    for node in graph.node:
        if node.domain == PREVIEW_DOMAIN:
            return True
        if any(_has_preview_ops(sub) for sub in subgraphs(node)):
            return True
    return False


def _feed(model: Any, seed: int) -> dict[str, np.ndarray]:
    """Generated values for every graph input that no initializer gives."""
    from onnx import helper  # noqa: PLC0415

    graph = model.graph
    initialized = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    budget = Budget()
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
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
        value = generate(rng, shape, dtype, step=step)
        if value is None:
            raise failed(f"input {name!r}: cannot generate values of type {dtype}")
        feed[name] = value
    return feed


def _ort_error(what: str, exc: Exception) -> VerificationFailed:
    """A one-line failure from an onnxruntime exception, naming the node it reports."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    text = _ORT_PREFIX.sub("", text)
    found = _ORT_NODE.search(text)
    if found:
        op, name, detail = found.groups()
        return failed(f"{what} at node {name!r} ({op}): {sentence(detail)}")
    return failed(f"{what}: {sentence(text)}")


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
    data; ``like`` names it in messages) once on inputs generated from ``seed``; a one-line
    summary. ``timeout_s`` is not used: a model waits on nothing.

    Raises VerificationFailed when the model cannot be loaded or run; InputError when onnx
    or onnxruntime is not installed.
    """
    try:
        from optrewrite.onnx import io as onnx_io  # noqa: PLC0415
    except ImportError:
        raise InputError("verifying an ONNX model needs onnx and onnxruntime: pip install 'optrewrite[onnx]'") from None
    try:
        model = onnx_io.load(like, raw).model
    except InputError as exc:
        raise failed(f"cannot load the model: {exc}") from None
    feed = _feed(model, seed)
    preview = _has_preview_ops(model.graph) or any(_has_preview_ops(f) for f in model.functions)
    if preview:
        import onnx  # noqa: PLC0415
        from onnx.reference import ReferenceEvaluator  # noqa: PLC0415

        runtime = f"onnx.reference {onnx.__version__} (preview training ops)"
        try:  # the evaluator checks no types of training ops: strict inference does
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        except Exception as exc:  # noqa: BLE001
            raise failed(f"{runtime}: the model fails strict type and shape inference: "
                         f"{type(exc).__name__}: {first_line(str(exc))}") from None
        try:
            outputs = ReferenceEvaluator(str(path), new_ops=_reference_ops()).run(None, feed)
        except Exception as exc:  # noqa: BLE001 - whatever the evaluator rejects is the finding
            raise failed(f"{runtime} step failed: {type(exc).__name__}: {first_line(str(exc))}") from None
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
    finite, total = count_finite(outputs)
    return f"ran one step in {runtime}: {finite} of {total} outputs finite"
