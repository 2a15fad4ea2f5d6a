"""A step saved under ``tf.distribute.MirroredStrategy`` (one CPU device): the model and the
Keras 3 optimizer are built in the strategy's scope and the step runs through
``strategy.run``, so its variables are mirrored ones and the update sits in a replica
context. Saving such a step needs ``SaveOptions(experimental_custom_gradients=False)``
(TensorFlow cannot trace the gradient of Keras's grouped gradients otherwise).

The reference is the original SavedModel run step by step with the guard applied by hand;
the rewritten one matches it bit for bit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .keras_heads import module_for, rewrite, train_steps

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

BATCH = 4
WEIGHTS = [(1, 1), (1, 0), (1, 1), (0, 1), (0, 0), (1, 1)]


def _build(export_dir: Path) -> list[str]:
    keras.utils.set_random_seed(5)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        inp = keras.Input((3,), batch_size=BATCH)
        h = keras.layers.Dense(4, activation="tanh", name="shared")(inp)
        net = keras.Model(inp, [keras.layers.Dense(1, name="head_a")(h), keras.layers.Dense(1, name="head_b")(h)],
                          name="net")
        module, names = module_for(net, keras.optimizers.Adam(0.05))

    @tf.function(input_signature=[tf.TensorSpec([BATCH, 3]), tf.TensorSpec([BATCH, 2]), tf.TensorSpec([2])])
    def train(x: Any, y: Any, w: Any) -> dict[str, Any]:
        def step(x: Any, y: Any, w: Any) -> Any:
            with tf.GradientTape() as tape:
                a, b = net(x, training=True)
                loss = w[0] * tf.reduce_mean((a[:, 0] - y[:, 0]) ** 2) + w[1] * tf.reduce_mean((b[:, 0] - y[:, 1]) ** 2)
            grads = tape.gradient(loss, net.trainable_variables)
            module.opt.apply_gradients(zip(grads, net.trainable_variables))
            return loss

        return {"loss": strategy.run(step, args=(x, y, w))}

    module.train = train
    with strategy.scope():
        tf.saved_model.save(module, str(export_dir), signatures={"train": train},
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
    return names


def _steps() -> list[tuple[dict[str, np.ndarray], tuple[float, float]]]:
    rng = np.random.default_rng(2)
    return [({"x": rng.normal(size=(BATCH, 3)).astype(np.float32), "y": rng.normal(size=(BATCH, 2)).astype(np.float32)},
             weights) for weights in WEIGHTS]


def test_a_mirrored_strategy_step_is_guarded_bit_for_bit(tmp_path: Path) -> None:
    tf.config.experimental.enable_op_determinism()
    src = tmp_path / "net"
    names = _build(src)
    out, report = rewrite(src, tmp_path, "version: 1\nguard: {}\n")
    assert report["counts"]["guarded"] == 6 and report["counts"]["skipped"] == 0, report["counts"]
    reference = train_steps(src, names, _steps(), guard_by_hand=True)
    original = train_steps(src, names, _steps(), guard_by_hand=False)
    rewritten = train_steps(out, names, _steps(), guard_by_hand=False)
    assert any(not np.array_equal(o["head_b/kernel"], r["head_b/kernel"]) for o, r in zip(original, reference))
    for step, (ref, got) in enumerate(zip(reference, rewritten)):
        for name in ref:
            assert np.array_equal(ref[name], got[name]), (step, name)
