"""Where a decomposed update's guard puts the update's ops, and that each form computes the same."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from optrewrite.api import rewrite_file

SPEC = """version: 1
guard: {}
updates:
  - variable: W
    gradient: dW
    updated: W_new
    state: [[m, m_new]]
"""
UPDATE_OPS = {"m_decay", "m_new", "step", "W_new"}


def momentum_step(tmp_path: Path, *, opset: int = 17, log_step: bool = False) -> Path:
    """W_new = W - lr * (0.9 * m + dW) in plain ops; ``log_step`` also outputs lr * m_new."""
    F = TensorProto.FLOAT
    vi = helper.make_tensor_value_info
    nodes = [
        helper.make_node("Mul", ["momentum", "m"], ["m_decay"], name="m_decay"),
        helper.make_node("Add", ["m_decay", "dW"], ["m_new"], name="m_new"),
        helper.make_node("Mul", ["lr", "m_new"], ["step"], name="step"),
        helper.make_node("Sub", ["W", "step"], ["W_new"], name="W_new"),
    ]
    outputs = [vi("W_new", F, [2, 3]), vi("m_new", F, [2, 3])] + ([vi("step", F, [2, 3])] if log_step else [])
    graph = helper.make_graph(
        nodes, "step",
        [vi("W", F, [2, 3]), vi("m", F, [2, 3]), vi("dW", F, [2, 3]), vi("lr", F, []), vi("momentum", F, [])],
        outputs)
    path = tmp_path / "step.onnx"
    onnx.save(helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path


def rewrite(tmp_path: Path, src: Path) -> tuple[onnx.ModelProto, ort.InferenceSession]:
    (tmp_path / "s.yaml").write_text(SPEC)
    out = tmp_path / "out.onnx"
    rewrite_file(src, tmp_path / "s.yaml", output=out)
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    return model, ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


def check_numbers(session: ort.InferenceSession) -> None:
    rng = np.random.default_rng(3)
    w, m, dw = (rng.normal(size=(2, 3)).astype(np.float32) for _ in range(3))
    feed = {"W": w, "m": m, "lr": np.array(0.1, np.float32), "momentum": np.array(0.9, np.float32)}
    got = session.run(["W_new", "m_new"], {**feed, "dW": dw})
    m_new = np.float32(0.9) * m + dw
    np.testing.assert_allclose(got[1], m_new, rtol=1e-6)
    np.testing.assert_allclose(got[0], w - np.float32(0.1) * m_new, rtol=1e-6)
    skipped = session.run(["W_new", "m_new"], {**feed, "dW": np.zeros_like(dw)})
    np.testing.assert_array_equal(skipped[0], w)
    np.testing.assert_array_equal(skipped[1], m)


def then_branch_ops(model: onnx.ModelProto) -> set[str]:
    (guard,) = [n for n in model.graph.node if n.op_type == "If"]
    (then,) = [a.g for a in guard.attribute if a.name == "then_branch"]
    return {n.name for n in then.node}


def test_the_update_moves_inside_the_guard(tmp_path: Path) -> None:
    model, session = rewrite(tmp_path, momentum_step(tmp_path))
    assert then_branch_ops(model) == UPDATE_OPS
    assert not UPDATE_OPS & {n.name for n in model.graph.node}
    check_numbers(session)


def test_an_update_read_elsewhere_runs_every_step_and_is_selected(tmp_path: Path) -> None:
    model, session = rewrite(tmp_path, momentum_step(tmp_path, log_step=True))
    assert UPDATE_OPS <= {n.name for n in model.graph.node}
    assert {n.op_type for n in model.graph.node if n.op_type == "If"} == {"If"}
    check_numbers(session)


@pytest.mark.parametrize("opset", [21, 23])
def test_without_a_cuda_if_kernel_the_guard_selects_with_where(tmp_path: Path, opset: int) -> None:
    model, session = rewrite(tmp_path, momentum_step(tmp_path, opset=opset))
    ops = [n.op_type for n in model.graph.node]
    assert "If" not in ops and ops.count("Where") == 2
    check_numbers(session)
