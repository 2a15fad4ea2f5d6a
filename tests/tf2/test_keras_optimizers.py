"""Rewritten Keras 3 SavedModels train like the construction-time reference, bit for bit.

For every built-in Keras 3 optimizer (tests/tf2/models.py KERAS_CASES: each class in
``keras.optimizers`` and the main variants; a new class fails
``test_every_keras_optimizer_has_a_case``) the two-task model is saved once per session with
its ``train`` signature and trained on one schedule: WARMUP steps where nothing is masked,
then STEPS masked steps (head_b masked, head_a masked, both trained, both masked).

- The reference (tests/tf2/reference.py) is validated: guarding every variable, it trains
  exactly like the original SavedModel while nothing is masked, bit for bit, every step; on
  the masked steps, with FULL, it holds the semantics' properties (a guarded variable whose
  gradient is all zero keeps its slots, and its value unless clipped; clipped norms are
  within max_norm; shared optimizer state advances as in the original), and the test could
  fail: masking happens, the unguarded original moves masked variables or slots (except
  where a zero gradient is a no-op), and the row clip bites.
- Rewritten by the CLI with FULL (guard all; clip groups: the embedding's touched rows, the
  shared kernel along dim 0, the head kernels whole; a global-norm clip of the
  non-embedding gradients) or with GUARD (guard all), the SavedModel, loaded and trained
  through its ``train`` signature, equals the reference of the same spec: every variable
  and every optimizer slot, bit for bit, after every step.
- Rewritten with GUARD, it trains exactly like the original while nothing is masked.

A variable whose update the JSON report lists as skipped (with a reason) is expected to be
left alone: the reference then excludes it from every rule. A skip without a reason, a
failed rewrite or a difference fails.

Every case runs all WARMUP + STEPS steps: the cost is in saving, loading and tracing (about
8-10 s per optimizer on 2 cores, so about 3 minutes for the file), not in the steps.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from . import models
from .reference import (
    CaseRuns,
    ClipGroup,
    GlobalNormClip,
    RewriteConfig,
    Selection,
    changed,
    check_report,
    rewrite_excluding_refused,
    first_difference,
)

STEPS = 16  # masked steps
WARMUP = 4  # unmasked steps before them
GUARD = RewriteConfig(guard=Selection(("*",)))
# Power-of-two norms: where no norm exceeds max_norm the clip's t * c / c is exact.
FULL = RewriteConfig(
    guard=Selection(("*",)),
    clip=(
        ClipGroup(Selection(("net/emb/*",)), max_norm=0.5, dims=(1,)),  # touched rows only
        ClipGroup(Selection(("net/shared/kernel",)), max_norm=1.0, dims=(0,)),
        ClipGroup(Selection(("net/head_*/kernel",)), max_norm=0.5),  # whole variable
    ),
    # Not the embedding: its gradient is an IndexedSlices with repeated rows, summed by
    # some optimizers before they use it and not by others.
    global_norm_clip=GlobalNormClip(0.25, Selection(("net/shared/*", "net/head_*/*"))),
)
# Optimizers whose update on an all-zero gradient leaves the variable and its slots as they
# are (the guard changes nothing there).
ZERO_GRADIENT_IS_A_NO_OP = {"SGD", "Adagrad", "Ftrl"}
NORM_SLACK = 1 + 1e-6
# FTRL recomputes the weights from its accumulators in the first step, far below max_norm.
SHRINKS_WEIGHTS = {"Ftrl"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: Any, tf_config: Any) -> Any:
    saved = models.session_models(tmp_path_factory)
    work = tmp_path_factory.mktemp("keras_rewrites")
    cache: dict[str, CaseRuns] = {}

    def get(case: str) -> CaseRuns:
        if case not in cache:
            cache[case] = CaseRuns(saved.get("keras", case), work / case, STEPS, WARMUP)
        return cache[case]

    return get


# --------------------------------------------------------------------------- coverage


def test_every_keras_optimizer_has_a_case() -> None:
    import keras

    base = keras.optimizers.Optimizer
    shipped = {
        name for name, obj in vars(keras.optimizers).items()
        if inspect.isclass(obj) and issubclass(obj, base)
    }  # fmt: skip
    covered = set(models.keras_case_classes().values())
    missing = shipped - covered - models.KERAS_NOT_A_CASE
    assert not missing, f"keras.optimizers classes with no case in tests/tf2/models.py: {missing}"
    assert covered <= shipped, covered - shipped


# --------------------------------------------------------------------------- the reference


@pytest.mark.parametrize("case", models.KERAS_CASES)
def test_reference_trains_like_the_original_when_nothing_is_masked(case: str, runs: Any) -> None:
    r: CaseRuns = runs(case)
    ref = r.reference(GUARD)
    assert not any(ref.all_zero[: r.warmup]), f"an unmasked step zeroed {ref.all_zero}"
    diff = first_difference(r.unmasked(r.original()), r.unmasked(ref.states), r.names,
                            ("original", "reference"))  # fmt: skip
    assert diff is None, f"{case}: {diff}"


def _clipped_by(path: str) -> list[ClipGroup]:
    return [g for g in FULL.clip if g.select.matches(path)]


def _norms(value: np.ndarray, dims: tuple[int, ...] | None) -> np.ndarray:
    v = value.astype(np.float64)
    return np.sqrt(np.sum(v * v, axis=dims))


@pytest.mark.parametrize("case", models.KERAS_CASES)
def test_reference_semantics_on_the_masked_schedule(case: str, runs: Any) -> None:
    r: CaseRuns = runs(case)
    ref = r.reference(FULL)
    plain = r.original()
    built_slots = r.saved.rebuild().slots
    steps = r.schedule
    variables = r.variables()
    assert any(ref.all_zero), "no step masks anything"
    assert set(variables) in ref.all_zero, "the step with both heads masked zeroes everything"

    guard_matters = False
    for t, zero in enumerate(ref.all_zero):
        before, after = ref.states[t], ref.states[t + 1]
        for var in zero:
            kept = list(built_slots[var]) + ([] if _clipped_by(var) else [var])
            moved = changed(before, after, kept)
            assert not moved, f"step {t}: {var!r} had an all-zero gradient, yet {moved} changed"
            if changed(plain[t], plain[t + 1], [var, *built_slots[var]]):
                guard_matters = True
        # shared optimizer state (iterations, learning rate) advances as in the original
        shared = [n for n in r.names if n not in variables
                  and not any(n in s for s in built_slots.values())]  # fmt: skip
        assert not changed(plain[t + 1], after, shared), (
            f"step {t}: shared state {changed(plain[t + 1], after, shared)} differs"
        )
        for group in FULL.clip:
            for var in variables:
                if not group.select.matches(var):
                    continue
                value = after[var]
                if var == "net/emb/embeddings":
                    value = value[np.unique(steps[t].ids)]
                norms = _norms(value, group.dims)
                assert np.all(norms <= group.max_norm * NORM_SLACK), (
                    f"step {t}: {var!r} over {group.max_norm}: {norms}"
                )
    if case not in ZERO_GRADIENT_IS_A_NO_OP:
        assert guard_matters, f"{case}: no masked variable or slot ever moved without the guard"
    if case in SHRINKS_WEIGHTS:
        return
    # the row clip bites: some touched embedding row is over max_norm without it
    emb_rows = [
        _norms(plain[t + 1]["net/emb/embeddings"][np.unique(s.ids)], (1,)).max()
        for t, s in enumerate(steps)
    ]
    assert max(emb_rows) > 0.5, emb_rows


# --------------------------------------------------------------------------- the rewrite


def _compare_with_reference(r: CaseRuns, name: str, config: RewriteConfig) -> None:
    rw, skipped, expected = rewrite_excluding_refused(r, name, config)
    if skipped is None:  # refused, with the reasons: nothing to train
        return
    ref = r.reference(expected)
    diff = first_difference(r.rewritten(name, rw), ref.states, r.names)
    note = f" (not rewritten: {sorted(skipped)})" if skipped else ""
    assert diff is None, f"{r.saved.case}, spec {name!r}{note}: {diff}"


@pytest.mark.parametrize("case", models.KERAS_CASES)
def test_rewritten_trains_like_the_reference(case: str, runs: Any) -> None:
    _compare_with_reference(runs(case), "full", FULL)


@pytest.mark.parametrize("case", models.KERAS_CASES)
def test_guard_only_rewrite_trains_like_the_original_when_nothing_is_masked(
    case: str, runs: Any
) -> None:
    r: CaseRuns = runs(case)
    if check_report(r.rewrite("guard", GUARD), r.variables()) is None:
        return  # refused, with the reasons
    diff = first_difference(r.unmasked(r.rewritten("guard")), r.unmasked(r.original()),
                            r.names, ("rewritten", "original"))  # fmt: skip
    assert diff is None, f"{case}: {diff}"


@pytest.mark.parametrize("case", models.KERAS_CASES)
def test_guard_only_rewrite_trains_like_the_reference(case: str, runs: Any) -> None:
    _compare_with_reference(runs(case), "guard", GUARD)


def test_rewritten_savedmodel_keeps_its_signatures(runs: Any) -> None:
    """The rewritten SavedModel still has ``train`` and ``infer``, and ``infer`` on the
    initial values answers as the original's."""
    import tensorflow as tf

    r: CaseRuns = runs("Adam")
    rw = r.rewrite("full", FULL)
    assert check_report(rw, r.variables()) is not None, "refused"
    original = tf.saved_model.load(str(r.saved.export_dir))
    rewritten = tf.saved_model.load(str(rw.out_dir))
    assert {"train", "infer"} <= set(rewritten.signatures), set(rewritten.signatures)
    ids = r.schedule[0].feed()["ids"]
    a = original.signatures["infer"](ids=ids)
    b = rewritten.signatures["infer"](ids=ids)
    for key in ("a", "b"):
        assert np.array_equal(a[key].numpy(), b[key].numpy()), key


def test_spec_names_are_variable_paths(runs: Any, tmp_path: Path) -> None:
    """A selector is a variable path (``variable.path``): a spec naming one head selects
    exactly that head's variables."""
    r: CaseRuns = runs("SGD-momentum")
    config = RewriteConfig(guard=Selection(("net/head_b/*",)))
    from .reference import rewrite

    rw = rewrite(r.saved.export_dir, config, tmp_path, "head_b")
    assert check_report(rw, r.variables()) is not None, "refused"
    guarded = {s["variable"] for s in rw.report["sites"] if "guard" in s.get("inserted", [])}
    assert guarded == {"net/head_b/kernel", "net/head_b/bias"}, rw.report["sites"]
