"""The ONNX global-norm gradient clip (:mod:`optrewrite.onnx.passes.global_norm_clip`) on its own.

Once over every selected gradient g_i it must emit, under ``optrewrite/global_norm_clip`` and
before the first update that reads one::

    loss_i = ReduceSum(Mul(Mul(g_i, g_i), 0.5), keepdims=0)      # TF's L2Loss
    norm = Sqrt(Mul(Sum(loss_1, ..), 2))
    scale = Add(Mul(c, Min(Div(1, norm), 1/c)), Sub(norm, norm))
    g_i' = Mul(g_i, scale)

and the training node must read g_i' where it read g_i.
"""
from __future__ import annotations

import numpy as np

from optrewrite.onnx.graph import PREVIEW_DOMAIN
from optrewrite.onnx.passes import global_norm_clip
from tests.onnx.passes.models import (
    MOMENTUM, check_golden, check_model, feed, produced_once, run, selected, training_step,
)

GNC = global_norm_clip.PASS
OUTPUTS = ["W_new", "B_new", "V_W_new", "V_B_new"]


def test_one_norm_over_both_gradients_feeds_the_training_node() -> None:
    original = training_step("Momentum", MOMENTUM)
    rw = selected(training_step("Momentum", MOMENTUM), "version: 1\nglobal_norm_clip:\n  clip_norm: 2.5\n")

    result = rw.run_only(GNC)
    model = rw.finish()

    check_golden(model, "global_norm_clip_momentum", norm="optrewrite/global_norm_clip")
    assert result.inserted == {"Momentum 'optimizer'[0]": ["global_norm_clip"],
                               "Momentum 'optimizer'[1]": ["global_norm_clip"]}
    assert produced_once(model, OUTPUTS) == dict.fromkeys(OUTPUTS, 1)
    check_model(model)
    (update,) = [n for n in model.graph.node if n.domain == PREVIEW_DOMAIN]
    gradients = list(update.input[4:6])
    assert gradients == [rw.state("W").gradient, rw.state("B").gradient]
    producers = {o: n for n in model.graph.node for o in n.output}
    assert [(producers[g].op_type, producers[g].input[0]) for g in gradients] == [("Mul", "dW"), ("Mul", "dB")]
    assert model.graph.node[-1] is update  # the clip runs before the update

    inputs = feed(original)
    norm = np.sqrt(sum((inputs[g].astype(np.float64) ** 2).sum() for g in ("dW", "dB")))
    assert norm > 2.5  # the clip bites
    scale = np.float32(2.5 / norm)
    expected = run(original, {**inputs, "dW": inputs["dW"] * scale, "dB": inputs["dB"] * scale})
    for name, value in run(model, inputs).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, err_msg=name)


def test_an_unselected_gradient_is_left_out() -> None:
    rw = selected(training_step("Momentum", MOMENTUM),
                  "version: 1\nglobal_norm_clip:\n  clip_norm: 1.0\n  variables: [W]\n")

    result = rw.run_only(GNC)
    model = rw.finish()

    assert result.inserted == {"Momentum 'optimizer'[0]": ["global_norm_clip"]}
    (update,) = [n for n in model.graph.node if n.domain == PREVIEW_DOMAIN]
    assert update.input[5] == "dB" and update.input[4] != "dW"
    assert sum(n.op_type == "ReduceSum" for n in model.graph.node) == 1
    check_model(model)
