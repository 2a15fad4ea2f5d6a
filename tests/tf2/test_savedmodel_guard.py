"""``guard.when`` in SavedModels: zero, nonfinite and zero_or_nonfinite gradients skip an update.

One tiny Keras 3 two-head model under Adam (the round-trip model of
test_savedmodel_format.py); head b's loss weight is 1 (trains), 0 (all-zero gradient), inf or
NaN (non-finite gradient) per step. Head a never sees head b's weight, so it trains exactly
as in the original whatever the rule; head b and its two Adam slots keep their values bit for
bit exactly in the steps the rule skips, and train like the original otherwise.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .test_savedmodel_format import _build, _rewrite, _spec, _train

tf = pytest.importorskip("tensorflow")

MASKS = [1.0, np.inf, 1.0, np.nan, 0.0, 1.0, -np.inf]
SKIPS = {
    "zero": {0.0},
    "nonfinite": {"inf", "nan"},
    "zero_or_nonfinite": {0.0, "inf", "nan"},
}


def _kind(mask: float) -> Any:
    if np.isnan(mask):
        return "nan"
    if np.isinf(mask):
        return "inf"
    return mask


@pytest.fixture(scope="module")
def adam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tf.config.experimental.enable_op_determinism()
    return _build(tmp_path_factory.mktemp("guard_when") / "adam", "adam")


@pytest.fixture(scope="module")
def original(adam: Path) -> list[dict[str, np.ndarray]]:
    return _train(adam, MASKS)


def _head_b_slots(states: list[dict[str, np.ndarray]]) -> set[str]:
    """Head b's Adam slots, told apart by shape: its kernel's [3, 1] and its bias's [1]."""
    first = states[0]
    return {k for k, v in first.items() if k.startswith("opt/") and v.shape in ((3, 1), (1,))}


@pytest.mark.parametrize("when", sorted(SKIPS))
def test_guard_when_skips_exactly_its_steps(adam: Path, original: list[dict[str, np.ndarray]],
                                            tmp_path: Path, when: str) -> None:
    out = tmp_path / "out"
    spec = _spec(tmp_path, f"version: 1\nguard:\n  variables: ['net/head_b/*']\n  when: {when}\n")
    assert _rewrite(adam, spec, out) == 0
    rewritten = _train(out, MASKS)
    head_b = {k for k in original[0] if k.startswith("net/head_b/")} | _head_b_slots(original)
    assert len(head_b) == 2 + 4
    initial = {k: v.numpy().copy() for k, v in _variables_of(adam).items()}
    skipped_any = False
    for step, mask in enumerate(MASKS):
        before = rewritten[step - 1] if step else initial
        now = rewritten[step]
        for k in now:
            if k.startswith("net/head_a/"):
                np.testing.assert_array_equal(now[k], original[step][k], err_msg=f"{k} step {step}")
        if _kind(mask) in SKIPS[when]:
            skipped_any = True
            for k in head_b:
                np.testing.assert_array_equal(now[k], before[k], err_msg=f"{when}: {k} moved in step {step}")
            assert not np.array_equal(now["opt/0"], before["opt/0"]), "the iteration counter advances"
        else:
            moved = [k for k in head_b if not np.array_equal(now[k], before[k])]
            assert moved, f"{when}: head b did not train in step {step} (mask {mask})"
    assert skipped_any
    if "nonfinite" in when:
        for k in head_b:
            assert np.isfinite(rewritten[-1][k]).all(), k
    else:  # the zero rule lets a non-finite gradient through, as the original does
        assert not all(np.isfinite(rewritten[-1][k]).all() for k in head_b)


def _variables_of(path: Path) -> dict[str, Any]:
    from .test_savedmodel_format import _variables

    return _variables(tf.saved_model.load(str(path)))


def test_guard_when_is_part_of_the_plan(adam: Path, tmp_path: Path) -> None:
    zero = _spec(tmp_path, "version: 1\nguard:\n  variables: ['net/head_b/*']\n", "zero.yaml")
    nonfinite = _spec(tmp_path, "version: 1\nguard:\n  variables: ['net/head_b/*']\n  when: nonfinite\n", "nf.yaml")
    assert _rewrite(adam, nonfinite, tmp_path / "one") == 0
    assert _rewrite(tmp_path / "one", nonfinite, tmp_path / "two") == 0  # rerun: nothing to do
    assert (tmp_path / "one" / "saved_model.pb").read_bytes() == (tmp_path / "two" / "saved_model.pb").read_bytes()
    assert _rewrite(tmp_path / "one", zero, tmp_path / "three") == 2  # another rule: refused
