"""Benchmark the ONNX rewrite: its cost on a large training graph, and step time on onnxruntime.

**1. Rewrite cost.** A ~200k-node ONNX training step (see :func:`build_training_graph`) is
generated into a temp directory; then, each in a fresh process, median of ``--repeats``
runs with the three tools alternating:

* **floor**: ``onnx.load(path)`` and ``onnx.save(model, out)``, the least any tool that
  rewrites an ONNX file must do;
* **optrewrite**: ``optrewrite.api.rewrite_file(path, spec, output=out, lower=True)``
  (what ``optrewrite IN --spec SPEC -o OUT --lower`` runs), guarding every variable and
  clipping one in ten (the variables of every tenth layer), lowering Adam to standard ops;
  ``rewrite_file`` also runs the onnx checker on the output before it replaces anything;
* **onnx-graphsurgeon**: ``gs.import_onnx(onnx.load(path))`` and
  ``onnx.save(gs.export_onnx(graph), out)``, a round trip through its graph IR with no edit.
  Skipped (with a line saying how to install it) when it cannot be imported; this script
  installs nothing.

Each time is the wall time of the **whole child process** (interpreter start-up, imports
and exit included, for all three alike) and its peak RSS (``ru_maxrss`` from
``resource.getrusage(RUSAGE_CHILDREN)`` in a small timing process, as in ``bench_tf.py``).
Each child also reports the time of its work after its imports and before its exit (the
"work s" column; exit frees the tool's in-memory graph). Ratios are tool / floor.

**2. Step time on onnxruntime** (CPUExecutionProvider, one InferenceSession per graph,
``intra_op_num_threads`` fixed, ``inter_op_num_threads`` 1) of two smaller steps whose
parameters are 64 matrices [256, 256] and 64 biases [256] under one Adam node:

* **update**: the optimizer step alone, the gradients fed as graph inputs (the update's
  cost is the whole step: the worst case for the guard and clip's overhead);
* **fwd+bwd**: a 64-layer ReLU MLP (batch 32): forward, backward in standard ops, then Adam;
  the loss is scaled by a scalar input ``mask`` (a multi-task loss weight), so ``mask = 0``
  makes every gradient exactly zero.

Variants: (a) lowered, nothing guarded (spec ``lower: true``); (b) lowered, every tensor
guarded and clipped to norm 10; (c) graph (b) on a step whose gradients are all zero (zeros
fed, or ``mask = 0``); and, to split (b)'s cost between guard and clip, the graph lowered
with every tensor guarded and nothing clipped, on both steps. After warm-up, the five run
interleaved (rotating order, to cancel drift); each time is the median of many runs. The first run of each checks the outputs'
shapes, that (c) left the Adam states unchanged (the clip still runs), and that (a) and (b)
did not.

    .venv/bin/python tools/bench_onnx.py                 # both parts at full size (a few minutes)
    .venv/bin/python tools/bench_onnx.py --quick         # small sizes: a smoke run
    .venv/bin/python tools/bench_onnx.py --nodes 100000 --json out.json --profile

The children import optrewrite from this checkout (PYTHONPATH), with the running Python.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
for _path in (REPO, TOOLS):  # run from a checkout without installing
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench_tf import Sample, run_measured  # noqa: E402  (the same child-process measurement)

TARGET_NODES = 200_000
QUICK_NODES = 10_000
IR_VERSION = 10  # onnxruntime 1.31 loads IR <= 13; onnx 1.23 would write 14
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.preview.training", 1)]
TRAINING_DOMAIN = "ai.onnx.preview.training"
FLOAT = TensorProto.FLOAT

# The large graph: tiny tensors, so the file is the graph's structure, not its weights.
MICRO_BATCHES = 8  # gradient accumulation, unrolled: forward and backward per micro-batch
BATCH, WIDTH = 2, 4
ADAM_GROUP = 1024  # tensors per Adam node (parameter groups)
NODES_PER_LAYER = 34 * MICRO_BATCHES + 4  # 14 forward + 20 backward per micro-batch, 4 gradient Sums
NODES_FIXED = -5 * MICRO_BATCHES + 2  # the loss (4 a micro-batch, 2), less layer 0's input gradient (9)
REWRITE_SPEC = """\
version: 1
guard: {}                       # every variable
clip:
  - variables: ["layer???0/*"]  # every tenth layer: layer0000/, layer0010/, ...
    max_norm: 1.0
"""

# The step-time models.
STEP_LAYERS, STEP_WIDTH, STEP_BATCH = 64, 256, 32
QUICK_STEP = (4, 64, 8)
STEP_SPECS = {  # graph -> spec
    "a": "version: 1\nlower: true\n",
    "b": "version: 1\nlower: true\nguard: {}\nclip:\n  - variables: ['*']\n    max_norm: 10.0\n",
    "g": "version: 1\nlower: true\nguard: {}\n",
}
VARIANTS = {  # variant -> (graph, all-zero gradients)
    "a": ("a", False), "b": ("b", False), "c": ("b", True),
    "g": ("g", False), "z": ("g", True),  # the guard alone, to split (b)'s cost from the clip's
}


# --------------------------------------------------------------------------- building graphs


class Builder:
    """Nodes, initializers and typed inputs/outputs of one graph; a node's output is its name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []

    def op(self, op_type: str, inputs: Sequence[str], name: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def const(self, name: str, value: Any, dtype: Any = np.float32) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def input(self, name: str, shape: Sequence[int], elem: int = FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def output(self, name: str, shape: Sequence[int], elem: int = FLOAT) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def adam(self, name: str, params: Sequence[str], grads: Sequence[str],
             shapes: dict[str, tuple[int, ...]], r: str, t: str) -> None:
        """One Adam node over ``params``: states ``adam/v/P``, ``adam/h/P`` are graph inputs,
        ``P/new`` and the states' ``/new`` graph outputs."""
        vs = [self.input(f"adam/v/{p}", shapes[p]) for p in params]
        hs = [self.input(f"adam/h/{p}", shapes[p]) for p in params]
        outs = [self.output(f"{x}/new", shapes[p]) for block in (params, vs, hs) for x, p in zip(block, params)]
        self.nodes.append(helper.make_node("Adam", [r, t, *params, *grads, *vs, *hs], outs, name=name,
                                           domain=TRAINING_DOMAIN))

    def model(self, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=OPSETS, producer_name="optrewrite-bench")
        model.ir_version = IR_VERSION
        return model


def _layer_norm_relu_forward(b: Builder, p: str, x: str, layer: str, consts: dict[str, str]) -> dict[str, str]:
    """``out = x + Relu((LayerNorm(x) * gamma + beta) @ W + b)``: 14 nodes."""
    mu = b.op("ReduceMean", [x], f"{p}/ln/mean", axes=[1], keepdims=1)
    xc = b.op("Sub", [x, mu], f"{p}/ln/centered")
    var = b.op("ReduceMean", [b.op("Mul", [xc, xc], f"{p}/ln/square")], f"{p}/ln/var", axes=[1], keepdims=1)
    std = b.op("Sqrt", [b.op("Add", [var, consts["eps"]], f"{p}/ln/var_eps")], f"{p}/ln/std")
    rstd = b.op("Reciprocal", [std], f"{p}/ln/rstd")
    xhat = b.op("Mul", [xc, rstd], f"{p}/ln/xhat")
    y = b.op("Add", [b.op("Mul", [xhat, f"{layer}/gamma"], f"{p}/ln/scaled"), f"{layer}/beta"], f"{p}/ln/out")
    z = b.op("Add", [b.op("MatMul", [y, f"{layer}/W"], f"{p}/dense/matmul"), f"{layer}/b"], f"{p}/dense/out")
    a = b.op("Relu", [z], f"{p}/relu")
    out = b.op("Add", [x, a], f"{p}/residual")
    return {"out": out, "xhat": xhat, "rstd": rstd, "y": y, "z": z}


def _layer_norm_relu_backward(b: Builder, p: str, saved: dict[str, str], dout: str, layer: str,
                              consts: dict[str, str], *, input_grad: bool) -> tuple[str | None, dict[str, str]]:
    """The gradients of the layer's four parameters (11 nodes) and of its input (9 more)."""
    mask = b.op("Cast", [b.op("Greater", [saved["z"], consts["zero"]], f"{p}/relu/active")], f"{p}/relu/mask", to=FLOAT)
    dz = b.op("Mul", [dout, mask], f"{p}/relu/grad")
    db = b.op("ReduceSum", [dz, consts["axes0"]], f"{p}/grad/b", keepdims=0)
    dw = b.op("MatMul", [b.op("Transpose", [saved["y"]], f"{p}/dense/y_t", perm=[1, 0]), dz], f"{p}/grad/W")
    w_t = b.op("Transpose", [f"{layer}/W"], f"{p}/dense/W_t", perm=[1, 0])
    dy = b.op("MatMul", [dz, w_t], f"{p}/dense/grad_in")
    dgamma = b.op("ReduceSum", [b.op("Mul", [dy, saved["xhat"]], f"{p}/ln/grad_scaled"), consts["axes0"]],
                  f"{p}/grad/gamma", keepdims=0)
    dbeta = b.op("ReduceSum", [dy, consts["axes0"]], f"{p}/grad/beta", keepdims=0)
    grads = {"W": dw, "b": db, "gamma": dgamma, "beta": dbeta}
    if not input_grad:
        return None, grads
    dxhat = b.op("Mul", [dy, f"{layer}/gamma"], f"{p}/ln/grad_xhat")
    # LayerNorm: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    m1 = b.op("ReduceMean", [dxhat], f"{p}/ln/grad_mean", axes=[1], keepdims=1)
    m2 = b.op("ReduceMean", [b.op("Mul", [dxhat, saved["xhat"]], f"{p}/ln/grad_proj")], f"{p}/ln/grad_proj_mean",
              axes=[1], keepdims=1)
    t = b.op("Sub", [b.op("Sub", [dxhat, m1], f"{p}/ln/grad_centered"),
                     b.op("Mul", [saved["xhat"], m2], f"{p}/ln/grad_radial")], f"{p}/ln/grad_tangent")
    dx = b.op("Add", [b.op("Mul", [t, saved["rstd"]], f"{p}/ln/grad_in"), dout], f"{p}/grad_in")
    return dx, grads


def layers_for(nodes: int) -> int:
    return max(1, round((nodes - NODES_FIXED) / NODES_PER_LAYER))


def build_training_graph(layers: int) -> onnx.ModelProto:
    """A training step of ``layers`` residual blocks (LayerNorm, Dense, ReLU) under Adam.

    Each layer ``layerNNNN/`` has parameters W [4, 4], b, gamma, beta [4]. The step runs
    8 micro-batches (gradient accumulation, unrolled): each has its own inputs ``x<m>`` and
    ``y<m>`` [2, 4], a forward pass, a squared-error loss and a backward pass written out in
    standard ops (MatMul, Transpose, ReduceSum, ReduceMean, Mul, ...); a parameter's
    gradient is the ``Sum`` of its 8 micro-batch gradients. Adam nodes of up to 1024
    tensors each update the parameters: every parameter, Adam state, ``R`` and ``T`` is a
    typed graph input; the new parameters and states and the loss are graph outputs.
    Deterministic: the same ``layers`` gives the same bytes.
    """
    b = Builder()
    consts = {
        "eps": b.const("const/eps", 1e-5), "zero": b.const("const/zero", 0.0),
        "axes0": b.const("const/axes0", [0], np.int64),
        "loss_grad": b.const("const/loss_grad", 2.0 / (BATCH * WIDTH * MICRO_BATCHES)),
        "mean_mb": b.const("const/mean_micro_batches", 1.0 / MICRO_BATCHES),
    }
    r = b.input("R", [])
    t = b.input("T", [], TensorProto.INT64)
    names = [f"layer{i:04d}" for i in range(layers)]
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in names:
        for param, shape in (("W", (WIDTH, WIDTH)), ("b", (WIDTH,)), ("gamma", (WIDTH,)), ("beta", (WIDTH,))):
            shapes[f"{layer}/{param}"] = shape
            b.input(f"{layer}/{param}", shape)
    grads: dict[str, list[str]] = {p: [] for p in shapes}
    losses = []
    for m in range(MICRO_BATCHES):
        h = b.input(f"x{m}", [BATCH, WIDTH])
        target = b.input(f"y{m}", [BATCH, WIDTH])
        saved = []
        for layer in names:
            s = _layer_norm_relu_forward(b, f"mb{m}/{layer}", h, layer, consts)
            saved.append(s)
            h = s["out"]
        diff = b.op("Sub", [h, target], f"mb{m}/loss/diff")
        losses.append(b.op("ReduceMean", [b.op("Mul", [diff, diff], f"mb{m}/loss/square")], f"mb{m}/loss",
                           keepdims=0))
        d = b.op("Mul", [diff, consts["loss_grad"]], f"mb{m}/loss/grad")
        for i in reversed(range(layers)):
            # the first layer's input gradient would be the data's: not computed, as exporters prune it
            dx, layer_grads = _layer_norm_relu_backward(b, f"mb{m}/{names[i]}", saved[i], d, names[i], consts,
                                                        input_grad=i > 0)
            for param, g in layer_grads.items():
                grads[f"{names[i]}/{param}"].append(g)
            if dx is not None:
                d = dx
    b.op("Mul", [b.op("Sum", losses, "loss/sum"), consts["mean_mb"]], b.output("loss", []))
    summed = {p: b.op("Sum", gs, f"grad/{p}") for p, gs in grads.items()}
    params = list(shapes)
    for k in range(0, len(params), ADAM_GROUP):
        group = params[k:k + ADAM_GROUP]
        b.adam(f"optimizer/adam{k // ADAM_GROUP}", group, [summed[p] for p in group], shapes, r, t)
    return b.model("training_step")


def build_step_model(layers: int, width: int, batch: int, *, fwd_bwd: bool) -> onnx.ModelProto:
    """The step-time model: ``layers`` weights [width, width] and biases [width] under one Adam.

    ``fwd_bwd`` False: the gradients ``grad/P`` are graph inputs. True: a ReLU MLP
    ``h = Relu(h @ W + b)`` on ``x`` [batch, width] with loss ``mask * mean((h - y)^2)``,
    the gradients computed by the graph (zero everywhere when the scalar input ``mask`` is 0).
    """
    b = Builder()
    r = b.input("R", [])
    t = b.input("T", [], TensorProto.INT64)
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(layers):
        shapes[f"layer{i:02d}/W"] = (width, width)
        shapes[f"layer{i:02d}/b"] = (width,)
    for p, shape in shapes.items():
        b.input(p, shape)
    if not fwd_bwd:
        grads = [b.input(f"grad/{p}", shapes[p]) for p in shapes]
    else:
        axes0 = b.const("const/axes0", [0], np.int64)
        zero = b.const("const/zero", 0.0)
        scale = b.const("const/loss_grad", 2.0 / (batch * width))
        h = b.input("x", [batch, width])
        target = b.input("y", [batch, width])
        mask = b.input("mask", [])
        saved = []
        for i in range(layers):
            p = f"layer{i:02d}"
            z = b.op("Add", [b.op("MatMul", [h, f"{p}/W"], f"{p}/matmul"), f"{p}/b"], f"{p}/pre")
            saved.append((h, z))
            h = b.op("Relu", [z], f"{p}/out")
        diff = b.op("Sub", [h, target], "loss/diff")
        loss = b.op("ReduceMean", [b.op("Mul", [diff, diff], "loss/square")], "loss/mean", keepdims=0)
        b.op("Mul", [loss, mask], b.output("loss", []))
        d = b.op("Mul", [b.op("Mul", [diff, scale], "loss/grad_unmasked"), mask], "loss/grad")
        by_param: dict[str, str] = {}
        for i in reversed(range(layers)):
            p = f"layer{i:02d}"
            h_in, z = saved[i]
            active = b.op("Cast", [b.op("Greater", [z, zero], f"{p}/active")], f"{p}/mask", to=FLOAT)
            dz = b.op("Mul", [d, active], f"{p}/grad_pre")
            by_param[f"{p}/b"] = b.op("ReduceSum", [dz, axes0], f"grad/{p}/b", keepdims=0)
            by_param[f"{p}/W"] = b.op("MatMul", [b.op("Transpose", [h_in], f"{p}/in_t", perm=[1, 0]), dz],
                                      f"grad/{p}/W")
            if i:
                w_t = b.op("Transpose", [f"{p}/W"], f"{p}/W_t", perm=[1, 0])
                d = b.op("MatMul", [dz, w_t], f"{p}/grad_in")
        grads = [by_param[p] for p in shapes]
    b.adam("optimizer/adam", list(shapes), grads, shapes, r, t)
    return b.model("fwd_bwd_step" if fwd_bwd else "update_step")


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path


# --------------------------------------------------------------------------- 1. rewrite cost

FLOOR = """\
import time
start = time.perf_counter()
import json, sys
import onnx
imported = time.perf_counter()
model = onnx.load(sys.argv[1])
onnx.save(model, sys.argv[2])
print(json.dumps({"work_s": time.perf_counter() - imported, "import_s": imported - start}))
"""

OPTREWRITE = """\
import time
start = time.perf_counter()
import json, sys
from optrewrite.api import rewrite_file
imported = time.perf_counter()
report = rewrite_file(sys.argv[1], sys.argv[2], output=sys.argv[3], lower=True)
work = time.perf_counter() - imported
print(json.dumps({"work_s": work, "import_s": imported - start, "counts": report.counts(),
                  "nodes_added": report.nodes_added}))
"""

GRAPHSURGEON = """\
import time
start = time.perf_counter()
import json, sys
import onnx
import onnx_graphsurgeon as gs
imported = time.perf_counter()
graph = gs.import_onnx(onnx.load(sys.argv[1]))
onnx.save(gs.export_onnx(graph), sys.argv[2])
print(json.dumps({"work_s": time.perf_counter() - imported, "import_s": imported - start}))
"""

TOOL_LABELS = {
    "floor": "floor: `onnx.load` + `onnx.save`",
    "optrewrite": "optrewrite: guard all, clip 10%, `--lower`",
    "graphsurgeon": "onnx-graphsurgeon: import + export",
}


@dataclass
class ToolRow:
    tool: str
    process_s: float
    work_s: float
    peak_rss_mb: float
    samples_s: list[float]


def _graphsurgeon_version() -> str | None:
    try:
        import onnx_graphsurgeon as gs  # noqa: PLC0415
    except ImportError:
        return None
    return str(getattr(gs, "__version__", "?"))


def _child_json(log: Path) -> dict[str, Any]:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def measure_rewrite(graph: Path, work: Path, repeats: int, with_gs: bool) -> tuple[list[ToolRow], dict[str, Any]]:
    py = sys.executable
    spec = work / "rewrite.yaml"
    spec.write_text(REWRITE_SPEC)
    argv = {
        "floor": [py, "-c", FLOOR, str(graph), str(work / "floor.onnx")],
        "optrewrite": [py, "-c", OPTREWRITE, str(graph), str(spec), str(work / "rewritten.onnx")],
    }
    if with_gs:
        argv["graphsurgeon"] = [py, "-c", GRAPHSURGEON, str(graph), str(work / "graphsurgeon.onnx")]
    graph.read_bytes()  # warm the page cache: the first run should not pay for the disk
    samples: dict[str, list[tuple[Sample, float]]] = {tool: [] for tool in argv}
    rewrite_info: dict[str, Any] = {}
    for k in range(repeats):
        for tool, cmd in argv.items():
            log = work / f"{tool}.log"
            sample = run_measured(cmd, log)
            child = _child_json(log)
            samples[tool].append((sample, child["work_s"]))
            if tool == "optrewrite":
                rewrite_info = child
            print(f"  run {k + 1}/{repeats} {tool}: {sample.wall_s:.2f} s, {sample.peak_rss_mb:.0f} MB",
                  file=sys.stderr)
    rows = [
        ToolRow(tool, statistics.median(s.wall_s for s, _ in got), statistics.median(w for _, w in got),
                statistics.median(s.peak_rss_mb for s, _ in got), [round(s.wall_s, 3) for s, _ in got])
        for tool, got in samples.items()
    ]
    out = onnx.load(str(work / "rewritten.onnx"), load_external_data=False)
    rewrite_info["output_nodes"] = len(out.graph.node)
    rewrite_info["output_bytes"] = (work / "rewritten.onnx").stat().st_size
    return rows, rewrite_info


def rewrite_table(rows: list[ToolRow]) -> str:
    floor = next(r for r in rows if r.tool == "floor")
    lines = [
        "| tool | process s | × floor | work s | peak RSS MB | × floor |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {TOOL_LABELS[r.tool]} | {r.process_s:.2f} | {r.process_s / floor.process_s:.2f}× "
            f"| {r.work_s:.2f} | {r.peak_rss_mb:.0f} | {r.peak_rss_mb / floor.peak_rss_mb:.2f}× |"
        )
    return "\n".join(lines)


def profile_rewrite(graph: Path, work: Path, top: int = 15) -> str:
    """cProfile one rewrite in this process; the top functions by own and by cumulative time."""
    import cProfile  # noqa: PLC0415
    import io  # noqa: PLC0415
    import pstats  # noqa: PLC0415

    from optrewrite.api import rewrite_file  # noqa: PLC0415

    spec = work / "rewrite.yaml"
    spec.write_text(REWRITE_SPEC)
    profiler = cProfile.Profile()
    profiler.enable()
    rewrite_file(graph, spec, output=work / "profiled.onnx", lower=True)
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return text.getvalue()


# --------------------------------------------------------------------------- 2. step time


@dataclass
class StepRow:
    step: str
    threads: int
    params: int
    elements: int
    graph_nodes: dict[str, int]
    median_ms: dict[str, float]
    p10_p90_ms: dict[str, tuple[float, float]]
    runs: int

    @property
    def overhead(self) -> float:
        return self.median_ms["b"] / self.median_ms["a"] - 1

    @property
    def skip_ratio(self) -> float:
        return self.median_ms["c"] / self.median_ms["a"]

    def vs_a(self, variant: str) -> float:
        return self.median_ms[variant] / self.median_ms["a"]


def _feeds(model: onnx.ModelProto, *, zero_grads: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for one step: parameters He-initialised, states small and positive, data random."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        name = vi.name
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if name == "R":
            feeds[name] = np.array(1e-3, np.float32)
        elif name == "T":
            feeds[name] = np.array(5, np.int64)
        elif name == "mask":
            feeds[name] = np.array(0.0 if zero_grads else 1.0, np.float32)
        elif name.startswith("grad/"):
            feeds[name] = (np.zeros(shape, np.float32) if zero_grads
                           else rng.normal(0, 1e-2, shape).astype(np.float32))
        elif name.startswith("adam/v/"):
            feeds[name] = rng.normal(0, 1e-3, shape).astype(np.float32)
        elif name.startswith("adam/h/"):
            feeds[name] = rng.uniform(1e-6, 1e-5, shape).astype(np.float32)
        elif name.startswith("layer"):
            fan_in = shape[0] if len(shape) == 2 else 1
            feeds[name] = (rng.normal(0, math.sqrt(2.0 / fan_in), shape) if len(shape) == 2
                           else rng.normal(0, 1e-2, shape)).astype(np.float32)
        else:  # x, y
            feeds[name] = rng.normal(0, 1, shape).astype(np.float32)
    return feeds


def _check_outputs(sess: Any, outputs: list[np.ndarray], feeds: dict[str, np.ndarray], *, skipped: bool,
                   label: str) -> None:
    """Shapes as fed; on a skipped step the Adam states are unchanged (the parameters are still
    clipped), otherwise every weight matrix and state changed."""
    for meta, value in zip(sess.get_outputs(), outputs):
        if not np.all(np.isfinite(value)):
            raise RuntimeError(f"{label}: output {meta.name} is not finite")
        if meta.name == "loss":
            if value.shape != ():
                raise RuntimeError(f"{label}: loss has shape {value.shape}")
            continue
        before = feeds[meta.name.removesuffix("/new")]
        if value.shape != before.shape:
            raise RuntimeError(f"{label}: {meta.name} has shape {value.shape}, expected {before.shape}")
        same = np.array_equal(value, before)
        state = meta.name.startswith("adam/")
        if skipped and state and not same:
            raise RuntimeError(f"{label}: {meta.name} changed on a step whose gradients are all zero")
        if not skipped and same and (state or meta.name.endswith("/W/new")):
            raise RuntimeError(f"{label}: {meta.name} did not change on a step with gradients")


def measure_steps(work: Path, dims: tuple[int, int, int], threads: Sequence[int], runs: int,
                  warmup: int) -> list[StepRow]:
    import onnxruntime as ort  # noqa: PLC0415

    from optrewrite.api import rewrite_file  # noqa: PLC0415

    layers, width, batch = dims
    rows = []
    for step, fwd_bwd in (("update", False), ("fwd+bwd", True)):
        src = _save(build_step_model(layers, width, batch, fwd_bwd=fwd_bwd), work / f"step_{step.replace('+', '_')}.onnx")
        graphs: dict[str, Path] = {}
        nodes: dict[str, int] = {}
        for variant, text in STEP_SPECS.items():
            spec = work / f"step_{variant}.yaml"
            spec.write_text(text)
            graphs[variant] = src.with_name(f"{src.stem}.{variant}.onnx")
            rewrite_file(src, spec, output=graphs[variant])
            nodes[variant] = len(onnx.load(str(graphs[variant])).graph.node)
        model = onnx.load(str(src))
        params = sum(1 for vi in model.graph.input if vi.name.startswith("layer"))
        feeds = {False: _feeds(model, zero_grads=False), True: _feeds(model, zero_grads=True)}
        elements = sum(int(feeds[False][vi.name].size) for vi in model.graph.input if vi.name.startswith("layer"))
        for n in threads:
            options = ort.SessionOptions()
            options.intra_op_num_threads = n
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            by_graph = {g: ort.InferenceSession(str(graphs[g]), options, providers=["CPUExecutionProvider"])
                        for g in STEP_SPECS}
            sessions = {v: by_graph[g] for v, (g, _) in VARIANTS.items()}  # (c) runs (b)'s session
            order = list(VARIANTS)
            for v in order:
                zero = VARIANTS[v][1]
                out = sessions[v].run(None, feeds[zero])
                _check_outputs(sessions[v], out, feeds[zero], skipped=zero, label=f"{step} ({v})")
                for _ in range(warmup):
                    sessions[v].run(None, feeds[zero])
            times: dict[str, list[float]] = {v: [] for v in order}
            for k in range(runs):
                shift = k % len(order)
                for v in order[shift:] + order[:shift]:  # rotate, so no variant always runs first
                    feed = feeds[VARIANTS[v][1]]
                    start = time.perf_counter()
                    sessions[v].run(None, feed)
                    times[v].append((time.perf_counter() - start) * 1e3)
            del sessions, by_graph
            row = StepRow(
                step=step, threads=n, params=params, elements=elements, graph_nodes=nodes,
                median_ms={v: statistics.median(ts) for v, ts in times.items()},
                p10_p90_ms={v: (_quantile(ts, 0.1), _quantile(ts, 0.9)) for v, ts in times.items()},
                runs=runs,
            )
            print(f"  {step}, {n} thread(s): " + ", ".join(f"({v}) {row.median_ms[v]:.2f} ms" for v in order),
                  file=sys.stderr)
            rows.append(row)
    return rows


def _quantile(values: list[float], q: float) -> float:
    return float(np.quantile(np.asarray(values), q))


def step_table(rows: list[StepRow]) -> str:
    lines = [
        "| step | threads | (a) lowered ms | (b) guard+clip ms | (b) vs (a) | (c) zero-grad ms | (c)/(a) "
        "| guard only vs (a) | guard only, zero-grad / (a) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        m = r.median_ms
        lines.append(
            f"| {r.step} | {r.threads} | {m['a']:.2f} | {m['b']:.2f} | {r.overhead * 100:+.1f}% "
            f"| {m['c']:.2f} | {r.skip_ratio:.2f} | {(r.vs_a('g') - 1) * 100:+.1f}% | {r.vs_a('z'):.2f} |"
        )
    return "\n".join(lines)


def noisy_rows(rows: list[StepRow], spread: float = 1.25) -> list[str]:
    """Rows where some variant's 90th percentile exceeds its 10th by more than ``spread``:
    their medians move from run to run (on 2 cores, another busy process stalls a 2-thread pool)."""
    out = []
    for r in rows:
        wide = {v: q for v, q in r.p10_p90_ms.items() if q[1] > spread * q[0]}
        if wide:
            out.append(f"{r.step}, {r.threads} thread(s): " + ", ".join(
                f"({v}) {lo:.3g}–{hi:.3g}" for v, (lo, hi) in wide.items()) + " ms")
    return out


# --------------------------------------------------------------------------- main


@dataclass
class Results:
    machine: dict[str, Any]
    graph: dict[str, Any] = field(default_factory=dict)
    rewrite: list[ToolRow] = field(default_factory=list)
    rewrite_info: dict[str, Any] = field(default_factory=dict)
    steps: list[StepRow] = field(default_factory=list)


def _machine() -> dict[str, Any]:
    import onnxruntime as ort  # noqa: PLC0415

    return {
        "cpus": os.cpu_count(), "python": platform.python_version(), "onnx": onnx.__version__,
        "onnxruntime": ort.__version__, "onnx_graphsurgeon": _graphsurgeon_version(),
        "platform": platform.platform(), "load_average_start": _load(),
    }


def _load() -> list[float]:
    """The 1, 5 and 15-minute load averages: other work on the machine skews the numbers."""
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few runs: a smoke run")
    parser.add_argument("--nodes", type=int, help=f"nodes of the rewrite-cost graph (default {TARGET_NODES:,}; "
                                                   f"--quick {QUICK_NODES:,})")
    parser.add_argument("--repeats", type=int, help="runs of each tool in part 1 (default 3; --quick 1)")
    parser.add_argument("--runs", type=int, help="timed steps of each variant in part 2 (default 100; --quick 5)")
    parser.add_argument("--threads", default="1,2", help="intra_op_num_threads values for part 2 (default 1,2)")
    parser.add_argument("--skip-rewrite", action="store_true", help="part 2 only")
    parser.add_argument("--skip-steps", action="store_true", help="part 1 only")
    parser.add_argument("--profile", action="store_true", help="also cProfile one rewrite of the large graph")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    nodes = args.nodes or (QUICK_NODES if args.quick else TARGET_NODES)
    repeats = args.repeats or (1 if args.quick else 3)
    runs = args.runs or (5 if args.quick else 100)
    threads = [int(n) for n in args.threads.split(",") if n]

    results = Results(machine=_machine())
    m = results.machine
    print(f"python {m['python']}, onnx {m['onnx']}, onnxruntime {m['onnxruntime']}, "
          f"onnx-graphsurgeon {m['onnx_graphsurgeon'] or 'not installed'}, {m['cpus']} CPUs\n")
    with tempfile.TemporaryDirectory(prefix="optrewrite-bench-onnx-") as tmp:
        work = Path(tmp)
        if not args.skip_rewrite:
            _part_one(results, work, nodes, repeats, profile=args.profile)
        if not args.skip_steps:
            dims = QUICK_STEP if args.quick else (STEP_LAYERS, STEP_WIDTH, STEP_BATCH)
            print(f"measuring step time: {dims[0]} layers of [{dims[1]}, {dims[1]}] + [{dims[1]}], "
                  f"batch {dims[2]}, {runs} runs per variant, threads {threads}", file=sys.stderr)
            results.steps = measure_steps(work, dims, threads, runs, warmup=max(2, runs // 10))
            first = results.steps[0]
            print(f"\n### Step time on onnxruntime {m['onnxruntime']} (CPUExecutionProvider)\n")
            print(f"{first.params} parameters ({dims[0]} × [{dims[1]}, {dims[1]}] and [{dims[1]}], "
                  f"{first.elements:,} elements) under one Adam node; `update`: gradients fed as inputs; "
                  f"`fwd+bwd`: a {dims[0]}-layer ReLU MLP, batch {dims[2]}, then Adam. "
                  f"(a) lowered, nothing guarded; (b) lowered, every tensor guarded and clipped (max_norm 10); "
                  f"(c) graph (b) on an all-zero-gradient step. Median of {runs} runs, interleaved; "
                  f"{m['cpus']} CPUs, inter_op 1.\n")
            print(step_table(results.steps))
            print("\nTop-level nodes: " + "; ".join(
                f"{r.step} (a) {r.graph_nodes['a']:,}, (b) {r.graph_nodes['b']:,}, guard only {r.graph_nodes['g']:,}"
                for r in results.steps if r.threads == threads[0]))
            noisy = noisy_rows(results.steps)
            if noisy:
                print("Noisy (10th–90th percentile): " + "; ".join(noisy) + ".")
            print("Goals: (b) vs (a) ≤ +3%; (c)/(a) < 1.")
    m["load_average_end"] = _load()
    print(f"\nload average (1, 5, 15 min) at start {m['load_average_start']}, at end {m['load_average_end']}")
    if args.json:
        args.json.write_text(json.dumps(asdict(results), indent=2) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


def _part_one(results: Results, work: Path, nodes: int, repeats: int, *, profile: bool) -> None:
    layers = layers_for(nodes)
    start = time.perf_counter()
    model = build_training_graph(layers)
    graph = _save(model, work / "training_step.onnx")
    onnx.checker.check_model(str(graph), full_check=True)  # valid, and shape inference agrees
    adam = [n for n in model.graph.node if n.domain == TRAINING_DOMAIN]
    params = sum(len(n.output) // 3 for n in adam)
    results.graph = {"nodes": len(model.graph.node), "layers": layers, "parameters": params,
                     "adam_nodes": len(adam), "bytes": graph.stat().st_size}
    print(f"generated {graph}: {len(model.graph.node):,} nodes, {params:,} parameters, "
          f"{graph.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    del model
    with_gs = _graphsurgeon_version() is not None
    if not with_gs:
        print("onnx-graphsurgeon is not installed: its row is skipped "
              "(`pip install onnx-graphsurgeon` to measure it)\n")
    print(f"measuring rewrite cost: {repeats}x each tool, fresh processes", file=sys.stderr)
    results.rewrite, results.rewrite_info = measure_rewrite(graph, work, repeats, with_gs)
    info, g, floor = results.rewrite_info, results.graph, results.rewrite[0]
    counts = info["counts"]
    print(f"### Rewrite cost: {g['nodes']:,}-node ONNX training step, {g['parameters']:,} parameters\n")
    print(f"{g['layers']} layers × {MICRO_BATCHES} micro-batches, forward and backward in standard ops, "
          f"{g['adam_nodes']} Adam node(s); {g['bytes'] / 1e6:.1f} MB. optrewrite guarded {counts['guarded']:,} "
          f"and clipped {counts['clipped']:,} of {counts['updates_found']:,} updates and lowered Adam: "
          f"{info['output_nodes']:,} top-level nodes out (+{info['nodes_added']:,} created, branch nodes "
          f"included), {info['output_bytes'] / 1e6:.1f} MB. Median of {repeats}, whole-process wall time "
          f"(interpreter start, imports and exit included; \"work s\": after the imports, before the exit) "
          f"and peak RSS; {results.machine['cpus']} CPUs.\n")
    print(rewrite_table(results.rewrite))
    ours = next(r for r in results.rewrite if r.tool == "optrewrite")
    goal = [f"optrewrite {ours.process_s / floor.process_s:.2f}× floor (goal ≤ 3×)"]
    gs_row = next((r for r in results.rewrite if r.tool == "graphsurgeon"), None)
    if gs_row is not None:
        goal.append(f"{gs_row.process_s / ours.process_s:.2f}× faster than onnx-graphsurgeon"
                    if ours.process_s < gs_row.process_s else
                    f"{ours.process_s / gs_row.process_s:.2f}× slower than onnx-graphsurgeon")
    print("\nGoals: " + "; ".join(goal) + ".\n")
    if profile:
        print("cProfile of one rewrite in this process (profiling slows it down):\n")
        print(profile_rewrite(graph, work))


if __name__ == "__main__":
    sys.exit(main())
