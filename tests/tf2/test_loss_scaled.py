"""Loss-scaled steps: the updates sit in the branch of the loss-scale optimizer's ``If``.

Keras 3 ``LossScaleOptimizer`` around Adam, and tf.compat.v1
``MixedPrecisionLossScaleOptimizer`` around AdamOptimizer (tests/tf2/models.py
``build_loss_scaled``; dynamic scale 2**10, grown every 4 finite steps). The schedule is
WARMUP unmasked steps, then STEPS masked steps, one of which (INF_STEP) has an infinite
loss weight, so that its gradients are not finite and the loss-scale optimizer skips it.

- the reference trains like the original while nothing is masked, bit for bit;
- the original, the reference and the guard-only rewrite all skip the non-finite step:
  nothing moves but the loss scale (halved) and its good-step counter (reset);
- rewritten with GUARD and with GUARD_CLIP (guard, the embedding's touched rows, the head
  kernels), the loaded SavedModel equals the reference of that spec, every variable, slot
  and loss-scale variable, bit for bit, after every step; a variable the report skips
  (with a reason) is expected untouched;
- rewritten with GUARD, it trains exactly like the original while nothing is masked.

No global-norm clip here: in a loss-scaled step the gradients the update consumes are
unscaled inside the optimizer, where the reference does not reach.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from . import models
from .reference import (
    CaseRuns,
    ClipGroup,
    RewriteConfig,
    Selection,
    changed,
    check_report,
    rewrite_excluding_refused,
    first_difference,
)

STEPS = 16
WARMUP = 4
INF_STEP = WARMUP + 3  # a step that trains both heads, made non-finite
GUARD = RewriteConfig(guard=Selection(("*",)))
GUARD_CLIP = RewriteConfig(
    guard=Selection(("*",)),
    clip=(
        ClipGroup(Selection(("net/emb/*",)), max_norm=0.5, dims=(1,)),
        ClipGroup(Selection(("net/head_*/kernel",)), max_norm=0.5),
    ),
)
CASES = tuple(
    c for c in models.LOSS_SCALED_CASES
    if not c.startswith("v1-") or models.has_v1_loss_scale_optimizer()
)  # fmt: skip


def _schedule() -> list[models.Step]:
    steps = models.schedule(STEPS, warmup=WARMUP)
    s = steps[INF_STEP]
    assert np.all(s.loss_weights > 0), s.loss_weights
    steps[INF_STEP] = replace(s, loss_weights=np.asarray([np.inf, 1.0], np.float32))
    return steps


@pytest.fixture(scope="module")
def runs(tmp_path_factory: Any, tf_config: Any) -> Any:
    saved = models.session_models(tmp_path_factory)
    work = tmp_path_factory.mktemp("loss_scaled_rewrites")
    cache: dict[str, CaseRuns] = {}

    def get(case: str) -> CaseRuns:
        if case not in cache:
            cache[case] = CaseRuns(saved.get("loss_scaled", case), work / case, STEPS, WARMUP,
                                   schedule=_schedule())  # fmt: skip
        return cache[case]

    return get


def test_the_v1_loss_scale_optimizer_exists() -> None:
    """TensorFlow 2.21 still ships tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer;
    when a release drops it, its case leaves CASES and this test says so."""
    assert models.has_v1_loss_scale_optimizer()


@pytest.mark.parametrize("case", CASES)
def test_reference_trains_like_the_original_when_nothing_is_masked(case: str, runs: Any) -> None:
    r: CaseRuns = runs(case)
    ref = r.reference(GUARD)
    diff = first_difference(r.unmasked(r.original()), r.unmasked(ref.states), r.names,
                            ("original", "reference"))  # fmt: skip
    assert diff is None, f"{case}: {diff}"


def _check_skipped_step(r: CaseRuns, states: list[models.State], who: str) -> None:
    names = r.saved.rebuild().scale_names
    scale = next(n for n in names if "scale" in n.rsplit("/", 1)[-1])
    counter = [n for n in names if n != scale]
    before, after = states[INF_STEP], states[INF_STEP + 1]
    moved = changed(before, after, [n for n in r.names if n not in names])
    assert not moved, f"{who}: the non-finite step moved {moved}"
    assert after[scale] == before[scale] / 2, (who, before[scale], after[scale])
    for n in counter:
        assert after[n] == 0, (who, n, after[n])
    # and the scale grows again: the run is not stuck skipping
    assert any(states[t + 1][scale] > states[t][scale] for t in range(len(states) - 1)), who


@pytest.mark.parametrize("case", CASES)
def test_the_non_finite_step_moves_only_the_loss_scale(case: str, runs: Any) -> None:
    r: CaseRuns = runs(case)
    _check_skipped_step(r, r.original(), "original")
    _check_skipped_step(r, r.reference(GUARD).states, "reference")
    if check_report(r.rewrite("guard", GUARD), r.variables()) is not None:
        _check_skipped_step(r, r.rewritten("guard"), "rewritten")


@pytest.mark.parametrize("case", CASES)
def test_reference_guards_on_masked_steps(case: str, runs: Any) -> None:
    r: CaseRuns = runs(case)
    ref = r.reference(GUARD)
    plain = r.original()
    slots = r.saved.rebuild().slots
    assert set(r.variables()) in ref.all_zero
    matters = False
    for t, zero in enumerate(ref.all_zero):
        for var in zero:
            kept = [var, *slots[var]]
            assert not changed(ref.states[t], ref.states[t + 1], kept), (t, var)
            matters |= bool(changed(plain[t], plain[t + 1], kept))
    assert matters, "the unguarded original never moved a masked variable or slot"


@pytest.mark.parametrize("spec", ["guard", "guard_clip"])
@pytest.mark.parametrize("case", CASES)
def test_rewritten_trains_like_the_reference(case: str, spec: str, runs: Any) -> None:
    r: CaseRuns = runs(case)
    config = {"guard": GUARD, "guard_clip": GUARD_CLIP}[spec]
    rw, skipped, expected = rewrite_excluding_refused(r, spec, config)
    if skipped is None:  # refused, with the reasons: nothing to train
        return
    ref = r.reference(expected)
    diff = first_difference(r.rewritten(spec, rw), ref.states, r.names)
    note = f" (not rewritten: {sorted(skipped)})" if skipped else ""
    assert diff is None, f"{case}, spec {spec!r}{note}: {diff}"


@pytest.mark.parametrize("case", CASES)
def test_guard_only_rewrite_trains_like_the_original_when_nothing_is_masked(
    case: str, runs: Any
) -> None:
    r: CaseRuns = runs(case)
    if check_report(r.rewrite("guard", GUARD), r.variables()) is None:
        return  # refused, with the reasons
    diff = first_difference(r.unmasked(r.rewritten("guard")), r.unmasked(r.original()),
                            r.names, ("rewritten", "original"))  # fmt: skip
    assert diff is None, f"{case}: {diff}"
