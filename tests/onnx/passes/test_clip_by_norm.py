"""The ONNX post-update clip (:mod:`optrewrite.onnx.passes.clip_by_norm`) on its own.

For a selected tensor X the update's new value is renamed ``<X_new>/optrewrite_unclipped``, and
under ``optrewrite/<X>/clip`` it must emit TensorFlow's clip_by_norm with no epsilon::

    l2sum = ReduceSumSquare(X', dims, keepdims=1);  pred = Greater(l2sum, 0)
    l2norm = Where(pred, Sqrt(Where(pred, l2sum, 1)), l2sum)
    over = Not(LessOrEqual(l2norm, c));  count = ReduceSum(Where(over, 1, 0), keepdims=0)
    X_new = If(Greater(count, 0), then: X' - (X' - X' * c / Max(l2norm, c)), else: Identity(X'))

so the last op produces the name the update produced. At ai.onnx opset 21 and newer (no
CUDA ``If``) the clipped value is computed every step, without the ``If``.
"""
from __future__ import annotations

import numpy as np

from optrewrite.onnx.graph import PREVIEW_DOMAIN
from optrewrite.onnx.passes import clip_by_norm
from tests.onnx.passes.models import (
    MOMENTUM, check_golden, check_model, feed, produced_once, run, selected, training_step,
)

CLIP = clip_by_norm.PASS
OUTPUTS = ["W_new", "B_new", "V_W_new", "V_B_new"]
SPEC = "version: 1\nclip:\n  - variables: [W]\n    dims: [1]\n    max_norm: 1.0\n"


def clipped_rows(w: np.ndarray, max_norm: float) -> np.ndarray:
    norm = np.sqrt((w.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
    return (w * max_norm / np.maximum(norm, max_norm)).astype(np.float32)


def test_clip_after_a_momentum_update() -> None:
    original = training_step("Momentum", MOMENTUM)
    rw = selected(training_step("Momentum", MOMENTUM), SPEC)

    result = rw.run_only(CLIP)
    model = rw.finish()

    check_golden(model, "clip_momentum", w="optrewrite/W")
    assert result.inserted == {"Momentum 'optimizer'[0]": ["clip[0]"]}
    assert produced_once(model, OUTPUTS) == dict.fromkeys(OUTPUTS, 1)
    check_model(model)
    (update,) = [n for n in model.graph.node if n.domain == PREVIEW_DOMAIN]
    assert list(update.output) == ["W_new/optrewrite_unclipped", "B_new", "V_W_new", "V_B_new"]
    last = model.graph.node[-1]
    assert (last.op_type, list(last.output)) == ("If", ["W_new"])

    inputs = feed(original)
    plain, clipped = run(original, inputs), run(model, inputs)
    np.testing.assert_allclose(clipped["W_new"], clipped_rows(plain["W_new"], 1.0), rtol=1e-6)
    for name in ("B_new", "V_W_new", "V_B_new"):
        np.testing.assert_array_equal(clipped[name], plain[name])


def test_within_the_norm_the_value_is_unchanged_bit_for_bit() -> None:
    original = training_step("Momentum", MOMENTUM)
    rw = selected(training_step("Momentum", MOMENTUM), SPEC.replace("1.0", "1000.0"))
    rw.run_only(CLIP)
    model = rw.finish()
    inputs = feed(original)
    np.testing.assert_array_equal(run(model, inputs)["W_new"], run(original, inputs)["W_new"])


def test_at_opset_21_the_clip_is_computed_every_step() -> None:
    rw = selected(training_step("Momentum", MOMENTUM, opset=21), SPEC)

    result = rw.run_only(CLIP)
    model = rw.finish()

    assert result.inserted == {"Momentum 'optimizer'[0]": ["clip[0]"]}
    ops = [n.op_type for n in model.graph.node]
    assert "If" not in ops and "Not" not in ops
    last = model.graph.node[-1]
    assert (last.op_type, list(last.output)) == ("Sub", ["W_new"])
    assert produced_once(model, OUTPUTS) == dict.fromkeys(OUTPUTS, 1)
    check_model(model)
