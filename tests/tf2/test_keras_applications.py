"""A real network: keras.applications MobileNetV2 with two heads, one Keras 3 Adam step.

Every convolution is followed by batch normalization (its statistics are written in the step
and have the shape of many variables), the network is a functional model nested in another,
and its 158 trainable variables are found by their ``variable.path``. The reference is the
original SavedModel run step by step with the guard applied by hand (a head whose loss weight
is 0 gets its variables and Adam slots back; no other gradient is zero), compared bit for bit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .keras_heads import module_for, rewrite, train_steps

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

BATCH = 2
WEIGHTS = [(1, 1), (1, 0), (0, 1)]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(3)
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, include_top=False,
                                          pooling="avg")
    inp = keras.Input((32, 32, 3), batch_size=BATCH)
    h = base(inp)
    net = keras.Model(inp, [keras.layers.Dense(1, name="head_a")(h), keras.layers.Dense(1, name="head_b")(h)],
                      name="net")
    opt = keras.optimizers.Adam(0.01)
    module, names = module_for(net, opt)

    @tf.function(input_signature=[tf.TensorSpec([BATCH, 32, 32, 3]), tf.TensorSpec([BATCH, 2]), tf.TensorSpec([2])])
    def train(x: Any, y: Any, w: Any) -> dict[str, Any]:
        with tf.GradientTape() as tape:
            a, b = net(x, training=True)
            loss = w[0] * tf.reduce_mean((a[:, 0] - y[:, 0]) ** 2) + w[1] * tf.reduce_mean((b[:, 0] - y[:, 1]) ** 2)
        opt.apply_gradients(zip(tape.gradient(loss, net.trainable_variables), net.trainable_variables))
        return {"loss": loss}

    module.train = train
    export_dir = tmp_path_factory.mktemp("keras_applications") / "mobilenet"
    tf.saved_model.save(module, str(export_dir), signatures={"train": train.get_concrete_function()})
    return export_dir, names


def _steps() -> list[tuple[dict[str, np.ndarray], tuple[float, float]]]:
    rng = np.random.default_rng(2)
    return [({"x": rng.normal(size=(BATCH, 32, 32, 3)).astype(np.float32),
              "y": rng.normal(size=(BATCH, 2)).astype(np.float32)}, w) for w in WEIGHTS]


def test_mobilenet_guarded_step_trains_like_the_reference(model: tuple[Path, list[str]], tmp_path: Path) -> None:
    src, names = model
    out, report = rewrite(src, tmp_path, "version: 1\nguard: {}\n")
    counts = report["counts"]
    trainable = [n for n in names if not n.startswith(names[-1].split("/")[0] + "/")
                 and "moving_" not in n]
    assert counts["updates_found"] == counts["guarded"] == len(trainable) > 150 and counts["skipped"] == 0
    reference = train_steps(src, names, _steps(), guard_by_hand=True)
    rewritten = train_steps(out, names, _steps(), guard_by_hand=False)
    for t, (ref, got) in enumerate(zip(reference, rewritten)):
        for n in names:
            assert np.array_equal(ref[n], got[n]), (t, WEIGHTS[t], n)
    kept = [n for n in names if n.startswith("head_b/")]
    assert kept and all(np.array_equal(rewritten[1][n], rewritten[0][n]) for n in kept)
