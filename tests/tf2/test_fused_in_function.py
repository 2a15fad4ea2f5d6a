"""tf.compat.v1 optimizers inside a tf.function: fused update ops in a FunctionDef.

The model of plain resource variables (tests/tf2/models.py ``build_v1``, the same two-task
network and variable paths as the Keras model) is trained by a ``tf.compat.v1.train``
optimizer inside the ``train`` tf.function, so the SavedModel's ``train`` FunctionDef holds
``ResourceApplyAdam``, ``ResourceApplyMomentum``, … for the dense gradients and
``ResourceSparseApply*`` (or the decomposed sparse Adam / GradientDescent update) for the
embedding. For every case in V1_CASES, on WARMUP unmasked then STEPS masked steps:

- the reference trains like the original while nothing is masked, bit for bit;
- rewritten with FULL (guard, three clip groups, global-norm clip) and with GUARD, the loaded
  SavedModel equals the reference of that spec, every variable and slot (and the beta
  powers), bit for bit, after every step; a variable the report skips (with a reason) is
  expected untouched;
- rewritten with GUARD, it trains exactly like the original while nothing is masked.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from . import models
from .reference import (
    CaseRuns,
    RewriteConfig,
    check_report,
    first_difference,
    rewrite_excluding_refused,
)
from .test_keras_optimizers import FULL, GUARD

STEPS = 16
WARMUP = 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory: Any, tf_config: Any) -> Any:
    saved = models.session_models(tmp_path_factory)
    work = tmp_path_factory.mktemp("v1_rewrites")
    cache: dict[str, CaseRuns] = {}

    def get(case: str) -> CaseRuns:
        if case not in cache:
            cache[case] = CaseRuns(saved.get("v1", case), work / case, STEPS, WARMUP)
        return cache[case]

    return get


def _library_ops(export_dir: Any) -> set[str]:
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((export_dir / "saved_model.pb").read_bytes())
    ops: set[str] = set()
    for mg in sm.meta_graphs:
        for fn in mg.graph_def.library.function:
            ops.update(n.op for n in fn.node_def)
    return ops


@pytest.mark.parametrize("case", models.V1_CASES)
def test_the_train_function_holds_fused_updates(case: str, runs: Any) -> None:
    ops = _library_ops(runs(case).saved.export_dir)
    fused = {op for op in ops if op.startswith(("ResourceApply", "ResourceSparseApply"))}
    assert fused, f"{case}: no fused update op in the library: {sorted(ops)}"


@pytest.mark.parametrize("case", models.V1_CASES)
def test_reference_trains_like_the_original_when_nothing_is_masked(case: str, runs: Any) -> None:
    r: CaseRuns = runs(case)
    ref = r.reference(GUARD)
    assert not any(ref.all_zero[: r.warmup]), ref.all_zero
    diff = first_difference(r.unmasked(r.original()), r.unmasked(ref.states), r.names,
                            ("original", "reference"))  # fmt: skip
    assert diff is None, f"{case}: {diff}"


@pytest.mark.parametrize("case", models.V1_CASES)
def test_reference_guards_and_clips(case: str, runs: Any) -> None:
    """The reference keeps a zero-gradient variable's slots, and the masked steps happen."""
    r: CaseRuns = runs(case)
    ref = r.reference(FULL)
    slots = r.saved.rebuild().slots
    assert set(r.variables()) in ref.all_zero
    for t, zero in enumerate(ref.all_zero):
        for var in zero:
            kept = [n for n in slots[var]
                    if not np.array_equal(ref.states[t][n], ref.states[t + 1][n])]  # fmt: skip
            assert not kept, f"step {t}: {var!r} had an all-zero gradient, yet {kept} changed"


def _compare_with_reference(r: CaseRuns, name: str, config: RewriteConfig) -> None:
    rw, skipped, expected = rewrite_excluding_refused(r, name, config)
    if skipped is None:  # refused, with the reasons: nothing to train
        return
    ref = r.reference(expected)
    diff = first_difference(r.rewritten(name, rw), ref.states, r.names)
    note = f" (not rewritten: {sorted(skipped)})" if skipped else ""
    assert diff is None, f"{r.saved.case}, spec {name!r}{note}: {diff}"


@pytest.mark.parametrize("case", models.V1_CASES)
def test_rewritten_trains_like_the_reference(case: str, runs: Any) -> None:
    _compare_with_reference(runs(case), "full", FULL)


@pytest.mark.parametrize("case", models.V1_CASES)
def test_guard_only_rewrite_trains_like_the_reference(case: str, runs: Any) -> None:
    _compare_with_reference(runs(case), "guard", GUARD)


@pytest.mark.parametrize("case", models.V1_CASES)
def test_guard_only_rewrite_trains_like_the_original_when_nothing_is_masked(
    case: str, runs: Any
) -> None:
    r: CaseRuns = runs(case)
    if check_report(r.rewrite("guard", GUARD), r.variables()) is None:
        return  # refused, with the reasons
    diff = first_difference(r.unmasked(r.rewritten("guard")), r.unmasked(r.original()),
                            r.names, ("rewritten", "original"))  # fmt: skip
    assert diff is None, f"{case}: {diff}"
