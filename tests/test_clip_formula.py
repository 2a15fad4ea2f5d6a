"""``clip: {formula: exact, on_skipped_steps: false}`` on every format, against numpy.

The fed-gradient step of tests/fed_step.py (TensorFlow 1 on resource and ref variables,
TensorFlow 2 with Keras 3 SGD, ONNX lowered), rewritten by one spec and trained for 16 steps
in which each variable's gradient is all zero (masked) in some. The clip groups:

- ``w`` (4 x 3) along dims [1] to 1.3 (not a power of two: ``t * c / c`` moves bits);
- ``big`` (3,) as a whole to 0.3, from near 5.5e3: the seed formula's ``v -= v - clipped``
  cancels there (its norm comes out 0.30013), the exact one does not;
- ``emb`` (6 x 2, TensorFlow only), a sparse gradient with a repeated index: only the
  touched rows are clipped, each once.

The reference below is numpy float32 with the formulas written out: TensorFlow must match it
bit for bit, ONNX (lowered, in onnxruntime) to 1e-6 relative.

The formulas (optrewrite/tf/passes/clip_by_norm.py):

- seed: ``l2norm = sqrt(sum(t * t))`` (0 stays 0), ``v = t - (t - t * c / max(l2norm, c))``;
- exact: ``norm = sqrt(sum(t * t))``, ``v = t * where(norm > c, c / norm, 1)``, written only
  when some norm exceeds c (``t * 1`` is ``t``).

A masked step skips the update (the guard); with ``on_skipped_steps: false`` it skips the
clip too, so the variable keeps its bits.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from optrewrite.api import rewrite_file
from tests.fed_step import (DENSE, INIT, STEPS, State, Step, assert_bitwise, assert_close, f32, keras_savedmodel,
                            onnx_step, run_onnx, run_tf1, run_tf2, schedule, tf1_graph, update)

CLIPS = {"w": ([1], 1.3), "big": (None, 0.3), "emb": ([1], 1.0)}  # dims, max_norm
CASES = [("exact", True), ("exact", False), ("seed", False)]
IDS = [f"{f}-{o}" for f, o in CASES]


def spec_text(formula: str, on_skipped_steps: bool, variables: list[str]) -> str:
    text = "version: 1\nguard:\nclip:\n"
    for name in variables:
        dims, max_norm = CLIPS[name]
        text += f"  - variables: [{name}]\n    max_norm: {max_norm}\n    formula: {formula}\n"
        text += f"    on_skipped_steps: {str(on_skipped_steps).lower()}\n"
        if dims is not None:
            text += f"    dims: {dims}\n"
    return text


# --------------------------------------------------------------------------- the reference


def _sum(x: np.ndarray, axes: list[int] | None) -> np.ndarray:
    """Sum over ``axes`` (all when None), keeping them, element after element in float32."""
    axes = list(range(x.ndim)) if axes is None else axes
    moved = np.moveaxis(x, axes, list(range(x.ndim - len(axes), x.ndim)))
    flat = moved.reshape(*moved.shape[: x.ndim - len(axes)], -1)
    total = np.zeros(flat.shape[:-1], f32)
    for k in range(flat.shape[-1]):
        total = total + flat[..., k]
    return np.expand_dims(total, tuple(axes)) if x.ndim else total


def clip(t: np.ndarray, max_norm: float, dims: list[int] | None, formula: str) -> np.ndarray:
    c = f32(max_norm)
    l2sum = _sum(t * t, dims)
    with np.errstate(divide="ignore", invalid="ignore"):
        if formula == "exact":
            norm = np.sqrt(l2sum)
            return t * np.where(norm > c, c / norm, f32(1))
        pred = l2sum > 0
        l2norm = np.where(pred, np.sqrt(np.where(pred, l2sum, f32(1))), l2sum)
        return t - (t - t * c / np.maximum(l2norm, c))


def reference(steps: list[Step], formula: str, on_skipped_steps: bool, variables: list[str]) -> list[State]:
    state = {name: INIT[name].copy() for name in variables}
    out = []
    for step in steps:
        for name in variables:
            applied = bool(np.any(step.grad(name) != 0))
            dims, max_norm = CLIPS[name]
            if applied:
                update(state, name, step)
            if applied or on_skipped_steps:
                v = state[name]
                if name == "emb":  # the touched rows, each once
                    rows = np.unique(step.emb_indices)
                    v[rows] = clip(v[rows], max_norm, dims, formula)
                else:
                    state[name] = clip(v, max_norm, dims, formula)
        out.append({k: v.copy() for k, v in state.items()})
    return out


# --------------------------------------------------------------------------- TensorFlow 1


@pytest.mark.parametrize("resource", [True, False], ids=["resource", "ref"])
@pytest.mark.parametrize(("formula", "on_skipped"), CASES, ids=IDS)
def test_tensorflow_1_matches_the_reference_bit_for_bit(tmp_path: Path, tf_config: object, resource: bool,
                                                         formula: str, on_skipped: bool) -> None:
    src = tf1_graph(tmp_path, resource=resource)
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(formula, on_skipped, list(INIT)))
    out = tmp_path / "out.pb"
    report = rewrite_file(src, spec, output=out)
    assert sorted(label for s in report.sites for label in s.inserted) == sorted(
        ["guard"] * 3 + ["clip[0]", "clip[1]", "clip[2]"])
    steps = schedule()
    assert_bitwise(run_tf1(out, steps, resource=resource), reference(steps, formula, on_skipped, list(INIT)), "TF1")


def test_the_reference_tells_the_formulas_and_the_options_apart() -> None:
    """The checks above could fail: the original clip, every step, gives other numbers."""
    steps = schedule()
    names = list(INIT)
    exact = reference(steps, "exact", True, names)
    for other in (reference(steps, "seed", True, names), reference(steps, "exact", False, names)):
        assert any(a[n].tobytes() != b[n].tobytes() for a, b in zip(exact, other) for n in names)
    # the seed's cancellation at |v| ~ 5.5e3 and the exact clip's norm, after the first step
    seed_norm = float(np.linalg.norm(reference(steps[:1], "seed", True, names)[0]["big"].astype(np.float64)))
    exact_norm = float(np.linalg.norm(exact[0]["big"].astype(np.float64)))
    assert seed_norm > 0.3001
    assert exact_norm <= 0.3 * (1 + 2**-21)


def test_not_on_skipped_steps_keeps_a_masked_variable_bit_for_bit(tmp_path: Path, tf_config: object) -> None:
    src = tf1_graph(tmp_path)
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text("seed", False, list(INIT)))
    out = tmp_path / "out.pb"
    rewrite_file(src, spec, output=out)
    steps = schedule()
    got = run_tf1(out, steps)
    masked = 0
    for k in range(1, STEPS):
        for name in ("w", "big"):
            if not np.any(steps[k].grad(name) != 0):
                masked += 1
                assert got[k][name].tobytes() == got[k - 1][name].tobytes(), (k, name)
    assert masked >= 5


# --------------------------------------------------------------------------- TensorFlow 2


@pytest.fixture(scope="module")
def keras_step(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return keras_savedmodel(tmp_path_factory.mktemp("keras") / "sgd")


@pytest.mark.parametrize(("formula", "on_skipped"), CASES, ids=IDS)
def test_tensorflow_2_matches_the_reference_bit_for_bit(tmp_path: Path, keras_step: Path, formula: str,
                                                         on_skipped: bool) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(formula, on_skipped, list(INIT)))
    out = tmp_path / "out"
    report = rewrite_file(keras_step, spec, output=out)
    assert sorted(label for s in report.sites for label in s.inserted) == sorted(
        ["guard"] * 3 + ["clip[0]", "clip[1]", "clip[2]"])
    steps = schedule()
    assert_bitwise(run_tf2(out, steps), reference(steps, formula, on_skipped, list(INIT)), "TF2")


# --------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize(("formula", "on_skipped"), CASES, ids=IDS)
def test_onnx_lowered_matches_the_reference(tmp_path: Path, formula: str, on_skipped: bool) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(formula, on_skipped, DENSE) + "lower: true\n")
    out = tmp_path / "out.onnx"
    rewrite_file(onnx_step(tmp_path), spec, output=out)
    onnx.checker.check_model(str(out), full_check=True)
    steps = schedule()
    got = run_onnx(out, steps)
    want = reference(steps, formula, on_skipped, DENSE)
    for k, (g, w) in enumerate(zip(got, want)):
        for name in w:
            scale = float(np.max(np.abs(w[name])))
            assert float(np.max(np.abs(g[name] - w[name]))) <= 1e-6 * scale, (k, name)
    kept = 0  # a step that neither updates nor clips a tensor leaves its bits, as in TensorFlow
    for k in range(1, STEPS):
        for name in want[k]:
            if want[k][name].tobytes() == want[k - 1][name].tobytes():
                kept += 1
                assert got[k][name].tobytes() == got[k - 1][name].tobytes(), (k, name)
    assert kept >= 3


def test_one_spec_trains_alike_on_every_format(tmp_path: Path, tf_config: object, keras_step: Path) -> None:
    """The exact clip, not on skipped steps: TF1, TF2 and ONNX agree to 1e-6 on w and big."""
    names = DENSE
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text("exact", False, names))
    steps = schedule()
    tf1 = tmp_path / "tf1.pb"
    rewrite_file(tf1_graph(tmp_path), spec, output=tf1)
    tf2 = tmp_path / "tf2"
    rewrite_file(keras_step, spec, output=tf2)
    lowered = tmp_path / "lowered.yaml"
    lowered.write_text(spec.read_text() + "lower: true\n")
    ox = tmp_path / "out.onnx"
    rewrite_file(onnx_step(tmp_path), lowered, output=ox)
    runs = {"TF1": run_tf1(tf1, steps), "TF2": run_tf2(tf2, steps), "ONNX": run_onnx(ox, steps)}
    for k in range(STEPS):
        for name in names:
            base = runs["TF1"][k][name]
            for fmt in ("TF2", "ONNX"):
                diff = float(np.max(np.abs(runs[fmt][k][name] - base)))
                assert diff <= 1e-6 * float(np.max(np.abs(base))), (fmt, k, name, diff)


@pytest.mark.parametrize("formula", ["exact", "seed"])
def test_onnx_without_if_gives_the_same_numbers(tmp_path: Path, formula: str) -> None:
    """At ai.onnx opset 21 (no CUDA ``If`` kernel) the clip selects with ``Where`` instead of
    skipping with ``If``: the exact formula gives the same bits as at opset 17; the seed
    formula, computed every step there as TensorFlow does, may move an element by an ulp."""
    src = onnx_step(tmp_path)
    model = onnx.load(str(src))
    model.opset_import[0].version = 21
    src21 = tmp_path / "opset21.onnx"
    onnx.save(model, str(src21))
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(formula, False, DENSE) + "lower: true\n")
    steps = schedule()
    runs = []
    for k, path in enumerate((src, src21)):
        out = tmp_path / f"out{k}.onnx"
        rewrite_file(path, spec, output=out)
        runs.append((run_onnx(out, steps), sum(n.op_type == "If" for n in onnx.load(str(out)).graph.node)))
    (at17, ifs17), (at21, ifs21) = runs
    assert ifs17 > 0 and ifs21 == 0
    if formula == "exact":
        assert_bitwise(at21, at17, "opset 21 vs 17")
    else:
        assert_close(at21, at17, "opset 21 vs 17")
