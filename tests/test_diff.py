"""optrewrite.diff: structural, order-insensitive graph diffs of TensorFlow and ONNX files.

The graphs are the bundled fixtures (TensorFlow GraphDef and MetaGraphDef, ONNX steps before
and after rewriting, with If subgraphs) and the ONNX two-task training step of
tests/onnx/models.py; each test edits a copy and checks the exact lines the edit gives.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper

from optrewrite.diff import GraphDiff, diff_files
from optrewrite.errors import InputError
from optrewrite.tf import io, proto

from .onnx.models import training_step

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TF_PB = FIXTURES / "momentum_ref_dense" / "input.pb"
TF_PBTXT = FIXTURES / "adam_resource_sparse" / "input.pbtxt"
TF_META = FIXTURES / "gd_ref_sparse_meta" / "input.meta"
ONNX_GUARDED = FIXTURES / "momentum_preview_guarded" / "expected.onnx"  # If nodes with subgraphs
ONNX_LOWERED = FIXTURES / "adam_preview_lowered" / "expected.onnx"  # scalar initializers


# --------------------------------------------------------------------------- helpers


def tf_message(path: Path) -> proto.GraphDef | proto.MetaGraphDef:
    """A fresh copy of the GraphDef or MetaGraphDef in ``path``."""
    loaded = io.load(path, path.read_bytes())
    copy = type(loaded.message)()
    copy.CopyFrom(loaded.message)
    return copy


def write_tf(message: proto.GraphDef | proto.MetaGraphDef, path: Path) -> Path:
    """``message`` in ``path``, text format for ``.pbtxt``, else binary."""
    if path.suffix == ".pbtxt":
        path.write_text(text_format.MessageToString(message))
    else:
        path.write_bytes(message.SerializeToString())
    return path


def tf_diff(a: proto.GraphDef | proto.MetaGraphDef, b: proto.GraphDef | proto.MetaGraphDef, tmp: Path,
            suffix: str = ".pb") -> GraphDiff:
    return diff_files(write_tf(a, tmp / f"a{suffix}"), write_tf(b, tmp / f"b{suffix}"))


def node(graph: proto.GraphDef, name: str) -> proto.NodeDef:
    return next(n for n in graph.node if n.name == name)


def onnx_diff(a: onnx.ModelProto, b: onnx.ModelProto, tmp: Path) -> GraphDiff:
    onnx.save(a, tmp / "a.onnx")
    onnx.save(b, tmp / "b.onnx")
    return diff_files(tmp / "a.onnx", tmp / "b.onnx")


def onnx_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


# --------------------------------------------------------------------------- equal graphs


def test_tf_nodes_and_control_inputs_in_another_order_are_the_same(tmp_path: Path) -> None:
    a = tf_message(TF_PB)
    b = tf_message(TF_PB)
    nodes = list(reversed(b.node))
    del b.node[:]
    b.node.extend(nodes)
    update = node(b, "train/update")
    controls = [i for i in update.input if i.startswith("^")]
    assert len(controls) >= 2
    del update.input[:]
    update.input.extend(reversed(controls))
    assert a.SerializeToString() != b.SerializeToString()
    result = tf_diff(a, b, tmp_path)
    assert result.same and result.lines == () and result.format == "TensorFlow"


@pytest.mark.parametrize("source", [TF_PB, TF_PBTXT, TF_META], ids=["GraphDef.pb", "GraphDef.pbtxt", "meta"])
def test_binary_and_text_form_of_one_graph_are_the_same(source: Path, tmp_path: Path) -> None:
    message = tf_message(source)
    binary = write_tf(message, tmp_path / f"graph{'.meta' if source.suffix == '.meta' else '.pb'}")
    text = write_tf(message, tmp_path / "graph.pbtxt")
    assert diff_files(binary, text).same
    assert diff_files(text, source).same


def test_onnx_nodes_initializers_and_value_info_in_another_order_are_the_same(tmp_path: Path) -> None:
    a = training_step("Adam").model
    a.graph.value_info.extend([helper.make_tensor_value_info(f"t{i}", TensorProto.FLOAT, [i]) for i in range(3)])
    b = onnx_copy(a)
    for field in (b.graph.node, b.graph.initializer, b.graph.value_info):
        items = list(reversed(field))
        del field[:]
        field.extend(items)
    assert len(a.graph.node) > 20
    assert onnx_diff(a, b, tmp_path).same


# --------------------------------------------------------------------------- TensorFlow differences


def test_tf_node_added_and_removed(tmp_path: Path) -> None:
    a = tf_message(TF_PB)
    b = tf_message(TF_PB)
    b.node.remove(node(b, "init"))
    b.node.add(name="extra", op="NoOp", input=["^train"])
    assert tf_diff(a, b, tmp_path).lines == (
        "- node init (NoOp)",
        "+ node extra = NoOp(^train)",
    )


def test_tf_each_node_field_change_is_named(tmp_path: Path) -> None:
    a = tf_message(TF_PB)
    b = tf_message(TF_PB)
    read = node(b, "dense/kernel/read")
    read.op = "Snapshot"
    read.device = "/device:CPU:0"
    read.attr["T"].type = proto.DT_DOUBLE
    matmul = node(b, "MatMul")
    matmul.input[1] = "dense/bias/read"
    node(b, "train").input.append("^init")
    assert tf_diff(a, b, tmp_path).lines == (
        "~ node MatMul: input 1: dense/kernel/read -> dense/bias/read",
        "~ node dense/kernel/read: op Identity -> Snapshot",
        '~ node dense/kernel/read: device "" -> "/device:CPU:0"',
        "~ node dense/kernel/read: attr T: DT_FLOAT -> DT_DOUBLE",
        "~ node train: control input +^init",
    )


def test_tf_attrs_added_removed_and_tensors_shown_by_value_or_digest(tmp_path: Path) -> None:
    a = tf_message(TF_PB)
    b = tf_message(TF_PB)
    lr = node(b, "train/learning_rate")
    lr.attr["value"].tensor.float_val[:] = [0.25]
    init = node(b, "dense/kernel/initial_value")
    init.attr["value"].tensor.tensor_content = np.arange(6, dtype=np.float32).tobytes()
    del lr.attr["dtype"]
    node(b, "init").attr["_note"].s = b"kept"
    lines = tf_diff(a, b, tmp_path).lines
    assert lines[0] == '~ node dense/kernel/initial_value: attr value: DT_FLOAT[3,2] ' \
        '[0.0, 0.16666667, 0.33333334, 0.5, 0.6666667, 0.8333333] -> DT_FLOAT[3,2] [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]'
    assert lines[1:] == (
        '~ node init: attr _note: (none) -> "kept"',
        "~ node train/learning_rate: attr dtype: DT_FLOAT -> (none)",
        "~ node train/learning_rate: attr value: DT_FLOAT[] 0.1 -> DT_FLOAT[] 0.25",
    )

    big = tf_message(TF_PB)
    value = node(big, "dense/kernel/initial_value").attr["value"].tensor
    value.tensor_shape.dim[0].size = 300
    value.tensor_content = np.zeros((300, 2), np.float32).tobytes()
    (line,) = tf_diff(a, big, tmp_path).lines
    assert line.startswith("~ node dense/kernel/initial_value: attr value: DT_FLOAT[3,2] [0.0, ")
    assert line.split(" -> ")[1].startswith("DT_FLOAT[300,2] sha256:") and len(line) < 200


def test_tf_function_library(tmp_path: Path) -> None:
    a = tf_message(TF_PB)
    fn = a.library.function.add()
    fn.signature.name = "scale"
    fn.signature.input_arg.add(name="x", type=proto.DT_FLOAT)
    fn.signature.output_arg.add(name="y", type=proto.DT_FLOAT)
    mul = fn.node_def.add(name="mul", op="Mul", input=["x", "x"])
    mul.attr["T"].type = proto.DT_FLOAT
    fn.ret["y"] = "mul:z:0"
    a.library.gradient.add(function_name="scale", gradient_func="scale_grad")

    changed = proto.GraphDef()
    changed.CopyFrom(a)
    f = changed.library.function[0]
    f.node_def[0].attr["T"].type = proto.DT_DOUBLE
    f.node_def[0].input.append("^x")
    f.node_def.add(name="neg", op="Neg", input=["mul:z:0"])
    f.signature.output_arg[0].type = proto.DT_DOUBLE
    f.ret["y"] = "neg:y:0"
    changed.library.gradient[0].gradient_func = "other_grad"
    assert tf_diff(a, changed, tmp_path).lines == (
        "~ function scale: + node neg = Neg(mul:z:0)",
        "~ function scale: ~ node mul: control input +^x",
        "~ function scale: ~ node mul: attr T: DT_FLOAT -> DT_DOUBLE",
        "~ function scale: ~ signature: output_arg[0].type: DT_FLOAT -> DT_DOUBLE",
        '~ function scale: ~ ret[y]: "mul:z:0" -> "neg:y:0"',
        "~ gradient scale: scale_grad -> other_grad",
    )
    plain = tf_message(TF_PB)
    assert tf_diff(a, plain, tmp_path).lines == ("- function scale", "- gradient scale (scale_grad)")
    assert tf_diff(plain, a, tmp_path).lines == ("+ function scale (1 node)", "+ gradient scale = scale_grad")


def test_tf_versions(tmp_path: Path) -> None:
    a = tf_message(TF_PB)
    b = tf_message(TF_PB)
    b.versions.producer += 1
    b.versions.bad_consumers.append(7)
    assert tf_diff(a, b, tmp_path, ".pbtxt").lines == (
        f"~ versions.producer: {a.versions.producer} -> {a.versions.producer + 1}",
        "~ versions.bad_consumers: [] -> [7]",
    )


def test_tf_metagraph_fields(tmp_path: Path) -> None:
    a = tf_message(TF_META)
    b = tf_message(TF_META)
    assert isinstance(b, proto.MetaGraphDef)
    b.meta_info_def.tensorflow_version = "9.9.9"
    b.meta_info_def.tags.append("train")
    stripped = b.meta_info_def.stripped_op_list.op
    stripped.remove(next(op for op in stripped if op.name == "NoOp"))
    b.collection_def["train_op"].node_list.value.append("init")
    b.collection_def["extra"].node_list.value.append("x")
    b.saver_def.filename_tensor_name = "save/Const:0"
    b.signature_def["serving"].method_name = "predict"
    b.signature_def["serving"].inputs["x"].name = "x:0"
    assert tf_diff(a, b, tmp_path, ".meta").lines == (
        "- stripped op NoOp",
        '+ collection extra = ["x"]',
        '~ collection train_op: +"init"',
        '~ meta_info_def.tags: [] -> ["train"]',
        f'~ meta_info_def.tensorflow_version: "{a.meta_info_def.tensorflow_version}" -> "9.9.9"',
        '~ saver_def: (none) -> {filename_tensor_name: "save/Const:0"}',
        '~ signature_def[serving]: (none) -> {inputs { key: "x" value { name: "x:0" } } method_name: "predict"}',
    )


def test_tf_graphdef_and_metagraphdef_compare_their_graphs(tmp_path: Path) -> None:
    meta = tf_message(TF_META)
    assert isinstance(meta, proto.MetaGraphDef)
    graph = write_tf(meta.graph_def, tmp_path / "graph.pb")
    assert diff_files(TF_META, graph).lines == (
        "~ container: MetaGraphDef -> GraphDef (only the graphs are compared)",
    )
    meta.graph_def.node.add(name="extra", op="NoOp")
    assert diff_files(graph, write_tf(meta, tmp_path / "x.meta")).lines == (
        "~ container: GraphDef -> MetaGraphDef (only the graphs are compared)",
        "+ node extra = NoOp()",
    )


# --------------------------------------------------------------------------- ONNX differences


def test_onnx_node_added_removed_and_changed(tmp_path: Path) -> None:
    a = onnx.load(ONNX_LOWERED)
    b = onnx_copy(a)
    nodes = {n.name: n for n in b.graph.node}
    b.graph.node.remove(nodes["optrewrite/dense/bias/guard/Not"])
    b.graph.node.append(helper.make_node("Not", ["optrewrite/dense/bias/guard/LessOrEqual"],
                                         ["optrewrite/dense/bias/guard/Not"], name="not"))
    mul = nodes["optrewrite/global_norm_clip/Mul_1"]
    mul.op_type = "Div"
    mul.input[:] = ["optrewrite/const", "optrewrite/global_norm_clip/Mul"]
    mul.output[0] = "renamed"
    assert onnx_diff(a, b, tmp_path).lines == (
        "- node optrewrite/dense/bias/guard/Not (Not)",
        "+ node not = Not(optrewrite/dense/bias/guard/LessOrEqual) -> optrewrite/dense/bias/guard/Not",
        "~ node optrewrite/global_norm_clip/Mul_1: op Mul -> Div",
        "~ node optrewrite/global_norm_clip/Mul_1: input 0: optrewrite/global_norm_clip/Mul -> optrewrite/const",
        "~ node optrewrite/global_norm_clip/Mul_1: input 1: optrewrite/const -> optrewrite/global_norm_clip/Mul",
        "~ node optrewrite/global_norm_clip/Mul_1: output 0: optrewrite/global_norm_clip/Mul_1 -> renamed",
    )


def test_onnx_initializer_digest_dims_and_type(tmp_path: Path) -> None:
    a = onnx.load(ONNX_LOWERED)
    b = onnx_copy(a)
    inits = {t.name: t for t in b.graph.initializer}
    inits["optrewrite/const"].CopyFrom(numpy_helper.from_array(np.array(0.75, np.float32), "optrewrite/const"))
    inits["optrewrite/const_1"].CopyFrom(numpy_helper.from_array(np.array([2.0], np.float32), "optrewrite/const_1"))
    inits["optrewrite/const_3"].CopyFrom(numpy_helper.from_array(np.array(1.0, np.float64), "optrewrite/const_3"))
    same_values = helper.make_tensor("optrewrite/const_4", TensorProto.FLOAT, [], [5.0])  # float_data, not raw
    inits["optrewrite/const_4"].CopyFrom(same_values)
    lines = onnx_diff(a, b, tmp_path).lines
    old = numpy_helper.to_array(next(t for t in a.graph.initializer if t.name == "optrewrite/const"))
    assert old == np.float32(0.5)
    digest = lines[0].split("digest ")[1].split(" -> ")
    assert lines[0].startswith("~ initializer optrewrite/const: digest ") and len(digest[0]) == 12
    assert digest[0] != digest[1]
    assert lines[1:] == (
        "~ initializer optrewrite/const_1: dims [] -> [1]",
        "~ initializer optrewrite/const_3: dtype float -> double",
        f"~ initializer optrewrite/const_3: digest {digest_of(a, 'optrewrite/const_3')} -> "
        f"{digest_of(b, 'optrewrite/const_3')}",
    )


def digest_of(model: onnx.ModelProto, name: str) -> str:
    import hashlib

    array = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))
    return hashlib.sha256(array.tobytes()).hexdigest()[:12]


def test_onnx_external_data_references_are_compared_never_read(tmp_path: Path) -> None:
    a = onnx.load(ONNX_LOWERED)
    w = a.graph.initializer.add(name="W", data_type=TensorProto.FLOAT, dims=[3, 2])
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "missing.bin"), ("offset", "0"), ("length", "24")):
        w.external_data.add(key=key, value=value)
    b = onnx_copy(a)
    next(t for t in b.graph.initializer if t.name == "W").external_data[1].value = "64"
    assert not (tmp_path / "missing.bin").exists()
    assert onnx_diff(a, b, tmp_path).lines == (
        "~ initializer W: data external(location=missing.bin, offset=0, length=24) -> "
        "external(location=missing.bin, offset=64, length=24)",
    )


def test_onnx_opset_ir_version_producer_metadata_and_doc_strings(tmp_path: Path) -> None:
    a = onnx.load(ONNX_LOWERED)
    b = onnx_copy(a)
    b.ir_version = 9
    b.producer_name = "other"
    b.doc_string = "trained"
    b.opset_import[0].version = 18
    b.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    plan = next(p for p in b.metadata_props if p.key == "optrewrite.plan")
    plan.value = "abc"
    b.metadata_props.add(key="owner", value="team")
    b.graph.node[0].doc_string = "first"
    b.graph.doc_string = "the step"
    assert onnx_diff(a, b, tmp_path).lines == (
        "~ ir_version: 10 -> 9",
        '~ producer_name: "regen_fixtures" -> "other"',
        '~ doc_string: "" -> "trained"',
        "+ opset com.microsoft 1",
        "~ opset ai.onnx: 17 -> 18",
        '+ metadata owner = "team"',
        f'~ metadata optrewrite.plan: "{next(p.value for p in a.metadata_props)}" -> "abc"',
        f'~ node {a.graph.node[0].name}: doc_string: "" -> "first"',
        '~ graph doc_string: "" -> "the step"',
    )


def test_onnx_graph_inputs_outputs_and_value_info(tmp_path: Path) -> None:
    a = onnx.load(ONNX_LOWERED)
    a.graph.value_info.append(helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, "N"]))
    b = onnx_copy(a)
    b.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    b.graph.value_info[0].type.tensor_type.shape.dim[1].dim_value = 4
    b.graph.value_info.append(helper.make_tensor_value_info("u", TensorProto.INT64, None))
    first, second = b.graph.output[0], b.graph.output[1]
    tmp = onnx.ValueInfoProto()
    tmp.CopyFrom(first)
    first.CopyFrom(second)
    second.CopyFrom(tmp)
    outs = [o.name for o in a.graph.output]
    assert onnx_diff(a, b, tmp_path).lines == (
        "~ input lr: type float[] -> double[]",
        f"~ outputs order: ({', '.join(outs)}) -> ({', '.join([outs[1], outs[0], *outs[2:]])})",
        "+ value_info u: int64[...]",
        "~ value_info t: type float[2,N] -> float[2,4]",
    )


def test_onnx_subgraph_changes_are_named_by_their_path(tmp_path: Path) -> None:
    a = onnx.load(ONNX_GUARDED)
    b = onnx_copy(a)
    guard = next(n for n in b.graph.node if n.name == "optrewrite/head/a/guard/If")
    then = next(x for x in guard.attribute if x.name == "then_branch").g
    alpha = next(x for x in then.node[0].attribute if x.name == "alpha")
    alpha.f = 0.5
    orig_else = next(x for x in guard.attribute if x.name == "else_branch").g
    orig_else.node.add().CopyFrom(helper.make_node("Identity", ["head/a"], ["copy"], name="copy"))
    assert onnx_diff(a, b, tmp_path).lines == (
        "~ node optrewrite/head/a/guard/If: attr else_branch: + node copy = Identity(head/a) -> copy",
        "~ node optrewrite/head/a/guard/If: attr then_branch: "
        "~ node optrewrite/head/a/update/Momentum: attr alpha: 0.9 -> 0.5",
    )


def test_onnx_unnamed_nodes_are_keyed_by_their_first_output(tmp_path: Path) -> None:
    a = onnx.load(ONNX_LOWERED)
    for n in a.graph.node:
        n.name = ""
    b = onnx_copy(a)
    reduce = next(n for n in b.graph.node if n.op_type == "ReduceL1")
    keep = next(x for x in reduce.attribute if x.name == "keepdims")
    old = keep.i
    keep.i = 1 - old
    reversed_nodes = list(reversed(b.graph.node))
    del b.graph.node[:]
    b.graph.node.extend(reversed_nodes)
    assert onnx_diff(a, b, tmp_path).lines == (f"~ node [{reduce.output[0]}]: attr keepdims: {old} -> {1 - old}",)


def test_onnx_local_functions(tmp_path: Path) -> None:
    a = onnx.load(ONNX_LOWERED)
    fn = helper.make_function("custom", "Twice", ["x"], ["y"], [helper.make_node("Add", ["x", "x"], ["y"])],
                              [helper.make_opsetid("", 17)])
    b = onnx_copy(a)
    b.functions.append(fn)
    assert onnx_diff(a, b, tmp_path).lines == ("+ function custom::Twice (1 node)",)
    c = onnx_copy(b)
    c.functions[0].node[0].op_type = "Mul"
    c.functions[0].doc_string = "x * x"
    assert onnx_diff(b, c, tmp_path).lines == (
        "~ function custom::Twice: ~ node [y]: op Add -> Mul",
        '~ function custom::Twice: ~ doc_string: "" -> "x * x"',
    )


# --------------------------------------------------------------------------- bad input, output


def test_onnx_against_tensorflow_is_an_input_error() -> None:
    with pytest.raises(InputError, match="only graphs of one format can be compared") as info:
        diff_files(ONNX_LOWERED, TF_PB)
    assert str(info.value) == (f"{ONNX_LOWERED} is an ONNX model and {TF_PB} a TensorFlow graph: "
                               "only graphs of one format can be compared")


@pytest.mark.parametrize("name", ["junk.pb", "junk.pbtxt", "junk.meta", "junk.onnx", "junk.bin"])
def test_a_file_that_is_no_graph_is_an_input_error(name: str, tmp_path: Path) -> None:
    junk = tmp_path / name
    junk.write_bytes(b"\x00\xffnot a graph at all\n\x13\x37" * 10)
    other = ONNX_LOWERED if name.endswith(".onnx") else TF_PB
    for a, b in ((junk, other), (other, junk)):
        with pytest.raises(InputError) as info:
            diff_files(a, b)
        assert str(junk) in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_directory_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        diff_files(tmp_path / "nothing.pb", TF_PB)
    with pytest.raises(InputError, match="is a directory"):
        diff_files(TF_PB, tmp_path)


def test_render_counts_and_indents(tmp_path: Path) -> None:
    assert diff_files(TF_PB, TF_PB).render("a.pb", "b.pb") == "0 differences between a.pb and b.pb"
    a = tf_message(TF_PB)
    b = tf_message(TF_PB)
    b.node.add(name="extra", op="NoOp")
    one = tf_diff(a, b, tmp_path)
    assert one.render("A", "B") == "1 difference between A and B\n  + node extra = NoOp()"
    b.node.add(name="more", op="NoOp")
    assert tf_diff(a, b, tmp_path).render("A", "B").splitlines() == [
        "2 differences between A and B", "  + node extra = NoOp()", "  + node more = NoOp()",
    ]
    assert tf_diff(b, a, tmp_path).lines == ("- node extra (NoOp)", "- node more (NoOp)")
