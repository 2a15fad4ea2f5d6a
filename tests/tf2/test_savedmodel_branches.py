"""Updates inside ``If`` branches: Keras 3 ``LossScaleOptimizer(Adam)`` applies in a branch.

The resource inputs of the ``If`` bind to the branch function's arguments, the update sites
are found in the branch (the gradient is a branch input) and guarded there. Steps: trained,
head b masked (kept bit for bit with its slots), an infinite loss (the loss-scale optimizer's
own skip: nothing moves but its scale), trained again; head a trains like the original.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .test_savedmodel_format import _rewrite, _spec

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

WB = [1.0, 0.0, np.inf, 1.0, 0.0]


def _build(out: Path) -> Path:
    keras.utils.set_random_seed(0)
    a, b = keras.layers.Dense(2, name="a"), keras.layers.Dense(1, name="b")
    x0 = tf.zeros([2, 3])
    a(x0), b(x0)
    opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.05), initial_scale=2.0**10)
    trainable = [*a.trainable_variables, *b.trainable_variables]
    opt.build(trainable)

    class Step(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.opt = a, b, opt

        @tf.function(input_signature=[tf.TensorSpec([2, 3]), tf.TensorSpec([2, 2]), tf.TensorSpec([2, 1]),
                                      tf.TensorSpec([])])
        def train(self, x: Any, ya: Any, yb: Any, wb: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((self.a(x) - ya) ** 2) + wb * tf.reduce_mean((self.b(x) - yb) ** 2)
                scaled = self.opt.scale_loss(loss)
            grads = tape.gradient(scaled, trainable)
            self.opt.apply_gradients(zip(grads, trainable))
            return {"loss": loss}

    step = Step()
    tf.saved_model.save(step, str(out), signatures={"train": step.train.get_concrete_function()})
    return out


def _train(path: Path) -> list[dict[str, np.ndarray]]:
    m = tf.saved_model.load(str(path))
    # Keras numbers the optimizers' name scopes per process ("adam_3/..."): keep the last part
    variables = {"loss_scale_optimizer/" + v.name.split("/")[-1]: v for v in m.opt._variables}  # noqa: SLF001
    variables.update({"adam/" + v.name.split("/")[-1]: v for v in m.opt.inner_optimizer._variables})  # noqa: SLF001
    variables.update({"a/kernel": m.a._kernel, "a/bias": m.a.bias, "b/kernel": m.b._kernel, "b/bias": m.b.bias})
    rng = np.random.default_rng(3)
    states = [{k: v.numpy().copy() for k, v in variables.items()}]
    for wb in WB:
        m.signatures["train"](x=rng.uniform(-1, 1, (2, 3)).astype(np.float32),
                              ya=rng.uniform(-1, 1, (2, 2)).astype(np.float32),
                              yb=rng.uniform(-1, 1, (2, 1)).astype(np.float32), wb=np.float32(wb))
        states.append({k: v.numpy().copy() for k, v in variables.items()})
    return states


def test_loss_scale_optimizer_branch_is_guarded(tmp_path: Path) -> None:
    src = _build(tmp_path / "src")
    out = tmp_path / "out"
    report = tmp_path / "r.json"
    assert _rewrite(src, _spec(tmp_path, "version: 1\nguard:\n  variables: ['b/*']\n"), out,
                    "--report", str(report)) == 0
    rows = json.loads(report.read_text())["sites"]
    assert {r["variable"] for r in rows if r["inserted"] == ["guard"]} == {"b/kernel", "b/bias"}, rows
    assert all(r["update"].startswith("cond_true") or ", cond_true" in r["update"] for r in rows), rows
    original, rewritten = _train(src), _train(out)
    moved = lambda s, t, keys: [k for k in keys if not np.array_equal(s[t + 1][k], s[t][k])]  # noqa: E731
    keys = list(original[0])
    b_keys = [k for k in keys if k.startswith("b/")]
    b_keys += [k for k in keys if k.startswith("adam/b_")]
    assert len(b_keys) == 6, keys
    for t, wb in enumerate(WB):
        if wb == 1.0 and t == 0:
            for k in keys:
                np.testing.assert_array_equal(rewritten[t + 1][k], original[t + 1][k], err_msg=k)
        if np.isinf(wb):
            for states, who in ((original, "original"), (rewritten, "rewritten")):
                changed = moved(states, t, keys)
                assert changed and all(k.startswith("loss_scale_optimizer/") for k in changed), (who, changed)
        elif wb == 0.0:
            assert not moved(rewritten, t, b_keys), f"head b moved in masked step {t}"
            assert moved(original, t, b_keys), "the original moves head b at a zero gradient"
            assert "adam/iteration:0" in moved(rewritten, t, keys), "shared state advances"
        for k in keys:
            if k.startswith("a/"):
                np.testing.assert_array_equal(rewritten[t + 1][k], original[t + 1][k], err_msg=f"{k} step {t}")
