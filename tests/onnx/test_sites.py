"""Finding ONNX update sites: each training node's tensors are keyed by the node's whole name."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from optrewrite.api import rewrite_file
from optrewrite.errors import InputError

PREVIEW = "ai.onnx.preview.training"


def _two_momentum_nodes(tmp_path: Path, names: tuple[str, str]) -> Path:
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Momentum", ["r", "t", f"w{k}", f"g{k}", f"v{k}"], [f"w{k}_new", f"v{k}_new"], name=name,
                         domain=PREVIEW, alpha=0.9, beta=1.0, mode="standard", norm_coefficient=0.0)
        for k, name in enumerate(names, start=1)
    ]
    tensors = [f"{p}{k}" for k in (1, 2) for p in ("w", "g", "v")]
    graph = helper.make_graph(
        nodes, "step",
        [helper.make_tensor_value_info(n, f, [2]) for n in tensors]
        + [helper.make_tensor_value_info("r", f, []), helper.make_tensor_value_info("t", TensorProto.INT64, [])],
        [helper.make_tensor_value_info(f"{p}{k}_new", f, [2]) for k in (1, 2) for p in ("w", "v")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(PREVIEW, 1)])
    path = tmp_path / "step.onnx"
    onnx.save(model, path)
    return path


def test_nodes_whose_long_names_share_a_prefix_are_told_apart(tmp_path: Path) -> None:
    prefix = "optimizer/" + "x" * 80
    src = _two_momentum_nodes(tmp_path, (prefix + "/a", prefix + "/b"))
    spec = tmp_path / "wrap.yaml"
    spec.write_text("version: 1\nguard:\n  variables: [w1]\n")
    report = rewrite_file(src, spec, output=tmp_path / "out.onnx")
    assert {s.variable: s.inserted for s in report.sites} == {"w1": ["guard"], "w2": []}
    assert len({s.update for s in report.sites}) == 2


def test_two_training_nodes_of_one_name_are_an_input_error(tmp_path: Path) -> None:
    src = _two_momentum_nodes(tmp_path, ("opt", "opt"))
    spec = tmp_path / "wrap.yaml"
    spec.write_text("version: 1\nguard:\n  variables: [w1]\n")
    with pytest.raises(InputError, match="two training nodes are named 'opt'"):
        rewrite_file(src, spec, output=tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
