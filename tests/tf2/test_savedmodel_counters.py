"""``guard.counters`` in SavedModels whose step lies in a called function or a branch, and
loaded the TensorFlow 1 way.

The two-task network of tests/tf2/models.py: ``net/head_a/*`` learns only from task a,
``net/head_b/*`` only from task b, ``net/shared/*`` and ``net/emb/embeddings`` from both. A
loss weight of 0 masks a task, so a variable's gradient is all zero exactly on the steps
that mask every task it learns from: that is the reference count of ``zero``, written here
from the model's structure, not from the rewrite. The schedule (models.schedule) masks a or
b or both in some steps and neither in others, and has no non-finite gradient, so every
``nonfinite`` count is 0.

- ``v1``: a tf.compat.v1 Adam inside the ``train`` tf.function (fused ``ResourceApplyAdam``,
  the decomposed sparse update), the step in a function the signature's wrapper calls: the
  counter's handle is passed down that call. Loaded with ``tf.saved_model.load`` and with
  ``tf.compat.v1.saved_model.load`` into a Session (which runs the SavedModel's init op: the
  counters start at 0 there too).
- ``loss_scaled``: the updates in the apply branch of the loss-scale optimizer's ``If``, one
  step made non-finite (an infinite loss weight): the loss-scale optimizer skips that step
  itself, the branch with the guard does not run, and nothing is counted.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from . import models
from .reference import MODEL_VARIABLES

tf = pytest.importorskip("tensorflow")

SPEC = "version: 1\nguard:\n  when: zero_or_nonfinite\n  counters: true\n"
LEARNS_FROM = {"net/head_a/kernel": (0,), "net/head_a/bias": (0,), "net/head_b/kernel": (1,),
               "net/head_b/bias": (1,), "net/shared/kernel": (0, 1), "net/shared/bias": (0, 1),
               "net/emb/embeddings": (0, 1)}  # fmt: skip


def expected(steps: list[models.Step]) -> dict[str, int]:
    out = {}
    for name in MODEL_VARIABLES:
        finite = [s for s in steps if np.isfinite(s.loss_weights).all()]
        out[f"{name}/optrewrite_skipped_zero"] = sum(all(s.loss_weights[t] == 0 for t in LEARNS_FROM[name])
                                                     for s in finite)
        out[f"{name}/optrewrite_skipped_nonfinite"] = 0
    return out


def _rewrite(src: Path, work: Path) -> Path:
    from optrewrite.api import rewrite_file

    work.mkdir(parents=True, exist_ok=True)
    spec = work / "spec.yaml"
    spec.write_text(SPEC)
    out = work / "out"
    report = rewrite_file(src, spec, output=out)
    assert sorted(n for s in report.sites for n in s.state) == sorted(expected([]))
    return out


def _count_tf2(out: Path, steps: list[models.Step]) -> dict[str, int]:
    loaded = tf.saved_model.load(str(out))
    assert {int(v) for v in loaded.signatures["optrewrite_counters"]().values()} == {0}
    for s in steps:
        loaded.signatures["train"](**s.feed())
    return {k: int(v) for k, v in loaded.signatures["optrewrite_counters"]().items()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: Any) -> models.SavedModels:
    return models.session_models(tmp_path_factory)


def test_counts_through_a_called_function(saved: models.SavedModels, tmp_path: Path) -> None:
    steps = models.schedule(12, warmup=2)
    out = _rewrite(saved.get("v1", "Adam").export_dir, tmp_path)
    want = expected(steps)
    assert 0 < max(want.values()) < len(steps)
    assert _count_tf2(out, steps) == want


def test_counts_when_loaded_into_a_session(saved: models.SavedModels, tmp_path: Path, tf_config: Any) -> None:
    steps = models.schedule(12, warmup=2)
    out = _rewrite(saved.get("v1", "Adam").export_dir, tmp_path)
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph, config=tf_config) as sess:
        meta = tf.compat.v1.saved_model.load(sess, ["serve"], str(out))
        train, read = meta.signature_def["train"], meta.signature_def["optrewrite_counters"]
        fetch = {k: v.name for k, v in read.outputs.items()}
        assert set(sess.run(fetch).values()) == {0}
        for s in steps:
            feed = {train.inputs[k].name: v for k, v in
                    (("ids", s.ids), ("targets", s.targets), ("loss_weights", s.loss_weights))}
            sess.run(train.outputs["loss"].name, feed)
        got = {k: int(v) for k, v in sess.run(fetch).items()}
    assert got == expected(steps)


@pytest.mark.parametrize("case", [c for c in models.LOSS_SCALED_CASES
                                  if not c.startswith("v1-") or models.has_v1_loss_scale_optimizer()])
def test_counts_in_the_loss_scale_branch(saved: models.SavedModels, tmp_path: Path, case: str) -> None:
    steps = models.schedule(12, warmup=2)
    inf_step = 5  # trains both heads; made non-finite, the loss-scale optimizer skips it
    assert np.all(steps[inf_step].loss_weights > 0)
    steps[inf_step] = replace(steps[inf_step], loss_weights=np.asarray([np.inf, 1.0], np.float32))
    out = _rewrite(saved.get("loss_scaled", case).export_dir, tmp_path)
    want = expected(steps)
    assert 0 < max(want.values())
    assert _count_tf2(out, steps) == want
