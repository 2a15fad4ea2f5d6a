"""Regenerate the golden fixtures under fixtures/.

Each fixture is a folder with an input graph, a spec.yaml, and the expected rewritten graph:
expected.pbtxt (text format, whatever the input's container) for a TensorFlow input,
expected.onnx for an ONNX one. tests/test_fixtures.py rewrites every input and compares the
graphs structurally (optrewrite.diff). After a deliberate change, regenerate and review the
diff (``optrewrite diff`` shows what changed in an ONNX golden):

    python tools/regen_fixtures.py            # rewrite the expected graphs from the committed inputs
    python tools/regen_fixtures.py --inputs   # also rebuild the input graphs (TF ones need TensorFlow)

The expected graphs are written as ``pytest tests/test_fixtures.py --optrewrite-regen`` writes
them (optrewrite.testing.write_expected): an expected graph equal to the output stays as it is.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
FIXTURES = ROOT / "fixtures"

SPECS = {
    "momentum_ref_dense": """\
version: 1
guard:
  variables: ["*"]
clip:
  - variables: ["dense/kernel"]
    dims: [1]
    max_norm: 1.0
""",
    "adam_resource_sparse": """\
version: 1
guard:
  variables: ["*"]
  exclude: ["re:.*/bias"]
clip:
  - variables: ["emb"]
    dims: [1]
    max_norm: 1.0
global_norm_clip:
  clip_norm: 5.0
""",
    "gd_ref_sparse_meta": """\
version: 1
guard:
  variables: ["emb"]
clip:
  - variables: ["emb"]
    dims: [0, 1]
    max_norm: 2.0
    colocate_with_variable: true
    use_locking: true
""",
    "adam_preview_lowered": """\
version: 1
lower: true
guard: {}
clip:
  - variables: ["dense/kernel"]
    dims: [1]
    max_norm: 1.0
global_norm_clip:
  clip_norm: 5.0
""",
    "momentum_preview_guarded": """\
version: 1
guard:
  variables: ["head/*"]
""",
    "decomposed_momentum": """\
version: 1
guard: {}
clip:
  - variables: ["W"]
    max_norm: 2.0
updates:
  - variable: W
    gradient: dW
    updated: W_new
    state: [[m, m_new]]
""",
}
INPUTS = {
    "momentum_ref_dense": "input.pb",
    "adam_resource_sparse": "input.pbtxt",
    "gd_ref_sparse_meta": "input.meta",
    "adam_preview_lowered": "input.onnx",
    "momentum_preview_guarded": "input.onnx",
    "decomposed_momentum": "input.onnx",
}


def _build_onnx_inputs() -> None:
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper  # noqa: PLC0415

    F = TensorProto.FLOAT
    training = "ai.onnx.preview.training"
    vi = helper.make_tensor_value_info

    def save(name: str, nodes: list, inputs: list, outputs: list) -> None:  # type: ignore[type-arg]
        graph = helper.make_graph(nodes, name, inputs, outputs)
        model = helper.make_model(graph, ir_version=10, producer_name="regen_fixtures", opset_imports=[
            helper.make_opsetid("", 17), helper.make_opsetid(training, 1)])
        onnx.checker.check_model(model, full_check=True)
        (FIXTURES / name).mkdir(parents=True, exist_ok=True)
        onnx.save(model, FIXTURES / name / INPUTS[name])

    def preview(name: str, op: str, params: dict[str, list[int]], states: int, **attrs: object) -> None:
        xs = list(params)
        blocks = [xs, [f"{x}/grad" for x in xs], *([f"{x}/state{k}" for x in xs] for k in range(states))]
        inputs = [vi("lr", F, []), vi("step", TensorProto.INT64, [])]
        inputs += [vi(n, F, params[xs[i % len(xs)]]) for block in blocks for i, n in enumerate(block)]
        outs = [f"{n}/next" for block in [blocks[0], *blocks[2:]] for n in block]
        outputs = [vi(n, F, params[xs[i % len(xs)]]) for i, n in enumerate(outs)]
        node = helper.make_node(op, ["lr", "step", *(n for b in blocks for n in b)], outs,
                                name="optimizer", domain=training, **attrs)
        save(name, [node], inputs, outputs)

    preview("adam_preview_lowered", "Adam", {"dense/kernel": [3, 2], "dense/bias": [2]}, 2,
            norm_coefficient=0.001)
    preview("momentum_preview_guarded", "Momentum", {"body/w": [4], "head/a": [4, 1], "head/b": [4, 1]}, 1,
            alpha=0.9, beta=1.0, mode="nesterov", norm_coefficient=0.0)
    # W_new = W - lr * (0.9 * m + dW), written in plain ops.
    nodes = [
        helper.make_node("Mul", ["momentum", "m"], ["m_decay"], name="m_decay"),
        helper.make_node("Add", ["m_decay", "dW"], ["m_new"], name="m_new"),
        helper.make_node("Mul", ["lr", "m_new"], ["step"], name="step"),
        helper.make_node("Sub", ["W", "step"], ["W_new"], name="W_new"),
    ]
    save("decomposed_momentum", nodes,
         [vi("W", F, [2, 3]), vi("m", F, [2, 3]), vi("dW", F, [2, 3]), vi("lr", F, []), vi("momentum", F, [])],
         [vi("W_new", F, [2, 3]), vi("m_new", F, [2, 3])])


def _build_inputs() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf  # noqa: PLC0415

    tf1 = tf.compat.v1

    def model(resource: bool, sparse: bool, make_opt):  # type: ignore[no-untyped-def]
        graph = tf.Graph()
        with graph.as_default():
            x = tf1.placeholder(tf.float32, [None, 3], name="x")
            mask = tf1.placeholder(tf.float32, [], name="mask")
            w = tf1.get_variable("dense/kernel", initializer=np.arange(6, dtype=np.float32).reshape(3, 2) / 6,
                                 use_resource=resource)
            b = tf1.get_variable("dense/bias", initializer=np.zeros(2, np.float32), use_resource=resource)
            loss = mask * tf.reduce_sum(tf.square(tf.matmul(x, w) + b))
            if sparse:
                ids = tf1.placeholder(tf.int32, [None], name="ids")
                emb = tf1.get_variable("emb", initializer=np.ones((5, 2), np.float32), use_resource=resource)
                loss += tf.reduce_sum(tf.gather(emb, ids))
            step = tf1.train.get_or_create_global_step()
            train = make_opt().minimize(loss, global_step=step, name="train")
            tf1.add_to_collection("train_op", train)
            tf1.variables_initializer(tf1.global_variables(), name="init")
        return graph

    cases = {
        "momentum_ref_dense": model(False, False, lambda: tf1.train.MomentumOptimizer(0.1, 0.9)),
        "adam_resource_sparse": model(True, True, lambda: tf1.train.AdamOptimizer(0.01)),
        "gd_ref_sparse_meta": model(False, True, lambda: tf1.train.GradientDescentOptimizer(0.5)),
    }
    for name, graph in cases.items():
        folder = FIXTURES / name
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / INPUTS[name]
        if target.suffix == ".meta":
            with graph.as_default():
                meta = tf1.train.export_meta_graph()
            target.write_bytes(meta.SerializeToString(deterministic=True))
        elif target.suffix == ".pbtxt":
            tf.io.write_graph(graph.as_graph_def(), str(folder), target.name, as_text=True)
        else:
            target.write_bytes(graph.as_graph_def().SerializeToString(deterministic=True))


def write_expected(folder: Path) -> bool:
    """Rewrite the fixture's input by its spec into its expected graph; whether that changed it."""
    from optrewrite.api import rewrite_file  # noqa: PLC0415
    from optrewrite.testing import write_expected as write_golden  # noqa: PLC0415
    from tests.test_fixtures import expected_of  # noqa: PLC0415

    src = folder / INPUTS[folder.name]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"output{src.suffix}"
        rewrite_file(src, folder / "spec.yaml", output=out)
        return write_golden(out, expected_of(folder))


def main() -> int:
    from tests.test_fixtures import expected_of  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", action="store_true",
                        help="rebuild the input graphs (the TensorFlow ones need TensorFlow)")
    args = parser.parse_args()
    if args.inputs:
        _build_inputs()
        _build_onnx_inputs()
    for name, spec in SPECS.items():
        folder = FIXTURES / name
        (folder / "spec.yaml").write_text(spec)
        expected = expected_of(folder).relative_to(ROOT)
        print(f"wrote {expected}" if write_expected(folder) else f"unchanged {expected}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
