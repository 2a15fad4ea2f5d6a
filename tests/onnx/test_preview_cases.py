"""Preview-training ops through optrewrite: lowered on onnxruntime, guarded, clipped.

Every case of onnx's own generators (and variants at T > 0, with non-default attributes, in
double) is compared with onnx.reference; guarded tensors with an all-zero gradient must come
out bit for bit unchanged while the node's other tensors update normally.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

from optrewrite.api import rewrite_file

from .preview import DOMAIN, Step, generator_cases, variants

VARIANTS = variants()
IDS = [s.name for s in VARIANTS]


def rewrite(tmp_path: Path, step: Step, spec: str, *, lower: bool = False) -> Path:
    src = step.save(tmp_path)
    spec_path = tmp_path / "wrap.yaml"
    spec_path.write_text(spec)
    out = tmp_path / f"{step.name}.out.onnx"
    rewrite_file(src, spec_path, output=out, lower=lower)
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True, check_type=True)
    return out


def run(path: Path, feed: dict[str, np.ndarray], *, ort_cpu: bool) -> list[np.ndarray]:
    if ort_cpu:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, feed)
    return [np.asarray(v) for v in ReferenceEvaluator(str(path)).run(None, feed)]


def source_of(step: Step, k: int) -> str:
    """The input tensor whose next value output k is."""
    block, i = divmod(k, step.n)
    names = step.names()
    return names["X"][i] if block == 0 else names[f"S{block - 1}"][i]


def clip_by_norm(t: np.ndarray, c: float, axes: tuple[int, ...] | None) -> np.ndarray:
    """TF's clip_by_norm followed by VariableClippingOptimizer's ``var - (var - clipped)``."""
    c = t.dtype.type(c)
    l2sum = np.sum(t * t, axis=axes, keepdims=True)
    pred = l2sum > 0
    l2norm = np.where(pred, np.sqrt(np.where(pred, l2sum, 1)), l2sum).astype(t.dtype)
    clipped = t * c / np.maximum(l2norm, c)
    return t - (t - clipped)


def test_onnxruntime_refuses_the_unlowered_op(tmp_path: Path) -> None:
    path = generator_cases()["test_adam"].save(tmp_path)
    with pytest.raises(Exception, match="Adam"):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("step", VARIANTS, ids=IDS)
def test_lowered_matches_reference_on_onnxruntime(tmp_path: Path, step: Step) -> None:
    out = rewrite(tmp_path, step, "version: 1\nlower: true\n")
    assert not [n for n in onnx.load(out).graph.node if n.domain == DOMAIN]
    got = run(out, step.feed(), ort_cpu=True)
    assert len(got) == len(step.output_names())
    for g, e, name in zip(got, step.expected(), step.output_names()):
        assert g.dtype == e.dtype, name
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=0, err_msg=name)


@pytest.mark.parametrize("lower", [True, False], ids=["lowered", "preview-op"])
@pytest.mark.parametrize("step", VARIANTS, ids=IDS)
def test_guard_freezes_only_the_tensors_whose_gradient_is_all_zero(tmp_path: Path, step: Step,
                                                                   lower: bool) -> None:
    # Tensor 0 gets an all-zero gradient (-0.0 counts as zero); the others update normally.
    zeroed = replace(step, gs=(np.full_like(step.gs[0], -0.0), *step.gs[1:]))
    out = rewrite(tmp_path, zeroed, "version: 1\nguard: {}\n", lower=lower)
    feed = zeroed.feed()
    got = run(out, feed, ort_cpu=lower)
    for k, (g, e) in enumerate(zip(got, zeroed.expected())):
        name = zeroed.output_names()[k]
        if k % zeroed.n == 0:
            np.testing.assert_array_equal(g, feed[source_of(zeroed, k)], err_msg=name)
        else:
            np.testing.assert_allclose(g, e, rtol=1e-6, atol=0, err_msg=name)


@pytest.mark.parametrize("lower", [True, False], ids=["lowered", "preview-op"])
def test_guard_applies_a_nan_gradient(tmp_path: Path, lower: bool) -> None:
    step = generator_cases()["test_momentum"]
    nan = replace(step, gs=(np.full_like(step.gs[0], np.nan),))
    out = rewrite(tmp_path, nan, "version: 1\nguard: {}\n", lower=lower)
    x_new = run(out, nan.feed(), ort_cpu=lower)[0]
    assert np.isnan(x_new).all()


@pytest.mark.parametrize("lower", [True, False], ids=["lowered", "preview-op"])
def test_guard_selects_by_name(tmp_path: Path, lower: bool) -> None:
    step = generator_cases()["test_adam_multiple"]
    zeroed = replace(step, gs=tuple(np.zeros_like(g) for g in step.gs))
    out = rewrite(tmp_path, zeroed, "version: 1\nguard: {variables: [X1]}\n", lower=lower)
    got = run(out, zeroed.feed(), ort_cpu=lower)
    expected = zeroed.expected()
    # X0 is not guarded: a zero gradient still moves it (Adam's momentum is non-zero).
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
    assert not np.array_equal(got[0], zeroed.xs[0])
    np.testing.assert_array_equal(got[1], zeroed.xs[1])


def _matrix_step(kind: str, dtype: type) -> Step:
    rng = np.random.default_rng(7)
    shape = (3, 4)
    attrs = {"Adam": {}, "Adagrad": {}, "Momentum": {"alpha": 0.9, "beta": 1.0, "mode": "standard",
                                                     "norm_coefficient": 0.0}}[kind]
    states = {"Adam": 2, "Adagrad": 1, "Momentum": 1}[kind]
    draw = lambda scale: tuple(rng.normal(0, scale, shape).astype(dtype) for _ in range(2))  # noqa: E731
    return Step(name=f"{kind}_matrix_{np.dtype(dtype).name}", kind=kind, attrs=attrs,
                r=np.array(0.5, dtype=dtype), t=np.array(3, dtype=np.int64),
                xs=draw(2.0), gs=draw(1.0),
                states=tuple(tuple(np.abs(s) for s in draw(0.5)) for _ in range(states)))


@pytest.mark.parametrize("lower", [True, False], ids=["lowered", "preview-op"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["Adam", "Adagrad", "Momentum"])
def test_clip_groups_follow_tf_clip_by_norm(tmp_path: Path, kind: str, dtype: type, lower: bool) -> None:
    if kind == "Adam" and dtype == np.float32 and not lower:
        pytest.skip("onnx.reference's one-tensor Adam returns float64 for float32 inputs (NumPy 2 "
                    "promotion), and its own type check then rejects the clip's float32 constants")
    step = _matrix_step(kind, dtype)
    spec = ("version: 1\nguard: {}\nclip:\n"
            "  - {variables: [X0], max_norm: 1.5, dims: [1]}\n"
            "  - {variables: ['X*'], max_norm: 3.0}\n")
    out = rewrite(tmp_path, step, spec, lower=lower)
    got = run(out, step.feed(), ort_cpu=lower)
    expected = step.expected()
    want0 = clip_by_norm(clip_by_norm(expected[0], 1.5, (1,)), 3.0, None)
    want1 = clip_by_norm(expected[1], 3.0, None)
    # X - (X - clipped) cancels: an ulp of difference in the updated X (onnx.reference
    # computes it in double, then rounds) shows at the scale of X, not of the result.
    for g, w, x in ((got[0], want0, expected[0]), (got[1], want1, expected[1])):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6 * np.abs(x).max())
    assert np.all(np.linalg.norm(got[0], axis=1) <= 1.5 * (1 + 1e-6))
    # States are not clipped.
    for g, e in zip(got[2:], expected[2:]):
        np.testing.assert_allclose(g, e, rtol=1e-6)


@pytest.mark.parametrize("lower", [True, False], ids=["lowered", "preview-op"])
def test_clip_runs_on_a_skipped_step(tmp_path: Path, lower: bool) -> None:
    step = _matrix_step("Momentum", np.float32)
    zeroed = replace(step, gs=tuple(np.zeros_like(g) for g in step.gs))
    out = rewrite(tmp_path, zeroed, "version: 1\nguard: {}\nclip: [{variables: [X0], max_norm: 1.0, dims: [1]}]\n",
                  lower=lower)
    got = run(out, zeroed.feed(), ort_cpu=lower)
    np.testing.assert_allclose(got[0], clip_by_norm(zeroed.xs[0], 1.0, (1,)), rtol=1e-6)
    np.testing.assert_array_equal(got[1], zeroed.xs[1])
    np.testing.assert_array_equal(got[2], zeroed.states[0][0])


@pytest.mark.parametrize("lower", [True, False], ids=["lowered", "preview-op"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_norm_clip_scales_the_selected_gradients(tmp_path: Path, dtype: type, lower: bool) -> None:
    step = _matrix_step("Adam", dtype)
    clip_norm = 0.5
    out = rewrite(tmp_path, step, f"version: 1\nglobal_norm_clip: {{clip_norm: {clip_norm}}}\n", lower=lower)
    got = run(out, step.feed(), ort_cpu=lower)
    norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in step.gs))
    scaled = replace(step, gs=tuple((g * (clip_norm / norm)).astype(dtype) for g in step.gs))
    # onnx.reference's multi-tensor Adam (the unlowered node) returns float32 even for double.
    rtol = 1e-12 if dtype == np.float64 and lower else 2e-6
    for g, e, name in zip(got, scaled.expected(), step.output_names()):
        np.testing.assert_allclose(g, e, rtol=rtol, err_msg=name)


@pytest.mark.parametrize("opset", [13, 17, 20, 21, 23])
def test_guard_skips_with_if_where_cuda_has_it_and_selects_after(tmp_path: Path, opset: int) -> None:
    step = replace(_matrix_step("Adam", np.float32), opset=opset)
    zeroed = replace(step, gs=(np.zeros_like(step.gs[0]), step.gs[1]))
    out = rewrite(tmp_path, zeroed, "version: 1\nguard: {}\n", lower=True)
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert ("If" in ops) == (opset <= 20)
    got = run(out, zeroed.feed(), ort_cpu=True)
    np.testing.assert_array_equal(got[0], zeroed.xs[0])
    np.testing.assert_allclose(got[1], zeroed.expected()[1], rtol=1e-6)


CUDA_SPEC = ("version: 1\nlower: true\nguard: {}\nglobal_norm_clip: {clip_norm: 1.0}\n"
             "clip: [{variables: ['*'], max_norm: 1.0}]\n")


@pytest.mark.parametrize("opset", [13, 15, 17, 18, 19, 20, 21, 22, 23, 24, 25])
@pytest.mark.parametrize("kind", ["Adam", "Adagrad", "Momentum"])
def test_lowered_ops_have_cuda_kernels(tmp_path: Path, kind: str, opset: int) -> None:
    from optrewrite.onnx.cuda_table import cuda_gaps, op_uses

    for dtype in (np.float32, np.float64):
        step = replace(_matrix_step(kind, dtype), opset=opset)
        if kind == "Adagrad":
            step = replace(step, attrs={"decay_factor": 0.1})
        model = onnx.load(rewrite(tmp_path, step, CUDA_SPEC))
        uses = op_uses(model)
        assert {u.op_type for u in uses} >= {"Sqrt", "ReduceSumSquare", "ReduceL1", "Where"}
        gaps = cuda_gaps(uses)
        if opset >= 24:
            # The vendored kernel list registers Cast for CUDA up to opset 23 only; the lowering
            # casts scalars (the step count and learning rate) and nothing else.
            assert {u.op_type for u in uses if cuda_gaps([u])} <= {"Cast"}
        else:
            assert gaps == [], gaps


@pytest.mark.parametrize("opset", [13, 17, 18, 21])
def test_clip_at_each_reduction_form(tmp_path: Path, opset: int) -> None:
    # Reductions take axes as an attribute before opset 18; from 21 the clip has no If.
    step = replace(_matrix_step("Momentum", np.float64), opset=opset)
    out = rewrite(tmp_path, step, "version: 1\nclip: [{variables: [X0], max_norm: 1.5, dims: [1]}, "
                                  "{variables: [X1], max_norm: 100.0}]\n", lower=True)
    assert ("If" in {n.op_type for n in onnx.load(out).graph.node}) == (opset <= 20)
    got = run(out, step.feed(), ort_cpu=True)
    expected = step.expected()
    np.testing.assert_allclose(got[0], clip_by_norm(expected[0], 1.5, (1,)), rtol=1e-12)
    # Within the norm: unchanged, bit for bit, where the If skips the clip.
    if opset <= 20:
        np.testing.assert_array_equal(got[1], expected[1])
