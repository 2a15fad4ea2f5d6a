"""Fused ``ResourceApply*`` ops inside a function: the guard snapshots, runs and restores.

Two plain resource variables, one per head, trained by ``tf.compat.v1.train`` Momentum and
Adam inside a ``tf.function`` (their updates are ``ResourceApplyMomentum`` /
``ResourceApplyAdam``, which move the variable and its slots even at a zero gradient). With
the guard on head b, a step that masks head b keeps it and its slots bit for bit, every other
step and head a train exactly like the original, and the shared beta powers advance.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .test_savedmodel_format import _rewrite, _spec

tf = pytest.importorskip("tensorflow")

MASKS = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]


def _build(out: Path, which: str) -> Path:
    # the optimizer is not tracked (a loaded SavedModel cannot restore a v1 optimizer's slots);
    # its variables are, by name, so that the train function's captures are saved
    opt = (tf.compat.v1.train.MomentumOptimizer(0.1, 0.9) if which == "momentum"
           else tf.compat.v1.train.AdamOptimizer(0.05))

    class Step(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.a = tf.Variable(tf.constant([[0.3, -0.2], [0.1, 0.4]]), name="a")
            self.b = tf.Variable(tf.constant([0.5, -0.7]), name="b")
            with tf.init_scope():
                opt._create_slots([self.a, self.b])  # noqa: SLF001
            names = sorted(opt.get_slot_names())
            self.slots = {f"{v}_{n}": opt.get_slot(var, n)
                          for v, var in (("a", self.a), ("b", self.b)) for n in names}
            self.extra = {n: v for (n, _), v in opt._non_slot_dict.items()}  # noqa: SLF001

        @tf.function(input_signature=[tf.TensorSpec([2]), tf.TensorSpec([])])
        def train(self, x: Any, wb: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.tanh(tf.linalg.matvec(self.a, x)) ** 2) + wb * tf.reduce_sum((self.b * x) ** 2)
            grads = tape.gradient(loss, [self.a, self.b])
            opt.apply_gradients(zip(grads, [self.a, self.b]))
            return {"loss": loss}

    step = Step()
    tf.saved_model.save(step, str(out), signatures={"train": step.train.get_concrete_function()})
    return out


def _state(m: Any) -> dict[str, np.ndarray]:
    out = {"a": m.a.numpy().copy(), "b": m.b.numpy().copy()}
    out.update({k: v.numpy().copy() for k, v in m.slots.items()})
    out.update({f"extra/{k}": v.numpy().copy() for k, v in m.extra.items()})
    return out


def _train(path: Path) -> list[dict[str, np.ndarray]]:
    m = tf.saved_model.load(str(path))
    states = [_state(m)]
    for t, wb in enumerate(MASKS):
        x = np.array([0.5 + t, -1.0 + 0.25 * t], np.float32)
        m.signatures["train"](x=x, wb=np.float32(wb))
        states.append(_state(m))
    return states


@pytest.mark.parametrize("which", ["momentum", "adam"])
def test_fused_guard_keeps_var_and_slots_on_masked_steps(tmp_path: Path, which: str) -> None:
    src = _build(tmp_path / "src", which)
    out = tmp_path / "out"
    assert _rewrite(src, _spec(tmp_path, "version: 1\nguard:\n  variables: ['b']\n"), out,
                    "--report", str(tmp_path / "r.json")) == 0
    import json

    rows = json.loads((tmp_path / "r.json").read_text())["sites"]
    assert {r["variable"]: r["inserted"] for r in rows} == {"a": [], "b": ["guard"]}
    assert all(r["kind"].startswith("ResourceApply") for r in rows)
    original, rewritten = _train(src), _train(out)
    b_state = [k for k in original[0] if k == "b" or k.startswith("b_")]
    assert len(b_state) == (2 if which == "momentum" else 3)
    for t, wb in enumerate(MASKS):
        now, before = rewritten[t + 1], rewritten[t]
        for k in now:
            if not k.startswith("b") or wb == 1.0 and t == 0:
                np.testing.assert_array_equal(now[k], original[t + 1][k], err_msg=f"{k} step {t}")
        if wb == 0.0:
            for k in b_state:
                np.testing.assert_array_equal(now[k], before[k], err_msg=f"{k} moved in masked step {t}")
            # the original does move b (momentum / Adam's moments) at a zero gradient
            assert any(not np.array_equal(original[t + 1][k], original[t][k]) for k in b_state)
        else:
            assert not np.array_equal(now["b"], before["b"])
