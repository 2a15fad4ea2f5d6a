"""``guard: {when: nonfinite | zero_or_nonfinite, scope: step}`` on every format, against numpy.

With ``scope: step`` one NaN or infinity in any selected gradient skips every selected update
that step (the loss-scale optimizers' rule); the zero test of ``zero_or_nonfinite`` stays per
variable. State that is no variable's slot still advances: Keras's ``iterations`` counts
every step.

The fed-gradient step of tests/fed_step.py, with a NaN or an infinity in some variable's
gradient in some steps and all-zero gradients in others, trained for 16 steps: TensorFlow 1
and 2 must match the numpy reference below bit for bit, ONNX (lowered, in onnxruntime) to 1e-6.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from optrewrite.api import rewrite_file
from optrewrite.errors import SpecError
from optrewrite.spec import parse_spec
from tests.fed_step import (DENSE, INIT, STEPS, State, Step, assert_bitwise, assert_close, keras_savedmodel,
                            onnx_step, run_onnx, run_tf1, run_tf2, schedule, tf1_graph, update)

WHEN = ["nonfinite", "zero_or_nonfinite"]


def spec_text(when: str, scope: str, variables: list[str]) -> str:
    return f"version: 1\nguard:\n  variables: {variables}\n  when: {when}\n  scope: {scope}\n"


def reference(steps: list[Step], when: str, scope: str, names: list[str]) -> list[State]:
    state = {name: INIT[name].copy() for name in names}
    out = []
    for step in steps:
        step_finite = all(np.isfinite(step.grad(n)).all() for n in names)
        for name in names:
            g = step.grad(name)
            finite = step_finite if scope == "step" else bool(np.isfinite(g).all())
            zero = not np.any(g != 0)  # NaN != 0: a NaN gradient is not zero
            if finite and not (when == "zero_or_nonfinite" and zero):
                update(state, name, step)
        out.append({k: v.copy() for k, v in state.items()})
    return out


def test_the_reference_tells_the_scopes_apart() -> None:
    steps = schedule(nonfinite=True)
    names = list(INIT)
    for when in WHEN:
        step, variable = reference(steps, when, "step", names), reference(steps, when, "variable", names)
        assert any(a[n].tobytes() != b[n].tobytes() for a, b in zip(step, variable) for n in names)
        assert all(np.isfinite(s[n]).all() for s in step for n in names)
    skipped = sum(not all(np.isfinite(s.grad(n)).all() for n in names) for s in steps)
    assert 4 <= skipped <= STEPS - 4  # skipped steps and applied ones, both


@pytest.mark.parametrize("when", WHEN)
def test_tensorflow_1(tmp_path: Path, tf_config: object, when: str) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(when, "step", list(INIT)))
    out = tmp_path / "out.pb"
    report = rewrite_file(tf1_graph(tmp_path), spec, output=out)
    assert [s.inserted for s in report.sites] == [["guard"]] * 3
    steps = schedule(nonfinite=True)
    assert_bitwise(run_tf1(out, steps), reference(steps, when, "step", list(INIT)), "TF1")


@pytest.fixture(scope="module")
def keras_step(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return keras_savedmodel(tmp_path_factory.mktemp("keras") / "sgd")


@pytest.mark.parametrize("when", WHEN)
def test_tensorflow_2(tmp_path: Path, keras_step: Path, when: str) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(when, "step", list(INIT)))
    out = tmp_path / "out"
    report = rewrite_file(keras_step, spec, output=out)
    assert sorted(s.inserted for s in report.sites) == [["guard"]] * 3
    steps = schedule(nonfinite=True)
    got = run_tf2(out, steps)
    assert_bitwise(got, reference(steps, when, "step", list(INIT)), "TF2")
    assert [int(s["iterations"]) for s in got] == list(range(1, STEPS + 1))  # shared state advances


@pytest.mark.parametrize("when", WHEN)
def test_onnx_lowered(tmp_path: Path, when: str) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(when, "step", DENSE) + "lower: true\n")
    out = tmp_path / "out.onnx"
    rewrite_file(onnx_step(tmp_path), spec, output=out)
    steps = schedule(nonfinite=True)
    assert_close(run_onnx(out, steps), reference(steps, when, "step", DENSE), "ONNX")


def test_one_spec_trains_alike_on_every_format(tmp_path: Path, tf_config: object, keras_step: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text("nonfinite", "step", DENSE))
    steps = schedule(nonfinite=True)
    tf1, tf2, ox = tmp_path / "tf1.pb", tmp_path / "tf2", tmp_path / "out.onnx"
    rewrite_file(tf1_graph(tmp_path), spec, output=tf1)
    rewrite_file(keras_step, spec, output=tf2)
    lowered = tmp_path / "lowered.yaml"
    lowered.write_text(spec.read_text() + "lower: true\n")
    rewrite_file(onnx_step(tmp_path), lowered, output=ox)
    base = [{n: s[n] for n in DENSE} for s in run_tf1(tf1, steps)]
    assert_close([{n: s[n] for n in DENSE} for s in run_tf2(tf2, steps)], base, "TF2 vs TF1")
    assert_close(run_onnx(ox, steps), base, "ONNX vs TF1")


def test_step_scope_is_part_of_the_plan(tmp_path: Path) -> None:
    src = onnx_step(tmp_path)
    for scope in ("step", "variable"):
        (tmp_path / f"{scope}.yaml").write_text(spec_text("nonfinite", scope, DENSE))
    out = tmp_path / "out.onnx"
    rewrite_file(src, tmp_path / "step.yaml", output=out)
    assert not rewrite_file(out, tmp_path / "step.yaml", mode="check").changed
    with pytest.raises(Exception, match="different spec"):
        rewrite_file(out, tmp_path / "variable.yaml", mode="check")


@pytest.mark.parametrize(("guard", "message"), [
    ("  scope: step\n", "guard.scope: step needs a non-finite test"),
    ("  when: zero\n  scope: step\n", "guard.scope: step needs a non-finite test"),
    ("  when: nonfinite\n  scope: steps\n", "guard.scope: must be one of variable, step, got 'steps'"),
])
def test_bad_scopes_name_the_line_and_field(guard: str, message: str) -> None:
    with pytest.raises(SpecError, match=f"^w.yaml:[34]: {message}"):
        parse_spec(f"version: 1\nguard:\n{guard}", "w.yaml")
