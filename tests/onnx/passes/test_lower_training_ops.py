"""The ONNX lowering (:mod:`optrewrite.onnx.passes.lower_training_ops`) on its own.

Every selected tensor of a training node must become standard ops in the element type of X,
under ``optrewrite/<node name>``: the scalars the node's tensors share once (Adam: the step
size ``Where(T > 0, R * Sqrt(1 - beta^T) / (1 - alpha^T), R)`` computed in double, then cast),
then per tensor::

    V' = alpha * V + (1 - alpha) * G
    H' = beta * H + (1 - beta) * (G * G)
    X' = X - r * (V' / (Sqrt(H') + epsilon))

each last op producing the name the training node produced; no training node is left.
"""
from __future__ import annotations

import numpy as np

from optrewrite.onnx.graph import PREVIEW_DOMAIN
from optrewrite.onnx.passes import lower_training_ops
from tests.onnx.passes.models import (
    ADAM, MOMENTUM, check_golden, check_model, feed, produced_once, run, selected, training_step,
)

LOWER = lower_training_ops.PASS


def test_lowered_adam_over_two_tensors() -> None:
    original = training_step("Adam", ADAM)
    rw = selected(training_step("Adam", ADAM), "version: 1\nlower: true\n")

    result = rw.run_only(LOWER)
    model = rw.finish()

    check_golden(model, "lower_adam", opt="optrewrite/optimizer")
    assert result.inserted == {"Adam 'optimizer'[0]": ["lower"], "Adam 'optimizer'[1]": ["lower"]}
    outputs = ["W_new", "B_new", "V_W_new", "V_B_new", "H_W_new", "H_B_new"]
    assert produced_once(model, outputs) == dict.fromkeys(outputs, 1)
    assert not [n for n in model.graph.node if n.domain == PREVIEW_DOMAIN]
    assert sum(n.op_type == "Pow" for n in model.graph.node) == 2  # the shared step size, once for both tensors
    check_model(model)

    inputs = feed(original)
    expected = run(original, inputs)
    for name, value in run(model, inputs).items():
        np.testing.assert_allclose(value, expected[name], rtol=2e-6, atol=1e-7, err_msg=name)


def test_lowered_momentum_computes_what_the_training_node_does() -> None:
    original = training_step("Momentum", MOMENTUM)
    rw = selected(training_step("Momentum", MOMENTUM), "version: 1\nlower: true\n")

    result = rw.run_only(LOWER)
    model = rw.finish()

    assert result.inserted == {"Momentum 'optimizer'[0]": ["lower"], "Momentum 'optimizer'[1]": ["lower"]}
    assert not [n for n in model.graph.node if n.domain == PREVIEW_DOMAIN]
    check_model(model)
    inputs = feed(original)
    expected = run(original, inputs)
    for name, value in run(model, inputs).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-6, err_msg=name)
