"""A training step compiled by XLA (``tf.function(jit_compile=True)``).

XLA compiles the whole step into fused kernels; the rewritten step is another graph, which it
fuses differently, so an update that applies may round differently from the unguarded
step's (measured: an ulp in some Adam slots, three after eight steps). What the guard promises holds exactly: a
variable whose gradient is all zero keeps its value and its slots bit for bit. The
reference is the original SavedModel with the guard applied by hand after each step.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .keras_heads import masked_by, masked_names, module_for, rewrite, train_steps

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

BATCH = 4
WEIGHTS = [(1, 1), (1, 0), (1, 1), (0, 1), (0, 1), (1, 1), (0, 0), (1, 1)]


def _build(export_dir: Path) -> list[str]:
    keras.utils.set_random_seed(11)
    inp = keras.Input((3,), batch_size=BATCH)
    h = keras.layers.Dense(5, activation="tanh", name="shared")(inp)
    net = keras.Model(inp, [keras.layers.Dense(2, name="head_a")(h), keras.layers.Dense(1, name="head_b")(h)],
                      name="net")
    module, names = module_for(net, keras.optimizers.Adam(0.05))

    @tf.function(jit_compile=True, input_signature=[tf.TensorSpec([BATCH, 3]), tf.TensorSpec([BATCH, 3]),
                                                    tf.TensorSpec([2])])
    def train(x: Any, y: Any, w: Any) -> dict[str, Any]:
        with tf.GradientTape() as tape:
            a, b = net(x, training=True)
            loss = w[0] * tf.reduce_mean((a - y[:, :2]) ** 2) + w[1] * tf.reduce_mean((b[:, 0] - y[:, 2]) ** 2)
        module.opt.apply_gradients(zip(tape.gradient(loss, net.trainable_variables), net.trainable_variables))
        return {"loss": loss}

    module.train = train
    tf.saved_model.save(module, str(export_dir), signatures={"train": train.get_concrete_function()})
    return names


def _steps() -> list[tuple[dict[str, np.ndarray], tuple[float, float]]]:
    rng = np.random.default_rng(6)
    return [({"x": rng.normal(size=(BATCH, 3)).astype(np.float32), "y": rng.normal(size=(BATCH, 3)).astype(np.float32)},
             weights) for weights in WEIGHTS]


def test_an_xla_step_keeps_masked_variables_exactly_and_rounds_updates_alike(tmp_path: Path) -> None:
    src = tmp_path / "net"
    names = _build(src)
    out, report = rewrite(src, tmp_path, "version: 1\nguard: {}\n")
    assert report["counts"]["guarded"] == 6, report["counts"]
    reference = train_steps(src, names, _steps(), guard_by_hand=True)
    rewritten = train_steps(out, names, _steps(), guard_by_hand=False)
    kept = 0
    for step, weights in enumerate(WEIGHTS[1:], 1):
        for name in masked_names(names, masked_by(weights)):  # the guard's promise: bit for bit
            assert np.array_equal(rewritten[step][name], rewritten[step - 1][name]), (step, name)
            kept += 1
    assert kept >= 20, kept
    for step, (ref, got) in enumerate(zip(reference, rewritten)):  # rounding apart (3 ulp seen after 8 steps)
        for name in names:
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-7, err_msg=f"step {step}: {name}")
