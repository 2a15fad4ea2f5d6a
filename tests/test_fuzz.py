"""The rewrite path under fuzzing (tools/fuzzing.py): a deterministic sample of generated
cases, and one regression test for each bug the fuzzer found.

The full run is ``python tools/fuzz.py --cases 10000 --seed 0``. Every test here goes
through ``optrewrite.cli.main`` and checks the whole promise (:func:`fuzzing.run_case`):
exit 0 with an output that loads, or exit 2 with one short line and nothing written.
"""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from hypothesis import HealthCheck, event, given, settings
from onnx import helper

from optrewrite.cli import main
from optrewrite.errors import SpecError
from optrewrite.spec import parse_spec
from optrewrite.tf import proto

from tools import fuzzing

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GUARD = "version: 1\nguard: {}\n"


@pytest.fixture(scope="module")
def seed_graphs() -> tuple[fuzzing.Seed, ...]:
    """Built once, before hypothesis draws (building them inside a strategy would be slow and
    use the random module)."""
    return fuzzing.seeds()


@settings(derandomize=True, database=None, deadline=None, max_examples=1000,
          suppress_health_check=list(HealthCheck))
@given(case=fuzzing.cases())
def test_every_generated_case_exits_0_with_a_graph_or_2_with_one_line(
        seed_graphs: tuple[fuzzing.Seed, ...], case: fuzzing.Case) -> None:
    outcome = fuzzing.run_case(case)
    event(f"exit {outcome.rc}{' --verify' if case.verify else ''}")  # --hypothesis-show-statistics
    event(f"corruption {case.kind}")
    assert outcome.ok, f"{case.describe()}\nexit {outcome.rc}: {outcome.violations}"


def test_every_seed_graph_rewrites_and_verifies(seed_graphs: tuple[fuzzing.Seed, ...]) -> None:
    """The seeds are valid: a guard of every variable rewrites each, and the output runs."""
    kinds = {seed.kind for seed in seed_graphs}
    assert kinds >= {"graphdef", "metagraph", "onnx"} and ("savedmodel" in kinds) == _has_tensorflow()
    for seed in seed_graphs:
        suffix = {"graphdef": ".pb", "metagraph": ".meta", "onnx": ".onnx", "savedmodel": ""}[seed.kind]
        spec = GUARD + ("updates: " + repr([dict(u) for u in seed.updates]) + "\n" if seed.updates else "")
        files = seed.files if seed.kind == "savedmodel" else None
        outcome = fuzzing.run_case(fuzzing.Case(seed.name, suffix, seed.data, spec.encode(), verify=True, files=files))
        assert outcome.ok and outcome.rc in (0, 2), (seed.name, outcome.rc, outcome.stderr, outcome.violations)
        if outcome.rc == 2:  # the rewritten seeds carry a plan of another spec
            assert seed.name.endswith(":rewritten") and "already rewritten" in outcome.stderr


def _has_tensorflow() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


# --------------------------------------------------------------------------- regressions: helpers


def run(data: bytes, suffix: str, spec: str, **flags: bool) -> fuzzing.Outcome:
    return fuzzing.run_case(fuzzing.Case("regression", suffix, data, spec.encode(), **flags))


def refused(outcome: fuzzing.Outcome, *fragments: str) -> None:
    """Exit 2 with one line holding every fragment, and the rest of the promise kept."""
    assert outcome.ok, (outcome.violations, outcome.stderr)
    assert outcome.rc == 2, outcome.stderr
    for fragment in fragments:
        assert fragment in outcome.stderr


def tf_graph(case: str = "momentum_ref_dense") -> proto.GraphDef:
    graph = proto.GraphDef()
    graph.ParseFromString((FIXTURES / case / "input.pb").read_bytes())
    return graph


def node(graph: proto.GraphDef, name: str) -> proto.NodeDef:
    return next(n for n in graph.node if n.name == name)


def onnx_model(case: str) -> onnx.ModelProto:
    return onnx.load_from_string((FIXTURES / case / "input.onnx").read_bytes())


DECOMPOSED = (FIXTURES / "decomposed_momentum" / "spec.yaml").read_text()


# --------------------------------------------------------------------------- regressions: the spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: " + "9" * 5000 + "\nguard: {}\n", "version: cannot read '9999"),  # was ValueError, exit 3
        ("version: !foo 1\nguard: {}\n", "version: cannot read '1': "),  # was ConstructorError
        ("version: 1\nguard:\n  variables: [!!binary 'AAA']\n", "guard.variables[0]: cannot read 'AAA'"),
        ("version: 1\nguard:\n  variables: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ("version: 1\nguard:\n  variables: ['re:" + "(" * 5000 + ")" * 5000 + "']\n",
         "guard.variables[0]: 're:(((((((((((((((((... has 10,003 characters; at most 1,000 are allowed"),
        ("version: 1\nguard:\n  variables: ['re:a{99999999999}']\n", "nested or repeated too deeply"),
        ("version: 1\nclip:\n  - variables: [a]\n    max_norm: 1" + "0" * 400 + "\n", "must be a positive number"),
        ("version: 1\nclip:\n  - variables: [a]\n    dims: []\n    max_norm: 1\n", "must list at least one dim"),
    ],
    ids=["huge-int", "unknown-tag", "bad-binary", "deep-yaml", "deep-regex", "huge-repeat", "huge-norm", "no-dims"],
)
def test_odd_yaml_is_a_spec_error_naming_the_field(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "w.yaml")
    message = str(info.value)
    assert expected in message and "\n" not in message and len(message) < 200


def test_values_echoed_from_the_spec_are_cut_short() -> None:
    long = "a" * 100_000
    for text in (f"version: 1\nguard:\n  variables: [{long}]\n",
                 f"version: 1\nguard:\n  variables: ['re:[{long}']\n",
                 f"version: 1\nguard: {{}}\n{long}: 1\n",
                 f"version: 1\nclip:\n  - variables: [x]\n    max_norm: {long}\n"):
        with pytest.raises(SpecError) as info:
            spec = parse_spec(text, "w.yaml")
            spec.bind({"x": 1})
        assert len(str(info.value)) < 200


def test_dims_naming_one_axis_twice_are_refused() -> None:
    spec = parse_spec("version: 1\nclip:\n  - variables: [x]\n    dims: [0, -2]\n    max_norm: 1\n", "w.yaml")
    with pytest.raises(SpecError, match=r"clip\[0\].dims: \[0, -2\] names an axis twice for variable 'x' of rank 2"):
        spec.bind({"x": 2})


def test_a_norm_outside_the_variables_type_is_refused() -> None:
    """1e39 overflows float32: a TF constant failed to pack (exit 3), ONNX's printed a numpy warning."""
    spec = parse_spec("version: 1\nclip:\n  - variables: [x]\n    max_norm: 1.0e+39\n", "w.yaml")
    spec.bind({"x": 1}, dtypes={"x": "float64"})
    with pytest.raises(SpecError, match=r"w.yaml:3: clip\[0\].max_norm: 1e\+39 is outside the range of float32"):
        spec.bind({"x": 1}, dtypes={"x": "float32"})
    tiny = parse_spec("version: 1\nglobal_norm_clip:\n  clip_norm: 1.0e-6\n", "w.yaml")
    with pytest.raises(SpecError, match="global_norm_clip.clip_norm: 1e-06 is outside the range of float16"):
        tiny.bind({"x": 1}, dtypes={"x": "float16"})


def test_norms_outside_float32_exit_2_in_both_formats() -> None:
    spec = "version: 1\nclip:\n  - variables: ['*']\n    max_norm: 1.0e+39\n"
    tf_data = (FIXTURES / "momentum_ref_dense" / "input.pb").read_bytes()
    refused(run(tf_data, ".pb", spec), "clip[0].max_norm: 1e+39 is outside the range of float32")
    onnx_data = (FIXTURES / "momentum_preview_guarded" / "input.onnx").read_bytes()
    refused(run(onnx_data, ".onnx", spec), "clip[0].max_norm: 1e+39 is outside the range of float32")


def test_empty_clip_dims_are_refused_for_onnx_models() -> None:
    """``dims: []`` crashed the ONNX clip at opsets < 18 (an empty axes attribute)."""
    spec = "version: 1\nclip:\n  - variables: ['*']\n    dims: []\n    max_norm: 1\n"
    refused(run((FIXTURES / "momentum_preview_guarded" / "input.onnx").read_bytes(), ".onnx", spec),
            "clip[0].dims: must list at least one dim")


# --------------------------------------------------------------------------- regressions: TensorFlow


def test_an_update_op_missing_an_input_is_an_input_error() -> None:
    """Was IndexError (exit 3) when the op has fewer inputs than its definition."""
    graph = tf_graph()
    apply = node(graph, "train/update_dense/kernel/ApplyMomentum")
    del apply.input[1]
    refused(run(graph.SerializeToString(), ".pb", GUARD),
            "'train/update_dense/kernel/ApplyMomentum' (ApplyMomentum) has 4 data inputs; ApplyMomentum takes 5")


def test_a_decomposed_write_missing_an_input_is_an_input_error() -> None:
    graph = proto.MetaGraphDef()
    graph.ParseFromString((FIXTURES / "gd_ref_sparse_meta" / "input.meta").read_bytes())
    scatter = next(n for n in graph.graph_def.node if n.op == "ScatterSub")
    del scatter.input[2]
    refused(run(graph.SerializeToString(), ".meta", GUARD), "(ScatterSub) has 2 data inputs; ScatterSub takes 3")


def test_a_sparse_update_without_its_index_type_is_an_input_error() -> None:
    """Reading the missing attr added it (type 0) and wrote a Unique of type 0: exit 0, invalid."""
    graph = proto.MetaGraphDef()
    graph.ParseFromString((FIXTURES / "gd_ref_sparse_meta" / "input.meta").read_bytes())
    scatter = next(n for n in graph.graph_def.node if n.op == "ScatterSub")
    del scatter.attr["Tindices"]
    refused(run(graph.SerializeToString(), ".meta", (FIXTURES / "gd_ref_sparse_meta" / "spec.yaml").read_text()),
            "(ScatterSub) has no type attr 'Tindices'")


def test_a_data_input_after_a_control_input_is_an_input_error() -> None:
    graph = tf_graph()
    apply = node(graph, "train/update_dense/kernel/ApplyMomentum")
    apply.input.append("^train/learning_rate")
    apply.input.append(apply.input.pop(0))
    refused(run(graph.SerializeToString(), ".pb", GUARD), "after a control input")


def test_a_cycle_in_the_input_is_an_input_error() -> None:
    """Was exit 0 with the cycle written (TensorFlow refuses to run it)."""
    graph = tf_graph()
    node(graph, "dense/kernel/read").input.append("^train/update_dense/kernel/ApplyMomentum")
    refused(run(graph.SerializeToString(), ".pb", GUARD), "cycle through node")
    text = text_format.MessageToString(graph).encode()
    refused(run(text, ".pbtxt", GUARD), "cycle through node")


def test_while_loop_back_edges_are_no_cycle() -> None:
    graph = tf_graph()
    loop = [
        proto.NodeDef(name="loop/enter", op="Enter", input=["train/learning_rate"]),
        proto.NodeDef(name="loop/merge", op="Merge", input=["loop/enter", "loop/next"]),
        proto.NodeDef(name="loop/next", op="NextIteration", input=["loop/merge"]),
    ]
    graph.node.extend(loop)
    outcome = run(graph.SerializeToString(), ".pb", GUARD)
    assert outcome.ok and outcome.rc == 0, outcome.stderr


def test_an_integer_variable_is_skipped_with_the_reason() -> None:
    """Was exit 3: its clip constants do not pack as int32."""
    graph = tf_graph()
    node(graph, "dense/bias").attr["dtype"].type = proto.DT_INT32
    spec = "version: 1\nclip:\n  - variables: [dense/bias]\n    max_norm: 1\n"
    refused(run(graph.SerializeToString(), ".pb", spec),
            "'dense/bias' is not rewritable: the variable 'dense/bias' is int32")
    assert run(graph.SerializeToString(), ".pb", GUARD).rc == 0  # dense/kernel is still guarded


def test_a_variable_without_dtype_is_skipped_and_left_as_it_was(tmp_path: Path) -> None:
    graph = tf_graph()
    del node(graph, "dense/bias").attr["dtype"]
    text = text_format.MessageToString(graph).encode()
    refused(run(text, ".pbtxt", "version: 1\nguard:\n  variables: [dense/bias]\n"), "has no dtype attr")
    case = fuzzing.Case("regression", ".pbtxt", text, b"version: 1\nguard:\n  variables: [dense/kernel]\n",
                        report=True)
    outcome = fuzzing.run_case(case)
    assert outcome.ok and outcome.rc == 0, (outcome.violations, outcome.stderr)

    (tmp_path / "input.pbtxt").write_bytes(case.data)  # the same run again, to read what it wrote
    (tmp_path / "spec.yaml").write_bytes(case.spec)
    assert main(fuzzing.argv_for(case, tmp_path)) == 0
    written = proto.GraphDef()
    text_format.Parse((tmp_path / "output.pbtxt").read_text(), written)
    for name in ("dense/bias", "train/update_dense/bias/ApplyMomentum"):
        assert node(written, name).SerializeToString(deterministic=True) == \
            node(graph, name).SerializeToString(deterministic=True), name
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["skipped"] == [{"update": "train/update_dense/bias/ApplyMomentum", "variable": "dense/bias",
                                  "reason": "the variable 'dense/bias' has no dtype attr"}]
    assert [(site["variable"], site["inserted"]) for site in report["sites"]] == [("dense/kernel", ["guard"])]


def test_text_nested_too_deeply_is_an_input_error() -> None:
    """Was RecursionError (exit 3) in the text parser."""
    nested = 'attr { key: "k" value { func { name: "f" ' * 3000 + "} } }" * 3000
    text = f'node {{ name: "a" op: "NoOp" attr {{ key: "f" value {{ func {{ name: "f" {nested} }} }} }} }}\n'
    refused(run(text.encode(), ".pbtxt", GUARD), "nested too deeply")


def test_a_plan_that_is_not_utf8_is_another_plan() -> None:
    """Was UnicodeDecodeError (exit 3) when comparing the recorded plan."""
    first = run((FIXTURES / "momentum_ref_dense" / "input.pb").read_bytes(), ".pb", GUARD)
    assert first.rc == 0
    from optrewrite.api import rewrite_bytes  # noqa: PLC0415

    data, _ = rewrite_bytes(Path("g.pb"), (FIXTURES / "momentum_ref_dense" / "input.pb").read_bytes(),
                            parse_spec(GUARD))
    graph = proto.GraphDef()
    graph.ParseFromString(data)
    node(graph, "optrewrite/plan").attr["_optrewrite_plan"].s = b"\xff\xfe"
    refused(run(graph.SerializeToString(), ".pb", GUARD), "already rewritten by optrewrite with a different spec")


# --------------------------------------------------------------------------- regressions: ONNX


def test_a_training_node_reading_a_missing_tensor_is_an_input_error() -> None:
    """Was AssertionError (exit 3): the guard's If read the missing gradient."""
    model = onnx_model("momentum_preview_guarded")
    model.graph.node[0].input[7] = "no_such_tensor"
    refused(run(model.SerializeToString(), ".onnx", GUARD), "uses 'no_such_tensor', which nothing defines")


def test_a_cycle_in_a_decomposed_step_is_an_input_error() -> None:
    model = onnx_model("decomposed_momentum")
    model.graph.node[0].input[1] = "W_new"  # m_decay = momentum * W_new: a cycle
    refused(run(model.SerializeToString(), ".onnx", DECOMPOSED), "not a valid ONNX model")


def test_a_tensor_defined_twice_is_an_input_error() -> None:
    model = onnx_model("decomposed_momentum")
    model.graph.node[2].output[0] = "m_decay"  # step is renamed to m_decay: defined twice
    refused(run(model.SerializeToString(), ".onnx", DECOMPOSED), "not a valid ONNX model")


def test_tensor_names_that_are_not_utf8_are_an_input_error() -> None:
    """ONNX strings are proto2: invalid UTF-8 comes back as bytes, which crashed the rewrite (exit 3)."""
    raw = (FIXTURES / "decomposed_momentum" / "input.onnx").read_bytes()
    bad = raw.replace(b"m_decay", b"m_dec\xff\xfe")  # an output and the input that reads it
    refused(run(bad, ".onnx", DECOMPOSED), "not a valid ONNX model", "not UTF-8 text")


@pytest.mark.parametrize(("attr", "message"), [
    (helper.make_attribute("alpha", helper.make_graph([], "g", [], [])),
     "attribute 'alpha' of Momentum must be a float"),
    (helper.make_attribute("mode", b"\xff"), "attribute 'mode' of Momentum is not UTF-8 text"),
])
def test_a_training_attribute_of_the_wrong_type_is_an_input_error(attr: onnx.AttributeProto, message: str) -> None:
    """Was TypeError / UnicodeDecodeError (exit 3) when the rewrite read it."""
    model = onnx_model("momentum_preview_guarded")
    kept = [a for a in model.graph.node[0].attribute if a.name != attr.name]
    del model.graph.node[0].attribute[:]
    model.graph.node[0].attribute.extend([*kept, attr])
    refused(run(model.SerializeToString(), ".onnx", "version: 1\nguard: {}\nlower: true\n"), message)


def test_onnxruntime_training_optimizers_are_refused_in_one_short_line() -> None:
    model = onnx_model("momentum_preview_guarded")
    model.graph.node[0].op_type, model.graph.node[0].domain = "AdamWOptimizer", "com.microsoft"
    outcome = run(model.SerializeToString(), ".onnx", GUARD)
    refused(outcome, "com.microsoft::AdamWOptimizer", "update_signal")
    assert len(outcome.stderr) < 300


def test_a_decomposed_update_whose_result_feeds_its_own_gradient_is_an_input_error() -> None:
    """Was AssertionError (exit 3): the guard's If read results the rewrite never renamed."""
    spec = DECOMPOSED.replace("gradient: dW", "gradient: W_new")
    data = (FIXTURES / "decomposed_momentum" / "input.onnx").read_bytes()
    refused(run(data, ".onnx", spec), "updates[0]: a selected gradient depends on this update's result 'W_new'")


def test_a_training_node_mixing_float_and_double_is_an_input_error() -> None:
    """The lowering took X's type for all its constants: exit 0 with a model onnxruntime refuses."""
    model = onnx_model("momentum_preview_guarded")
    x = next(i for i in model.graph.input if i.name == "body/w")
    x.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    refused(run(model.SerializeToString(), ".onnx", "version: 1\nguard: {}\nlower: true\n"),
            "'body/w/grad' is float but 'body/w' is double; Momentum takes one type for X, G and its states")


def test_a_bool_that_is_no_bool_is_a_spec_error() -> None:
    """Was KeyError (exit 3) in PyYAML's bool constructor."""
    with pytest.raises(SpecError, match=r"w.yaml:2: guard.variables\[0\]: cannot read 'maybe' as bool"):
        parse_spec("version: 1\nguard: {variables: [!!bool maybe]}\n", "w.yaml")


def test_explain_reads_a_model_whose_names_are_not_utf8() -> None:
    """Was TypeError (exit 3): collecting the model's ``optrewrite`` names met a bytes name."""
    model = onnx_model("decomposed_momentum")
    model.graph.node[0].name = "optrewrite-"  # then b"optrewrite\xff": a node name that is not UTF-8
    bad = model.SerializeToString().replace(b"optrewrite-", b"optrewrite\xff")
    outcome = run(bad, ".onnx", DECOMPOSED, explain=True)
    assert outcome.ok and outcome.rc == 0, (outcome.stderr, outcome.violations)


# --------------------------------------------------------------------------- tools/fuzz.py


def _fuzz_tool():  # type: ignore[no-untyped-def]
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location("fuzz_tool", FIXTURES.parent / "tools" / "fuzz.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("after_ready", "expected"), [
    ("os.abort()", "the worker died (signal 6)"),
    ("time.sleep(60)", "the worker ran past 1 s"),
])
def test_a_worker_that_crashes_or_hangs_is_a_violation_and_is_replaced(
        tmp_path: Path, after_ready: str, expected: str) -> None:
    import sys  # noqa: PLC0415

    script = ("import os, sys, time; sys.stdout.write('fuzz-worker-ready\\n'); sys.stdout.flush(); "
              f"sys.stdin.readline(); {after_ready}")
    worker = _fuzz_tool().Worker([sys.executable, "-c", script], tmp_path / "worker.log")
    result = worker.run(7, timeout=1)
    assert result["index"] == 7 and result["rc"] is None
    assert result["violations"][0].startswith(expected)
    assert worker.restarts == 1 and worker.proc is None  # the next case starts a fresh worker


def test_a_training_node_with_r_and_t_swapped_is_an_input_error() -> None:
    """The lowering compared T with an int64 zero: exit 0 with a model onnxruntime refuses."""
    model = onnx_model("momentum_preview_guarded")
    node = model.graph.node[0]
    node.input[0], node.input[1] = node.input[1], node.input[0]
    refused(run(model.SerializeToString(), ".onnx", "version: 1\nguard: {}\nlower: true\n"),
            "Momentum 'optimizer': its R input 'step' is int64; Momentum takes float or double")


def test_an_output_index_beyond_int32_is_an_input_error() -> None:
    """Was exit 0; TensorFlow's importer then crashes (SIGSEGV) on ':2147483648' and wraps
    ':4294967296' to output 0, so --verify killed the process."""
    for port in ("2147483648", "4294967296", "1" * 5000, "-1", "x", "٣"):
        graph = tf_graph()
        node(graph, "dense/kernel/read").input[0] = f"dense/kernel:{port}"
        refused(run(graph.SerializeToString(), ".pb", GUARD), "whose output index is no int32")


def test_a_next_iteration_outside_a_while_loop_is_an_input_error() -> None:
    """Was exit 3: the input ran, the guarded graph's step crashed TensorFlow's executor
    (SIGSEGV), so --verify blamed the rewrite (seed 3, case 767: wrong_op + drop_input)."""
    graph = tf_graph()
    node(graph, "gradients/mul_grad/tuple/control_dependency_1").op = "NextIteration"
    refused(run(graph.SerializeToString(), ".pb", GUARD),
            "node 'gradients/mul_grad/tuple/control_dependency_1' (NextIteration) feeds "
            "'gradients/Sum_grad/Reshape' (Reshape), not the Merge of a while loop")


def test_a_training_node_of_another_preview_domain_version_is_an_input_error() -> None:
    """Lowered, the model kept importing ai.onnx.preview.training version 12, which onnxruntime refuses."""
    model = onnx_model("momentum_preview_guarded")
    next(i for i in model.opset_import if i.domain == "ai.onnx.preview.training").version = 12
    refused(run(model.SerializeToString(), ".onnx", "version: 1\nguard: {}\nlower: true\n"),
            "imports ai.onnx.preview.training version 12; its training ops exist in version 1 only")


def test_a_training_node_mixing_shapes_is_an_input_error() -> None:
    """X [4] with a gradient [4, 1] broadcasts in onnx.reference; the rewritten step failed in onnxruntime."""
    model = onnx_model("momentum_preview_guarded")
    node = model.graph.node[0]
    g = list(node.input).index("body/w/grad")
    node.input[g] = "head/a/grad"
    refused(run(model.SerializeToString(), ".onnx", "version: 1\nguard: {}\nlower: true\n"),
            "'head/a/grad' has shape [4, 1] but 'body/w' has [4]; Momentum takes one shape for X, G and its states")


def test_a_variable_of_an_unknown_element_type_is_an_input_error() -> None:
    """Was ValueError (exit 3) naming the type."""
    model = onnx_model("decomposed_momentum")
    next(i for i in model.graph.input if i.name == "W").type.tensor_type.elem_type = 99
    refused(run(model.SerializeToString(), ".onnx", DECOMPOSED), "'W' is element type 99; only float and double")


def test_a_shape_mismatch_of_high_rank_is_reported_in_one_short_line() -> None:
    model = onnx_model("momentum_preview_guarded")
    x = next(i for i in model.graph.input if i.name == "body/w")
    x.type.tensor_type.shape.dim.extend([onnx.TensorShapeProto.Dimension(dim_value=2**40)] * 40)
    refused(run(model.SerializeToString(), ".onnx", GUARD), "'body/w' has [4, 1099511627776, ")


def test_a_site_record_without_its_plan_is_an_input_error(tmp_path: Path) -> None:
    """A rewritten model whose plan key was damaged still carries the sites record; writing
    both again would give the model duplicate metadata keys, which the onnx checker refuses."""
    model = onnx.load(str(FIXTURES / "decomposed_momentum" / "expected.onnx"))
    for prop in model.metadata_props:
        if prop.key == "optrewrite.plan":
            prop.key = "optrevrite.plan"
    src = tmp_path / "damaged.onnx"
    onnx.save(model, str(src))
    spec = tmp_path / "s.yaml"
    spec.write_text(GUARD)
    assert main([str(src), "--spec", str(spec), "-o", str(tmp_path / "out.onnx")]) == 2
    assert not (tmp_path / "out.onnx").exists()
