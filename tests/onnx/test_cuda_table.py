"""The CUDA kernel table: generated JSON vs vendored markdown, lookups, and op_uses walks."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import onnx
import pytest
from onnx import TensorProto, helper

from optrewrite.onnx.cuda_table import OpUse, cuda_gaps, cuda_kernel, op_uses, table

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "gen_cuda_kernel_table.py"
MARKDOWN = ROOT / "tools" / "data" / "cuda_operator_kernels.md"
JSON = ROOT / "optrewrite" / "onnx" / "cuda_kernels.json"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_cuda_kernel_table", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def use(op: str, opset: int, **types: str) -> OpUse:
    return OpUse("ai.onnx", op, opset, types)


# --- the generated table -------------------------------------------------------------


def test_committed_json_is_what_the_vendored_markdown_generates(gen: ModuleType) -> None:
    assert gen.main(["--check"]) == 0


def test_check_fails_on_a_stale_json(gen: ModuleType, tmp_path: Path) -> None:
    stale = json.loads(JSON.read_text())
    stale["domains"]["ai.onnx"]["Add"][0]["types"]["T"].remove("float")
    out = tmp_path / "cuda_kernels.json"
    out.write_text(json.dumps(stale, indent=1, sort_keys=True) + "\n")
    assert gen.main(["--check", "--output", str(out)]) == 1
    assert gen.main(["--output", str(out)]) == 0
    assert out.read_text() == JSON.read_text()


def test_json_names_the_onnxruntime_commit_of_the_markdown() -> None:
    commit = re.search(r"^source-commit: ([0-9a-f]{40})$", MARKDOWN.read_text(), re.M)
    assert commit is not None
    data = table()
    assert data["provider"] == "CUDAExecutionProvider"
    assert data["source"]["commit"] == commit[1]
    assert data["source"]["repo"] == "microsoft/onnxruntime"


def test_version_cells_open_closed_and_single(gen: ModuleType) -> None:
    add = gen.parse(MARKDOWN.read_text())["domains"]["ai.onnx"]["Add"]
    assert [(k["since"], k["until"]) for k in add] == [(14, None), (13, 13), (7, 12)]
    assert add[0]["types"]["T"][:4] == ["bfloat16", "double", "float", "float16"]


def test_parser_refuses_a_mangled_type_list(gen: ModuleType) -> None:
    text = MARKDOWN.read_text().replace(
        "|Not|*in* X:**T**<br> *out* Y:**T**|1+|**T** = tensor(bool)|",
        "|Not|*in* X:**T**<br> *out* Y:**T**|1+|**T** = tensor(int8), tensor(bool)|",
    )
    with pytest.raises(gen.TableFormatError, match="not sorted"):
        gen.parse(text)


# --- facts from the table ------------------------------------------------------------


def test_common_ops_are_covered() -> None:
    assert cuda_gaps(
        [
            use("Add", 17, T="float"),
            use("Where", 17, B="bool", T="double"),
            use("If", 17, B="bool", V="float"),
            use("If", 18, B="bool", V="double"),
            use("Not", 17, T="bool"),
            use("ReduceSum", 17, T="double"),
            use("Constant", 17, T="float"),  # folded into an initializer at load
        ]
    ) == []


def test_ops_absent_from_the_cuda_list_are_reported() -> None:
    gaps = cuda_gaps([use("Acos", 17, T="float"), use("BitShift", 17, T="uint8"), use("Add", 17, T="float")])
    assert len(gaps) == 2
    assert gaps[0].startswith("Acos ") and "has no Acos kernel" in gaps[0]
    assert gaps[1].startswith("BitShift ")


def test_type_gaps() -> None:
    # Where registers bfloat16 from 16 on; Sum has no integer kernel; Sqrt's [6, 12] lacks bfloat16.
    assert cuda_gaps([use("Where", 16, B="bool", T="bfloat16")]) == []
    [where] = cuda_gaps([use("Where", 15, B="bool", T="bfloat16")])
    assert "T=bfloat16" in where and "[9, 15]" in where
    [summed] = cuda_gaps([use("Sum", 17, T="int32")])
    assert "T=int32" in summed
    assert cuda_gaps([use("Sqrt", 13, T="bfloat16")]) == []
    assert len(cuda_gaps([use("Sqrt", 12, T="bfloat16")])) == 1
    # Only constraints the kernel lists are checked.
    assert cuda_gaps([use("Equal", 11, T="float", T1="int8")]) == []


def test_versions_are_matched_like_onnxruntime() -> None:
    # Below the first CUDA kernel: Equal-1 (opset 6) vs kernels starting at 7.
    [low] = cuda_gaps([use("Equal", 6, T="int32")])
    assert "schema version 1" in low
    # An open-ended kernel covers only its own schema version: Equal 13+ vs Equal-19,
    # ReduceMax 18+ vs ReduceMax-20, If 19+ vs If-21, Cast 23+ vs Cast-24.
    assert cuda_gaps([use("Equal", 18, T="float")]) == []
    assert len(cuda_gaps([use("Equal", 19, T="float")])) == 1
    assert cuda_gaps([use("ReduceMax", 19, T="float")]) == []
    assert len(cuda_gaps([use("ReduceMax", 20, T="float")])) == 1
    assert cuda_gaps([use("If", 20, B="bool", V="float")]) == []
    assert len(cuda_gaps([use("If", 21, B="bool", V="float")])) == 1
    assert cuda_gaps([use("Cast", 23, T1="float", T2="double")]) == []
    assert len(cuda_gaps([use("Cast", 24, T1="float", T2="double")])) == 1
    # A closed range covers the schema versions inside it: Cast-19 at opset 20 -> [19, 20].
    kernel = cuda_kernel("ai.onnx", "Cast", 20)
    assert kernel is not None and (kernel.since, kernel.until) == (19, 20)


# --- op_uses -------------------------------------------------------------------------


def _if_model(opset: int) -> onnx.ModelProto:
    then = helper.make_graph(
        [
            helper.make_node("Constant", [], ["two"], value=helper.make_tensor("two_t", TensorProto.FLOAT, [], [2.0])),
            helper.make_node("Mul", ["x", "two"], ["x2"], name="scale"),
            helper.make_node("Cast", ["x2"], ["x2_half"], to=TensorProto.FLOAT16, name="to_half"),
            helper.make_node("Sqrt", ["x2_half"], ["root"], name="root"),
            helper.make_node("Cast", ["root"], ["y_then"], to=TensorProto.DOUBLE, name="to_double"),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("y_then", TensorProto.DOUBLE, [3])],
    )
    other = helper.make_graph(
        [
            helper.make_node("Mystery", ["x"], ["odd"], domain="custom.test", name="mystery"),
            helper.make_node("Add", ["odd", "odd"], ["odd2"], name="add_unknown"),
            helper.make_node("Cast", ["x"], ["y_else"], to=TensorProto.DOUBLE, name="else_cast"),
        ],
        "else",
        [],
        [helper.make_tensor_value_info("y_else", TensorProto.DOUBLE, [3])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Greater", ["x", "limit"], ["big"], name="big"),
            helper.make_node("ReduceMax", ["big_f"], ["any"], keepdims=0, name="any"),
            helper.make_node("Clip", ["x", "", "limit"], ["clipped"], name="clip"),
            helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="branch"),
        ],
        "main",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("big_f", TensorProto.FLOAT, [3]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.DOUBLE, [3]),
            helper.make_tensor_value_info("any", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("clipped", TensorProto.FLOAT, [3]),
        ],
        initializer=[helper.make_tensor("limit", TensorProto.FLOAT, [], [1.0])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("custom.test", 1)]
    )
    onnx.checker.check_model(model)
    return model


def test_op_uses_walks_if_branches_with_types() -> None:
    uses = {u.node: u for u in op_uses(_if_model(17))}
    assert uses["Greater 'big'"] == use("Greater", 17, T="float", T1="bool")
    assert uses["ReduceMax 'any'"] == use("ReduceMax", 17, T="float")
    assert uses["Clip 'clip'"] == use("Clip", 17, T="float")  # the omitted min input is skipped
    assert uses["If 'branch'"] == use("If", 17, B="bool", V="double")
    assert uses["If 'branch' > then_branch > Mul 'scale'"] == use("Mul", 17, T="float")  # x from the outer scope
    assert uses["If 'branch' > then_branch > Cast 'to_half'"] == use("Cast", 17, T1="float", T2="float16")
    assert uses["If 'branch' > then_branch > Sqrt 'root'"] == use("Sqrt", 17, T="float16")
    assert uses["If 'branch' > then_branch > Cast 'to_double'"] == use("Cast", 17, T1="float16", T2="double")
    assert uses["If 'branch' > else_branch > Cast 'else_cast'"] == use("Cast", 17, T1="float", T2="double")
    assert uses["If 'branch' > then_branch > Constant #0"].op_type == "Constant"
    # The custom op's output has no known type, so Add's constraint is left out, not guessed.
    assert uses["If 'branch' > else_branch > Add 'add_unknown'"] == use("Add", 17)
    assert uses["If 'branch' > else_branch > Mystery 'mystery'"] == OpUse("custom.test", "Mystery", 1, {})
    assert len(uses) == 12


def test_gaps_of_a_model_name_the_subgraph_node() -> None:
    assert cuda_gaps(op_uses(_if_model(17))) == [
        "If 'branch' > else_branch > Mystery 'mystery' (custom.test Mystery, opset 1): "
        "CUDAExecutionProvider has no Mystery kernel"
    ]
    gaps = cuda_gaps(op_uses(_if_model(21)))
    assert [g.split(" (")[0] for g in gaps] == [
        "ReduceMax 'any'",
        "If 'branch'",
        "If 'branch' > else_branch > Mystery 'mystery'",
    ]


def test_heterogeneous_outputs_of_mixed_types_leave_the_constraint_out() -> None:
    branch = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["a"]),
            helper.make_node("Greater", ["x", "x"], ["b"]),
        ],
        "branch",
        [],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("b", TensorProto.BOOL, [2]),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["ya", "yb"], then_branch=branch, else_branch=branch)],
        "main",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("ya", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("yb", TensorProto.BOOL, [2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    [if_use] = [u for u in op_uses(model) if u.op_type == "If"]
    assert if_use.types == {"B": "bool"}
