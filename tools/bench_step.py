"""Benchmark what each guard and clip costs a training step, on TensorFlow CPU and onnxruntime CPU.

The step: 64 weights [256, 256] and 64 biases [256] under Adam, the update alone (the worst
case for the overhead: the optimizer is the whole step).

* **TensorFlow**: a ``tf.compat.v1`` graph of resource variables under AdamOptimizer
  (``ResourceApplyAdam``); each gradient is a constant variable times a scalar placeholder
  ``mask`` (1: a step with gradients, 0: every gradient exactly zero), run in a Session with
  one intra-op and one inter-op thread.
* **onnxruntime**: ``tools/bench_onnx.py``'s update step (an ai.onnx.preview.training Adam,
  the gradients fed), lowered (``lower: true``) in every variant, CPUExecutionProvider with
  one thread.

Variants, each a spec (added to ``lower: true`` on ONNX), all times a ratio to the step of
the unrewritten graph (TensorFlow) or the lowered one (ONNX), measured interleaved in one
run (rotating order), median of ``--runs``:

    guard                   guard: {}
    guard nonfinite         guard: {when: nonfinite}
    guard step-wide         guard: {when: zero_or_nonfinite, scope: step}
    guard rows              guard: {granularity: row}
    guard elements          guard: {granularity: element}
    + seed clip, idle       guard, and the original clip with a max_norm no tensor reaches
    + exact clip, idle      guard, and formula: exact with that max_norm (nothing is written)
    + exact clip, active    guard, and formula: exact with max_norm 0.01 (every tensor clipped)
    guard, zero step        the guard's graph on a step whose gradients are all zero

    .venv/bin/python tools/bench_step.py             # a few minutes
    .venv/bin/python tools/bench_step.py --quick     # small sizes: a smoke run
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

IDLE = 1.0e6  # a max_norm no tensor of the step reaches
VARIANTS = {  # name -> (spec body, all-zero gradients)
    "plain": ("", False),
    "guard": ("guard: {}\n", False),
    "guard nonfinite": ("guard: {when: nonfinite}\n", False),
    "guard step-wide": ("guard: {when: zero_or_nonfinite, scope: step}\n", False),
    "guard rows": ("guard: {granularity: row}\n", False),
    "guard elements": ("guard: {granularity: element}\n", False),
    "+ seed clip, idle": (f"guard: {{}}\nclip:\n  - {{variables: ['*'], max_norm: {IDLE}}}\n", False),
    "+ exact clip, idle": (f"guard: {{}}\nclip:\n  - {{variables: ['*'], max_norm: {IDLE}, formula: exact}}\n", False),
    "+ exact clip, active": ("guard: {}\nclip:\n  - {variables: ['*'], max_norm: 0.01, formula: exact}\n", False),
    "guard, zero step": ("guard: {}\n", True),
}


def _spec(work: Path, name: str, body: str, *, lower: bool) -> Path | None:
    text = body + ("lower: true\n" if lower else "")
    if not text:
        return None
    path = work / f"{name.replace(' ', '_').replace(',', '').replace('+', 'plus')}.yaml"
    path.write_text("version: 1\n" + text)
    return path


def _time(runners: dict[str, Callable[[], Any]], runs: int, warmup: int) -> dict[str, float]:
    """Median ms of each runner, run interleaved in rotating order after ``warmup`` runs each."""
    order = list(runners)
    for name in order:
        for _ in range(warmup):
            runners[name]()
    times: dict[str, list[float]] = {name: [] for name in order}
    for k in range(runs):
        shift = k % len(order)
        for name in order[shift:] + order[:shift]:
            start = time.perf_counter()
            runners[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


# --------------------------------------------------------------------------- TensorFlow


def tf_graph(path: Path, layers: int, width: int) -> Path:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        mask = tf.compat.v1.placeholder(tf.float32, [], name="mask")
        pairs = []
        for i in range(layers):
            for name, shape in ((f"layer{i:02d}/W", (width, width)), (f"layer{i:02d}/b", (width,))):
                var = tf.compat.v1.get_variable(name, initializer=rng.normal(0, 0.05, shape).astype(np.float32),
                                                use_resource=True)
                grad = tf.compat.v1.get_variable(f"grad/{name}", initializer=rng.normal(0, 1e-2, shape).astype(
                    np.float32), use_resource=True, trainable=False)
                pairs.append((grad.read_value() * mask, var))
        tf.compat.v1.train.AdamOptimizer(1e-3).apply_gradients(pairs, name="train")
        tf.compat.v1.global_variables_initializer()
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def measure_tf(work: Path, layers: int, width: int, runs: int, warmup: int) -> dict[str, float]:
    import tensorflow as tf

    from optrewrite.api import rewrite_file

    src = tf_graph(work / "tf_step.pb", layers, width)
    sessions, runners = [], {}
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    for name, (body, zero) in VARIANTS.items():
        spec = _spec(work, name, body, lower=False)
        path = src
        if spec is not None:
            path = work / f"tf_{spec.stem}.pb"
            rewrite_file(src, spec, output=path)
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.import_graph_def(tf.compat.v1.GraphDef.FromString(path.read_bytes()), name="")
        sess = tf.compat.v1.Session(graph=graph, config=config)
        sess.run(graph.get_operation_by_name("init"))
        train = graph.get_operation_by_name("train")
        feed = {graph.get_tensor_by_name("mask:0"): 0.0 if zero else 1.0}
        sessions.append(sess)
        runners[name] = lambda sess=sess, train=train, feed=feed: sess.run(train, feed)
    try:
        return _time(runners, runs, warmup)
    finally:
        for sess in sessions:
            sess.close()


# --------------------------------------------------------------------------- onnxruntime


def measure_onnx(work: Path, layers: int, width: int, runs: int, warmup: int) -> dict[str, float]:
    import onnxruntime as ort

    from bench_onnx import _feeds, _save, build_step_model  # type: ignore[import-not-found]
    from optrewrite.api import rewrite_file

    model = build_step_model(layers, width, 8, fwd_bwd=False)
    src = _save(model, work / "onnx_step.onnx")
    feeds = {zero: _feeds(model, zero_grads=zero) for zero in (False, True)}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    runners = {}
    for name, (body, zero) in VARIANTS.items():
        spec = _spec(work, name, body, lower=True)
        assert spec is not None
        path = work / f"onnx_{spec.stem}.onnx"
        rewrite_file(src, spec, output=path)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        runners[name] = lambda session=session, feed=feeds[zero]: session.run(None, feed)
    return _time(runners, runs, warmup)


def table(results: dict[str, dict[str, float]]) -> str:
    runtimes = list(results)
    lines = ["| variant | " + " | ".join(f"{r} ms | {r} × plain" for r in runtimes) + " |",
             "|---|" + "--:|--:|" * len(runtimes)]
    for name in VARIANTS:
        cells = []
        for r in runtimes:
            ms = results[r][name]
            cells += [f"{ms:.2f}", f"{ms / results[r]['plain']:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 layers of width 64, few runs: a smoke run")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per variant (default 60, quick 5)")
    args = parser.parse_args()
    layers, width = (4, 64) if args.quick else (64, 256)
    runs = args.runs or (5 if args.quick else 60)
    warmup = 1 if args.quick else 5
    with tempfile.TemporaryDirectory(prefix="optrewrite-bench-step-") as tmp:
        work = Path(tmp)
        results = {"TF": measure_tf(work, layers, width, runs, warmup),
                   "onnxruntime": measure_onnx(work, layers, width, runs, warmup)}
    print(f"{layers} weights [{width}, {width}] + {layers} biases under Adam, update only; "
          f"median of {runs}, 1 thread; load average {os.getloadavg()[0]:.2f}\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
