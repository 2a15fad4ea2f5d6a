"""Rewritten ONNX training steps train like the numpy reference, step by step.

The two-task model of tests/onnx/models.py (one ``ai.onnx.preview.training`` node: Adam,
Adagrad, Momentum, Nesterov; or the update decomposed into plain ops) is rewritten by the
optrewrite CLI and trained 20 steps with a task schedule that gives task heads (and, with no
task, every parameter) all-zero gradients; tests/onnx/reference.py computes the same steps
in numpy with the semantics of docs/semantics.md. Compared: every parameter and state after
every step.

1. the unrewritten models in onnx.reference equal the reference without guard or clip
   (the model and the reference agree before anything is rewritten);
2. rewritten and lowered (``lower: true``), in onnxruntime;
3. rewritten, not lowered, in onnx.reference;
4. decomposed updates named by ``updates:`` entries, in onnxruntime.

In 2-4 the guard is also checked directly: where the reference's guard skipped a parameter
(task_a/kernel whenever mask_a = 0), its states, and its value unless a clip group holds
it, are bit-identical to the step before. Each test first checks that it can fail: without
the guard the model would have changed task_a/kernel's state in such a step, every clip
group changes some tensor in some step, and the global norm exceeds clip_norm in some step.

Tolerances. float64: elementwise rtol 1e-9 (atol 1e-12), tighter than 1e-6 on purpose:
measured <= 3e-13, while a float32 intermediate in a double model (~3e-8) would pass 1e-6
unnoticed. float32: elementwise rtol 1e-6 does not hold, and cannot: onnxruntime's float32
MatMul (MLAS) and Tanh (a rational approximation) round differently from numpy by an ulp
or so, and over 20 fed-back steps elements that come from cancellation (a weight or
momentum crossing zero) carry relative errors up to ~1e-3 while their absolute error stays
near 1e-6 of the tensor's largest element (measured: <= 1.8e-6, Nesterov). So float32 is
compared as max|got - want| <= 1e-5 * max|want| per tensor (20 steps times a few float32
ulps). onnx.reference runs with its Adam made to keep dtypes (reference._typed_adam).
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import pytest

from . import models
from .reference import (
    ClipGroup,
    GlobalNormClip,
    ReferenceStep,
    Selection,
    Semantics,
    State,
    evaluator_step,
    make_batches,
    onnxruntime_step,
    train,
)

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
OPTIMIZERS = pytest.mark.parametrize("optimizer", list(models.OPTIMIZERS))

CLIPS = (
    ClipGroup(Selection(("shared/kernel",)), max_norm=1.6, dims=(1,)),  # each row
    ClipGroup(Selection(("task_b/*",)), max_norm=1.0, dims=(0,)),
    ClipGroup(Selection(("re:shared/.*",)), max_norm=2.5),  # chained: whole tensors
)
VARIANTS: dict[str, Semantics] = {
    "guard+clip": Semantics(guard=Selection(("*",)), clip=CLIPS),
    "guard+clip+global": Semantics(
        guard=Selection(("*",)),
        clip=CLIPS,
        global_norm_clip=GlobalNormClip(1.5, Selection(("*",), exclude=("task_b/*",))),
    ),
}
SPEC_VARIANTS = pytest.mark.parametrize("variant", list(VARIANTS))


# --------------------------------------------------------------------------- helpers


def rewrite(model: models.StepModel, spec_yaml: str, workdir: Path, *args: str) -> bytes:
    """Run the optrewrite CLI on ``model`` with ``spec_yaml``; the rewritten bytes."""
    from optrewrite.cli import main  # the thing under test

    source, spec, target = workdir / "step.onnx", workdir / "spec.yaml", workdir / "out.onnx"
    source.write_bytes(model.serialized())
    spec.write_text(spec_yaml)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main([str(source), "--spec", str(spec), "-o", str(target), *args])
    assert rc == 0, f"optrewrite exited with {rc}: {err.getvalue().strip()}\nspec:\n{spec_yaml}"
    rewritten = target.read_bytes()
    _check_interface(model.model, onnx.load_from_string(rewritten))
    return rewritten


def _check_interface(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """The same graph inputs and outputs, names and order, so a training loop still fits."""
    for kind in ("input", "output"):
        want = [v.name for v in getattr(before.graph, kind)]
        got = [v.name for v in getattr(after.graph, kind)]
        assert got == want, f"graph {kind}s changed: {got} != {want}"
    assert after.ir_version <= 13, f"IR version {after.ir_version}: onnxruntime 1.31 loads <= 13"


def _float32_tolerance(dtype: Any) -> bool:
    return np.dtype(dtype) == np.float32


def assert_trains_alike(
    got: Sequence[State], want: Sequence[State], *, scaled: bool, who: str
) -> None:
    """Every tensor after every step close to the reference (see the module docstring)."""
    assert len(got) == len(want)
    for t, (g, w) in enumerate(zip(got, want)):
        for name in w:
            a, b = g[name].astype(np.float64), w[name].astype(np.float64)
            where = f"{who}, after step {t - 1}, {name!r}"
            if scaled:
                err = np.max(np.abs(a - b))
                bound = 1e-5 * max(np.max(np.abs(b)), 1e-30)
                i = np.unravel_index(np.argmax(np.abs(a - b)), a.shape)
                assert err <= bound, (
                    f"{where}: max |got - want| = {err:.3g} > {bound:.3g}; "
                    f"at {i}: got {a[i]!r}, want {b[i]!r}"
                )
            else:
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=where)


def check_guard(
    got: Sequence[State], log: Sequence[Any], model: models.StepModel, sem: Semantics, who: str
) -> None:
    """Where the reference's guard skipped a parameter, the run kept its states bit for bit,
    and its value unless a clip group holds it; task_a/kernel whenever mask_a was 0."""
    held = {p for p in models.PARAMS if any(g.select.matches(p) for g in sem.clip)}
    for t, entry in enumerate(log):
        for p in sorted(entry.skipped):
            kept = list(model.states[p]) + ([] if p in held else [p])
            changed = [n for n in kept if not np.array_equal(got[t][n], got[t + 1][n])]
            assert not changed, (
                f"{who}, step {t}: {p!r} had an all-zero gradient, yet {changed} changed"
            )


def check_can_fail(
    model: models.StepModel,
    batches: list[State],
    sem: Semantics,
    log: Sequence[Any],
    *,
    guard_matters: bool = True,
) -> None:
    """The guard (unless the optimizer leaves a zero gradient alone: ``guard_matters``),
    every clip group and the global-norm clip each make a difference."""
    masked_a = [t for t, b in enumerate(batches) if b["mask_a"] == 0]
    assert masked_a and all("task_a/kernel" in log[t].skipped for t in masked_a), (
        "mask_a = 0 must give task_a/kernel an all-zero gradient"
    )
    if guard_matters:
        plain = train(ReferenceStep(model), model, batches)
        watched = ["task_a/kernel", *model.states["task_a/kernel"]]
        assert any(
            not np.array_equal(plain[t][n], plain[t + 1][n]) for t in masked_a for n in watched
        ), "without the guard task_a/kernel would never have changed on a masked step"
    for group in sem.clip:
        chosen = set(filter(group.select.matches, models.PARAMS))
        assert any(entry.clipped & chosen for entry in log), f"clip group {group} never bites"
    if sem.global_norm_clip is not None:
        norms = [e.global_norm for e in log if e.global_norm is not None]
        assert max(norms) > sem.global_norm_clip.clip_norm, "the global norm never bites"
        assert min(norms) < sem.global_norm_clip.clip_norm, "the global norm always bites"


# --------------------------------------------------------------------------- 1. sanity


@DTYPES
@pytest.mark.parametrize(
    "optimizer,decomposed",
    [(o, False) for o in models.OPTIMIZERS] + [(o, True) for o in models.DECOMPOSABLE],
)
def test_unrewritten_model_matches_reference(optimizer: str, decomposed: bool, dtype: Any) -> None:
    model = models.training_step(optimizer, dtype, decomposed=decomposed)
    batches = make_batches(dtype)
    got = train(evaluator_step(model.serialized()), model, batches)
    want = train(ReferenceStep(model), model, batches)
    assert_trains_alike(got, want, scaled=_float32_tolerance(dtype), who="onnx.reference")
    # the parameters moved: the comparison is not between two copies of the start
    assert not np.allclose(want[-1]["shared/kernel"], want[0]["shared/kernel"])


# --------------------------------------------------------------------------- 2, 3


@SPEC_VARIANTS
@DTYPES
@OPTIMIZERS
def test_lowered_rewrite_trains_like_reference_in_onnxruntime(
    optimizer: str, dtype: Any, variant: str, tmp_path: Path
) -> None:
    sem = VARIANTS[variant]
    model = models.training_step(optimizer, dtype)
    batches = make_batches(dtype)
    reference = ReferenceStep(model, sem)
    want = train(reference, model, batches)
    check_can_fail(model, batches, sem, reference.log)

    rewritten = rewrite(model, sem.to_yaml(lower=True), tmp_path)
    domains = {n.domain for n in onnx.load_from_string(rewritten).graph.node}
    assert models.TRAINING_DOMAIN not in domains, "lowering left a preview-training op"
    got = train(onnxruntime_step(rewritten), model, batches)

    check_guard(got, reference.log, model, sem, "onnxruntime")
    assert_trains_alike(got, want, scaled=_float32_tolerance(dtype), who="onnxruntime")


@SPEC_VARIANTS
@DTYPES
@OPTIMIZERS
def test_rewrite_without_lowering_trains_like_reference_in_onnx_reference(
    optimizer: str, dtype: Any, variant: str, tmp_path: Path
) -> None:
    sem = VARIANTS[variant]
    model = models.training_step(optimizer, dtype)
    batches = make_batches(dtype)
    reference = ReferenceStep(model, sem)
    want = train(reference, model, batches)
    check_can_fail(model, batches, sem, reference.log)

    rewritten = rewrite(model, sem.to_yaml(), tmp_path)
    got = train(evaluator_step(rewritten), model, batches)

    check_guard(got, reference.log, model, sem, "onnx.reference")
    assert_trains_alike(got, want, scaled=_float32_tolerance(dtype), who="onnx.reference")


# --------------------------------------------------------------------------- 4. decomposed


@SPEC_VARIANTS
@DTYPES
@pytest.mark.parametrize("optimizer", models.DECOMPOSABLE)
def test_decomposed_update_rewrite_trains_like_reference(
    optimizer: str, dtype: Any, variant: str, tmp_path: Path
) -> None:
    sem = VARIANTS[variant]
    model = models.training_step(optimizer, dtype, decomposed=True)
    batches = make_batches(dtype)
    reference = ReferenceStep(model, sem)
    want = train(reference, model, batches)
    check_can_fail(model, batches, sem, reference.log)

    rewritten = rewrite(model, sem.to_yaml(updates=model.updates()), tmp_path)
    got = train(onnxruntime_step(rewritten), model, batches)

    check_guard(got, reference.log, model, sem, "onnxruntime")
    assert_trains_alike(got, want, scaled=_float32_tolerance(dtype), who="onnxruntime")
