"""Keras 3 optimizer options that change the step's shape: ``use_ema`` and ``gradient_accumulation_steps``.

- ``use_ema`` (with ``ema_overwrite_frequency``): the moving averages are optimizer state,
  not slots of a variable: they advance every step toward the variable's value, which a
  guarded step keeps. The overwrite of each variable from its average every N steps (in an
  ``If`` branch, with no gradient) is no update site: the report lists it as skipped, with
  the reason, and it runs as before.
- ``gradient_accumulation_steps``: one ``If`` branch adds the step's gradient to an
  accumulator, the other applies the accumulated mean. The update's gradient is not one
  step's, so the guard cannot test it: every such update is skipped with the reason, and a
  spec that selects only those is refused (exit 2, one line, nothing written).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from optrewrite.cli import main

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

GUARD_ALL = "version: 1\nguard:\n  variables: ['*']\n"
EMA_MOMENTUM = 0.9


def _build(out: Path, opt: Any) -> Path:
    """Dense(2) -> Dense(1), loss scaled by the input ``w`` (0: every gradient is zero)."""
    keras.utils.set_random_seed(0)
    dense, head = keras.layers.Dense(2), keras.layers.Dense(1)
    dense(tf.zeros([2, 3]))
    head(tf.zeros([2, 2]))
    variables = dense.trainable_variables + head.trainable_variables
    opt.build(variables)

    class Step(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.dense, self.head, self.opt = dense, head, opt

        @tf.function(input_signature=[tf.TensorSpec([2, 3]), tf.TensorSpec([2, 1]), tf.TensorSpec([], tf.float32)])
        def train(self, x: Any, y: Any, w: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = w * tf.reduce_mean((self.head(self.dense(x)) - y) ** 2)
            grads = tape.gradient(loss, variables)
            self.opt.apply_gradients(zip(grads, variables))
            return {"loss": loss}

    step = Step()
    tf.saved_model.save(step, str(out), signatures={"train": step.train.get_concrete_function()})
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keras_options")
    return {
        "ema": _build(root / "ema", keras.optimizers.SGD(0.1, momentum=0.9, use_ema=True,
                                                        ema_momentum=EMA_MOMENTUM, ema_overwrite_frequency=3)),
        "accumulation": _build(root / "accumulation", keras.optimizers.Adam(0.05, gradient_accumulation_steps=2)),
    }


def _states(path: Path, weights: list[float]) -> list[dict[str, np.ndarray]]:
    """The train signature's variables (by their checkpoint name) before and after each step."""
    loaded = tf.saved_model.load(str(path))
    train = loaded.signatures["train"]
    x = tf.constant(np.arange(6, dtype=np.float32).reshape(2, 3) / 5)
    y = tf.constant([[1.0], [2.0]])

    def snap() -> dict[str, np.ndarray]:
        return {f"{k}:{v.name}": v.numpy().copy() for k, v in enumerate(train.variables)}

    out = [snap()]
    for w in weights:
        train(x=x, y=y, w=tf.constant(w))
        out.append(snap())
    return out


def test_ema_averages_follow_the_kept_variable(saved: dict[str, Path], tmp_path: Path) -> None:
    spec, out, report = tmp_path / "spec.yaml", tmp_path / "out", tmp_path / "report.json"
    spec.write_text(GUARD_ALL)
    assert main([str(saved["ema"]), "--spec", str(spec), "-o", str(out), "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert [s["variable"] for s in data["sites"] if s["inserted"] == ["guard"]] == [
        "dense/kernel", "dense/bias", "head/kernel", "head/bias"]
    overwrites = {s["variable"]: s["reason"] for s in data["skipped"]}
    assert set(overwrites) == {"dense/kernel", "dense/bias", "head/kernel", "head/bias"}, data["skipped"]
    assert all("no gradient" in r for r in overwrites.values()), overwrites

    weights = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]  # overwrite after steps 3 and 6 (iterations 3, 6)
    plain, guarded = _states(saved["ema"], weights), _states(out, weights)
    names = list(plain[0])
    model = [n for n in names if n.split(":")[1].rsplit("/", 1)[-1] in ("kernel", "bias")]
    averages = [n for n in names if "average" in n]
    assert len(model) == 4 and len(averages) == 4, names
    moved = False
    for t, w in enumerate(weights):
        before, after = guarded[t], guarded[t + 1]
        if w == 0.0 and (t + 1) % 3:
            for n in model:  # the variables keep their values (the overwrite aside)
                np.testing.assert_array_equal(after[n], before[n], err_msg=f"step {t}: {n}")
            moved |= any(not np.array_equal(plain[t + 1][n], plain[t][n]) for n in model)
        for var, avg in zip(sorted(model), sorted(averages)):
            # every step the average moves toward the variable's new value (Keras starts it at
            # the variable: momentum 0 in the first step)
            momentum = EMA_MOMENTUM if t else 0.0
            expected = before[avg] * momentum + after[var] * (1 - momentum)
            if (t + 1) % 3 == 0:  # the overwrite: the variable takes the new average
                np.testing.assert_allclose(after[var], after[avg], rtol=0, atol=0)
            else:
                np.testing.assert_allclose(after[avg], expected, rtol=1e-6, atol=1e-7, err_msg=f"step {t}")
    assert moved, "the unguarded original did not move a variable on a zero-gradient step"


def test_gradient_accumulation_is_refused_with_the_reason(saved: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    spec, out = tmp_path / "spec.yaml", tmp_path / "out"
    spec.write_text(GUARD_ALL)
    capsys.readouterr()
    assert main([str(saved["accumulation"]), "--spec", str(spec), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gradient accumulation" in err, err
    assert not out.exists()
    # and explain lists every update as skipped, with the reason
    assert main(["explain", str(saved["accumulation"])]) == 0
    text = capsys.readouterr().out
    assert text.count("gradient accumulation") == 4, text
