"""The ONNX zero-gradient guard (:mod:`optrewrite.onnx.passes.guard_zero_grad`) on its own.

For a selected tensor X of a training node, with gradient G, it must emit under
``optrewrite/<X>/guard``::

    ReduceL1(G, keepdims=0);  LessOrEqual(.., 0);  Not(..)
    X_new, S_new = If(Not,
                      then: a one-tensor training node of the same kind and attributes,
                      else: Identity(X), Identity(S))

so a step whose gradient is all zero keeps X and its state. The training node is rebuilt
over the tensors no pass took, and every original output is still produced exactly once.
"""
from __future__ import annotations

import numpy as np
import onnx

from optrewrite.onnx.graph import PREVIEW_DOMAIN
from optrewrite.onnx.passes import guard_zero_grad
from tests.onnx.passes.models import (
    MOMENTUM, check_golden, check_model, feed, produced_once, run, selected, training_step,
)

GUARD = guard_zero_grad.PASS
OUTPUTS = ["W_new", "B_new", "V_W_new", "V_B_new"]


def test_guard_on_one_tensor_of_a_momentum_node() -> None:
    original = training_step("Momentum", MOMENTUM)
    rw = selected(training_step("Momentum", MOMENTUM), "version: 1\nguard:\n  variables: [W]\n")

    result = rw.run_only(GUARD)
    model = rw.finish()

    check_golden(model, "guard_momentum", w="optrewrite/W")
    assert result.inserted == {"Momentum 'optimizer'[0]": ["guard"]}
    assert produced_once(model, OUTPUTS) == dict.fromkeys(OUTPUTS, 1)
    check_model(model)
    (guard,) = [n for n in model.graph.node if n.op_type == "If"]
    assert list(guard.output) == ["W_new", "V_W_new"]
    then = onnx.helper.get_attribute_value(next(a for a in guard.attribute if a.name == "then_branch"))
    (inner,) = then.node
    assert (inner.domain, inner.op_type) == (PREVIEW_DOMAIN, "Momentum")
    assert list(inner.input) == ["R", "T", "W", "dW", "V_W"]
    (rest,) = [n for n in model.graph.node if n.domain == PREVIEW_DOMAIN]
    assert (list(rest.input), list(rest.output)) == (["R", "T", "B", "dB", "V_B"], ["B_new", "V_B_new"])

    inputs = feed(original)
    assert_same(run(model, inputs), run(original, inputs))
    skipped = run(model, {**inputs, "dW": np.zeros_like(inputs["dW"])})
    np.testing.assert_array_equal(skipped["W_new"], inputs["W"])
    np.testing.assert_array_equal(skipped["V_W_new"], inputs["V_W"])


def test_a_nan_gradient_is_applied() -> None:
    original = training_step("Momentum", MOMENTUM)
    rw = selected(training_step("Momentum", MOMENTUM), "version: 1\nguard: {}\n")

    result = rw.run_only(GUARD)
    model = rw.finish()

    assert result.inserted == {"Momentum 'optimizer'[0]": ["guard"], "Momentum 'optimizer'[1]": ["guard"]}
    assert not [n for n in model.graph.node if n.domain == PREVIEW_DOMAIN]  # both tensors moved into an If
    check_model(model)
    inputs = feed(original)
    inputs["dB"] = np.array([0.0, np.nan, 0.0], np.float32)
    assert np.isnan(run(model, inputs)["B_new"][1])


def assert_same(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
