"""Every update op in the table, built with tf.raw_ops, rewritten with a guard and run in TF.

For each op: a step with an all-zero gradient leaves the variable and its slots exactly as
they were; a step with a non-zero gradient gives exactly what the unrewritten graph gives.
This also checks the table's argument positions: a wrong position would guard on the wrong
tensor or fail to find the variable.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from optrewrite.cli import main
from optrewrite.tf.sites import UPDATE_OPS

ROWS, COLS = 4, 3
# Hyper-parameter values by argument name; anything else gets 0.1.
HYPER = {"lr_power": -0.5, "momentum": 0.9, "rho": 0.9, "beta1": 0.9, "beta2": 0.999, "beta": 0.9,
         "beta1_power": 0.9, "beta2_power": 0.999, "epsilon": 1e-7, "logbase": 2.0, "alpha": 1.0,
         "sign_decay": 0.99, "l1": 0.01, "l2": 0.01, "l2_shrinkage": 0.01}


def _build(op_name: str):  # type: ignore[no-untyped-def]
    import tensorflow as tf

    tf1 = tf.compat.v1
    info = UPDATE_OPS[op_name]
    resource = info["resource"]
    graph = tf.Graph()
    with graph.as_default():
        grad_shape = [2, COLS] if info["sparse"] else [ROWS, COLS]
        grad = tf1.placeholder(tf.float32, grad_shape, name="grad")
        variables = {}
        args = {}
        for pos, name in enumerate(info["inputs"]):
            if pos == info["var"] or pos in info["slots"]:
                init = np.full((ROWS, COLS), 0.5 + pos, np.float32) + np.arange(ROWS * COLS).reshape(ROWS, COLS) / 10
                v = tf1.get_variable(f"v{pos}_{name}", initializer=init.astype(np.float32), use_resource=resource)
                variables[name] = v
                args[name] = v.handle if resource else v._ref()  # noqa: SLF001
            elif pos == info["grad"]:
                args[name] = grad
            elif name == "indices":
                args[name] = tf.constant([1, 3], tf.int32, name="indices")
            elif name == "global_step":
                args[name] = tf.constant(3, tf.int64, name="global_step")
            else:
                args[name] = tf.constant(HYPER.get(name, 0.1), tf.float32, name=name)
        with tf1.name_scope("opt/update_v0_var"):
            update = getattr(tf.raw_ops, op_name)(**args)
        tf.group(update, name="train")
        tf1.variables_initializer(tf1.global_variables(), name="init")
    return graph.as_graph_def(), sorted(v.op.name for v in variables.values())


def _run(graph_def, names: list[str], grads: list[np.ndarray], config):  # type: ignore[no-untyped-def]
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
        reads = [tf.raw_ops.ReadVariableOp(resource=graph.get_tensor_by_name(f"{n}:0"), dtype=tf.float32)
                 if graph.get_operation_by_name(n).type == "VarHandleOp"
                 else tf.identity(graph.get_tensor_by_name(f"{n}:0")) for n in names]
        with tf.compat.v1.Session(graph=graph, config=config) as sess:
            sess.run("init")
            out = [sess.run(reads)]
            for g in grads:
                sess.run("train", {"grad:0": g})
                out.append(sess.run(reads))
    return out


@pytest.mark.parametrize("op_name", sorted(UPDATE_OPS))
def test_guard_skips_zero_gradient_and_keeps_nonzero_steps_exact(op_name: str, tmp_path: Path, tf_config) -> None:  # type: ignore[no-untyped-def]
    graph_def, names = _build(op_name)
    src, out = tmp_path / "in.pb", tmp_path / "out.pb"
    src.write_bytes(graph_def.SerializeToString())
    (tmp_path / "spec.yaml").write_text("version: 1\nguard:\n  variables: ['v0_var']\n")
    assert main([str(src), "--spec", str(tmp_path / "spec.yaml"), "-o", str(out), "-q"]) == 0

    import tensorflow as tf

    rewritten = tf.compat.v1.GraphDef.FromString(out.read_bytes())
    shape = (2, COLS) if UPDATE_OPS[op_name]["sparse"] else (ROWS, COLS)
    g = np.linspace(-1, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    zero = np.zeros(shape, np.float32)
    negzero = -zero
    steps = [zero, g, negzero, g]
    guarded = _run(rewritten, names, steps, tf_config)
    # step 1 and 3 have an all-zero gradient: nothing moves
    for before, after in ((guarded[0], guarded[1]), (guarded[2], guarded[3])):
        for b, a in zip(before, after):
            np.testing.assert_array_equal(a, b)
    # step 2 (non-zero) matches the plain graph applied to the same state
    replay = _run(graph_def, names, [g], tf_config)
    for a, b in zip(guarded[2], replay[1]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(guarded[2], guarded[1])), "non-zero step changed nothing"
