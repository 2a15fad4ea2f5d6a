"""A step exported the way a compiled Keras 3 model trains: ``model.train_step`` in a ``tf.function``.

``model.compile(optimizer, loss, metrics)`` and ``train_step((x, y, sample_weight))`` put more
than the optimizer in the step: the compiled loss and its per-output trackers, the metrics
(each a pair of total/count variables written every step), and a dropout layer's seed
state. Those are writes of non-trainable variables that depend on the forward pass, not on
a gradient; only the six trainable variables (a shared layer, two heads) are update sites.

A head is masked by a zero sample weight on every sample of its output, which makes its
gradient exactly zero. The reference is the original SavedModel run step by step with the
guard's semantics applied by hand after each (the masked head's variables and optimizer
slots get their values back); the rewritten one must match it bit for bit, metrics and loss
trackers included (the guard never touches them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .keras_heads import masked_by, restore_masked, rewrite

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

BATCH = 4
WEIGHTS = [(1, 1), (1, 0), (0, 1), (1, 1), (0, 0), (1, 0), (1, 1)]  # per step: head a's and head b's weight


def _build(export_dir: Path, optimizer: str) -> tuple[list[str], list[str]]:
    """The SavedModel; the paths of the model's and the optimizer's variables (in that order),
    and of the compiled loss's and metrics' variables."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((5,), batch_size=BATCH)
    h = keras.layers.Dropout(0.2)(keras.layers.Dense(6, activation="tanh", name="shared")(inp))
    net = keras.Model(inp, {"a": keras.layers.Dense(1, name="head_a")(h), "b": keras.layers.Dense(1, name="head_b")(h)},
                      name="net")
    net.compile(optimizer=keras.optimizers.get(optimizer), loss={"a": "mse", "b": "mse"},
                metrics={"a": ["mae"], "b": ["mae"]})
    net.optimizer.build(net.trainable_variables)
    spec = [tf.TensorSpec([BATCH, 5]), tf.TensorSpec([BATCH, 1]), tf.TensorSpec([BATCH, 1]), tf.TensorSpec([BATCH]),
            tf.TensorSpec([BATCH])]

    @tf.function(input_signature=spec)
    def train(x: Any, ya: Any, yb: Any, wa: Any, wb: Any) -> Any:
        return net.train_step((x, {"a": ya, "b": yb}, {"a": wa, "b": wb}))

    train.get_concrete_function()  # builds the compiled loss and the metrics, whose variables are saved below
    module = tf.Module()
    module.net, module.train = net, train
    module.state_variables = [*net.variables, *net.optimizer.variables]
    # the per-output loss trackers live on the compiled loss, which Keras keeps private
    module.tracked = [*net.metrics_variables, *net._compile_loss.variables]
    tf.saved_model.save(module, str(export_dir), signatures={"train": train.get_concrete_function()})
    return [v.path for v in module.state_variables], [v.path for v in module.tracked]


def _data() -> list[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(8)
    return [(rng.normal(size=(BATCH, 5)).astype(np.float32), rng.normal(size=(BATCH, 1)).astype(np.float32),
             rng.normal(size=(BATCH, 1)).astype(np.float32), np.full(BATCH, wa, np.float32),
             np.full(BATCH, wb, np.float32)) for wa, wb in WEIGHTS]


def _run(export_dir: Path, names: list[str], *, guard_by_hand: bool) -> list[dict[str, np.ndarray]]:
    """Every variable (model, optimizer, loss trackers, metrics) after each step."""
    loaded = tf.saved_model.load(str(export_dir))
    variables = dict(zip(names, loaded.state_variables))
    tracked = {f"tracked/{k}": v for k, v in enumerate(loaded.tracked)}
    out = []
    for (x, ya, yb, wa, wb), weights in zip(_data(), WEIGHTS):
        before = {n: v.numpy() for n, v in variables.items()}
        loaded.signatures["train"](x=x, ya=ya, yb=yb, wa=wa, wb=wb)
        if guard_by_hand:
            restore_masked(variables, before, masked_by(weights))
        out.append({n: v.numpy() for n, v in [*variables.items(), *tracked.items()]})
    return out


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_a_compiled_models_train_step_is_guarded_bit_for_bit(optimizer: str, tmp_path: Path) -> None:
    tf.config.experimental.enable_op_determinism()
    src = tmp_path / "net"
    names, tracked = _build(src, optimizer)
    assert len(tracked) >= 6, tracked  # loss trackers and metrics: state the step writes besides the optimizer's
    out, report = rewrite(src, tmp_path, "version: 1\nguard: {}\n")
    assert report["counts"]["guarded"] == 6 and report["counts"]["skipped"] == 0, report["counts"]
    assert sorted(s["variable"] for s in report["sites"]) == sorted(
        f"{layer}/{part}" for layer in ("shared", "head_a", "head_b") for part in ("kernel", "bias"))
    reference = _run(src, names, guard_by_hand=True)
    original = _run(src, names, guard_by_hand=False)
    rewritten = _run(out, names, guard_by_hand=False)
    assert any(not np.array_equal(o["head_b/kernel"], r["head_b/kernel"]) for o, r in zip(original, reference)), \
        "the guard never changes anything here"
    for step, (ref, got) in enumerate(zip(reference, rewritten)):
        for name in ref:
            assert np.array_equal(ref[name], got[name]), (step, name)
