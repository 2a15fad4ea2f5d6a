"""``guard: {counters: true}``: per guarded variable and reason, the number of steps whose
test for that reason fired, as state the rewritten graph carries.

TensorFlow graphs get an int64 resource variable ``<variable>/optrewrite_skipped_<reason>``,
set to 0 by the init op; SavedModels a variable of that name in the object graph and the
checkpoint (at 0), read through the ``optrewrite_counters`` signature; ONNX steps a state
input of that name and its next value, the output ``<name>/new``, which the training loop
feeds back. The reference counts in numpy: ``zero``
when no element of the gradient is non-zero (NaN is non-zero), ``nonfinite`` when some
element is NaN or infinite, per variable, over the 16 steps of tests/fed_step.py with NaN and
infinities in some. With ``granularity: element`` the counters count the same tensor-level
tests.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from optrewrite.api import rewrite_file
from optrewrite.cli import main
from optrewrite.errors import SpecError
from tests.fed_step import (DENSE, INIT, LR, Step, assert_bitwise, keras_savedmodel, onnx_step, run_tf2, schedule,
                             tf1_graph)

REASONS = ("zero", "nonfinite")


def expected(steps: list[Step], names: list[str]) -> dict[str, int]:
    out = {}
    for name in names:
        out[f"{name}/optrewrite_skipped_zero"] = sum(not np.any(s.grad(name) != 0) for s in steps)
        out[f"{name}/optrewrite_skipped_nonfinite"] = sum(not np.isfinite(s.grad(name)).all() for s in steps)
    return out


def spec_text(extra: str = "") -> str:
    return "version: 1\nguard:\n  when: zero_or_nonfinite\n  counters: true\n" + extra


def _count(out: Path, names: list[str], steps: list[Step], config: object,
           initialize: Callable[[Any, Any], None]) -> tuple[dict[str, int | None], dict[str, int]]:
    """Run the rewritten TF graph ``out`` over ``steps`` after ``initialize(session, graph)``:
    each counter's value before the first step (None: it had none) and after the last."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(tf.compat.v1.GraphDef.FromString(out.read_bytes()), name="")
        handles = {n: graph.get_tensor_by_name(f"{n}:0") for n in names}
        reads = {n: tf.raw_ops.ReadVariableOp(resource=h, dtype=tf.int64) for n, h in handles.items()}
        is_set = {n: tf.raw_ops.VarIsInitializedOp(resource=h) for n, h in handles.items()}
    with tf.compat.v1.Session(graph=graph, config=config) as sess:
        initialize(sess, graph)
        before = {n: int(sess.run(reads[n])) if set_ else None for n, set_ in sess.run(is_set).items()}
        for s in steps:
            sess.run(graph.get_operation_by_name("train"), {"gw:0": s.w, "gbig:0": s.big,
                                                            "emb_values:0": s.emb_values,
                                                            "emb_indices:0": s.emb_indices})
        after = {k: int(v) for k, v in sess.run(reads).items()}
    return before, after


@pytest.mark.parametrize("granularity", ["tensor", "element"])
def test_tensorflow_counts_each_reason(tmp_path: Path, tf_config: object, granularity: str) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(f"  granularity: {granularity}\n"))
    out = tmp_path / "out.pb"
    report = rewrite_file(tf1_graph(tmp_path), spec, output=out)
    steps = schedule(nonfinite=True)
    want = expected(steps, list(INIT))
    assert sorted(n for s in report.sites for n in s.state) == sorted(want)
    before, got = _count(out, list(want), steps, tf_config,
                         lambda sess, graph: sess.run(graph.get_operation_by_name("init")))
    assert set(before.values()) == {0}  # the init op sets them
    assert got == want
    assert 0 < min(want.values()) and max(want.values()) < len(steps)


def test_tensorflow_counters_start_themselves_without_the_init_op(tmp_path: Path, tf_config: object) -> None:
    """A session that restores the model from a checkpoint runs no init op: the model's
    variables get their values (here their own initializers), the counters none; the first
    step starts each at 0, and the counts are the reference's."""
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text())
    out = tmp_path / "out.pb"
    rewrite_file(tf1_graph(tmp_path), spec, output=out)
    steps = schedule(nonfinite=True)
    want = expected(steps, list(INIT))
    before, got = _count(out, list(want), steps, tf_config,
                         lambda sess, graph: sess.run([graph.get_operation_by_name(f"{n}/Assign") for n in INIT]))
    assert set(before.values()) == {None}
    assert got == want


@pytest.mark.parametrize("lower", [True, False], ids=["lowered", "preview"])
def test_onnx_counts_each_reason_as_state(tmp_path: Path, lower: bool) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text("lower: true\n" if lower else ""))
    out = tmp_path / "out.onnx"
    report = rewrite_file(onnx_step(tmp_path), spec, output=out)
    onnx.checker.check_model(str(out), full_check=True)
    steps = schedule(nonfinite=True)
    want = expected(steps, DENSE)
    assert sorted(n for s in report.sites for n in s.state) == sorted(want)
    model = onnx.load(str(out))
    assert {f"{n}/new" for n in want} <= {o.name for o in model.graph.output}
    assert _count_onnx(out, steps, list(want), lower=lower) == want


def _count_onnx(out: Path, steps: list[Step], counters: list[str], *, lower: bool) -> dict[str, int]:
    """Run the ONNX step ``out`` over ``steps``, feeding every state back: the counters after."""
    model = onnx.load(str(out))
    if lower:
        import onnxruntime as ort

        run = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run
    else:  # preview-training ops: onnx's reference evaluator runs them
        run = ReferenceEvaluator(model).run
    names = [o.name for o in model.graph.output]
    state = {**{n: INIT[n].copy() for n in DENSE}, **{f"v_{n}": np.zeros_like(INIT[n]) for n in DENSE},
             **{n: np.array(0, np.int64) for n in counters}}
    with np.errstate(invalid="ignore", over="ignore"):  # the reference evaluator computes skipped NaN updates too
        for k, s in enumerate(steps):
            feed = {"R": np.array(LR, np.float32), "T": np.array(k + 1, np.int64), "g_w": s.w, "g_big": s.big, **state}
            results = dict(zip(names, run(None, feed)))
            state = {n.removesuffix("/new").removesuffix("_new"): v for n, v in results.items()}
    return {n: int(state[n]) for n in counters}


def test_explain_and_the_report_name_the_counters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text("lower: true\n"))
    src = onnx_step(tmp_path)
    assert main(["explain", str(src), "--spec", str(spec), "--wide"]) == 0
    assert "counters w/optrewrite_skipped_zero, w/optrewrite_skipped_nonfinite" in capsys.readouterr().out
    report = tmp_path / "report.json"
    assert main([str(src), "--spec", str(spec), "-o", str(tmp_path / "out.onnx"), "--report", str(report)]) == 0
    sites = json.loads(report.read_text())["sites"]
    assert {s["variable"]: s["state"] for s in sites}["big"] == ["big/optrewrite_skipped_zero",
                                                                  "big/optrewrite_skipped_nonfinite"]


def test_counters_need_an_init_op(tmp_path: Path) -> None:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        v = tf.compat.v1.get_variable("v", initializer=np.ones(3, np.float32), use_resource=True)
        g = tf.compat.v1.placeholder(tf.float32, [3], name="g")
        tf.compat.v1.train.GradientDescentOptimizer(0.1).apply_gradients([(g, v)], name="train")
        tf.group(v.initializer, name="setup")
    src = tmp_path / "g.pb"
    src.write_bytes(graph.as_graph_def().SerializeToString())
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text())
    with pytest.raises(SpecError, match=r"s.yaml:4: guard.counters: the graph has no NoOp named 'init'"):
        rewrite_file(src, spec, output=tmp_path / "out.pb")
    spec.write_text(spec_text("  init_op: start\n"))
    with pytest.raises(SpecError, match=r"s.yaml:4: guard.init_op: the graph has no op 'start'"):
        rewrite_file(src, spec, output=tmp_path / "out.pb")
    spec.write_text(spec_text("  init_op: setup\n"))
    report = rewrite_file(src, spec, output=tmp_path / "out.pb")
    assert report.sites[0].state == ["v/optrewrite_skipped_zero", "v/optrewrite_skipped_nonfinite"]


def _savedmodel_counts(out: Path, steps: list[Step]) -> tuple[dict[str, int], dict[str, int], list[dict[str, Any]]]:
    """Load the rewritten SavedModel ``out``, train it over ``steps`` through its ``train``
    signature: the ``optrewrite_counters`` signature's values before and after, and the
    state after each step."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(out))
    read = loaded.signatures["optrewrite_counters"]
    before = {k: int(v) for k, v in read().items()}
    states = []
    for s in steps:
        loaded.signatures["train"](gw=tf.constant(s.w), gbig=tf.constant(s.big), values=tf.constant(s.emb_values),
                                   indices=tf.constant(s.emb_indices))
        states.append({k: v.numpy() for k, v in loaded.signatures["state"]().items()})
    after = {k: int(v) for k, v in read().items()}
    by_object = {k: int(loaded.optrewrite_counters[k].numpy()) for k in after}
    assert by_object == after
    return before, after, states


@pytest.fixture(scope="module")
def keras_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return keras_savedmodel(tmp_path_factory.mktemp("counted") / "saved")


@pytest.mark.parametrize("granularity", ["tensor", "element"])
def test_savedmodel_counts_each_reason(keras_export: Path, tmp_path: Path, granularity: str) -> None:
    """Counters in a SavedModel are variables of it: 0 as loaded, then the reference's counts;
    training moves every other variable exactly as the same spec without counters does."""
    steps = schedule(nonfinite=True)
    want = expected(steps, list(INIT))
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(f"  granularity: {granularity}\n"))
    report = rewrite_file(keras_export, spec, output=tmp_path / "out")
    assert sorted(n for s in report.sites for n in s.state) == sorted(want)
    before, got, states = _savedmodel_counts(tmp_path / "out", steps)
    assert before == dict.fromkeys(want, 0)
    assert got == want
    assert 0 < min(want.values()) and max(want.values()) < len(steps)
    spec.write_text(spec_text(f"  granularity: {granularity}\n").replace("  counters: true\n", ""))
    rewrite_file(keras_export, spec, output=tmp_path / "plain")
    assert_bitwise(states, run_tf2(tmp_path / "plain", steps), "with counters against without")


def test_savedmodel_counters_checkpoint_and_rerun(keras_export: Path, tmp_path: Path) -> None:
    """``variables/`` holds every tensor it had, bit for bit, each counter at 0 under its
    object-graph key; a rerun writes the same bytes; the output is up to date and a rewrite of
    it has nothing to do."""
    import tensorflow as tf

    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text())
    rewrite_file(keras_export, spec, output=tmp_path / "a")
    rewrite_file(keras_export, spec, output=tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert [str(p) for p in files] == ["fingerprint.pb", "saved_model.pb", "variables/variables.data-00000-of-00001",
                                       "variables/variables.index"]
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    old = tf.train.load_checkpoint(str(keras_export / "variables" / "variables"))
    new = tf.train.load_checkpoint(str(tmp_path / "a" / "variables" / "variables"))
    old_keys, new_keys = set(old.get_variable_to_dtype_map()), set(new.get_variable_to_dtype_map())
    for key in old_keys - {"_CHECKPOINTABLE_OBJECT_GRAPH"}:
        assert new.get_tensor(key).tobytes() == old.get_tensor(key).tobytes(), key
    added = sorted(new_keys - old_keys)
    assert added == sorted(f"optrewrite_counters/{n}.Soptrewrite_skipped_{r}/.ATTRIBUTES/VARIABLE_VALUE"
                           for n in INIT for r in REASONS)
    assert {int(new.get_tensor(k)) for k in added} == {0}
    check = rewrite_file(tmp_path / "a", spec, mode="check")
    assert not check.changed
    again = rewrite_file(tmp_path / "a", spec, output=tmp_path / "c")
    assert again.note == "already rewritten with this spec: nothing to do"


def test_savedmodels_take_no_init_op(keras_export: Path, tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text("  init_op: init\n"))
    with pytest.raises(SpecError, match=r"s.yaml:4: guard.init_op: names a TensorFlow graph's init op"):
        rewrite_file(keras_export, spec, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_one_spec_counts_the_same_on_every_format(keras_export: Path, tmp_path: Path, tf_config: object) -> None:
    """The same spec and the same fed steps: a TensorFlow graph, a SavedModel and an ONNX step
    (lowered) count the same skipped steps for ``w`` and ``big``."""
    steps = schedule(nonfinite=True)
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text("  granularity: element\n"))
    names = [f"{n}/optrewrite_skipped_{r}" for n in DENSE for r in REASONS]
    rewrite_file(tf1_graph(tmp_path), spec, output=tmp_path / "tf1.pb")
    rewrite_file(keras_export, spec, output=tmp_path / "tf2")
    rewrite_file(onnx_step(tmp_path), spec, output=tmp_path / "step.onnx", lower=True)
    _, tf1 = _count(tmp_path / "tf1.pb", names, steps, tf_config,
                    lambda sess, graph: sess.run(graph.get_operation_by_name("init")))
    _, all_tf2, _ = _savedmodel_counts(tmp_path / "tf2", steps)
    tf2 = {n: all_tf2[n] for n in names}
    ox = _count_onnx(tmp_path / "step.onnx", steps, names, lower=True)
    assert tf1 == tf2 == ox, (tf1, tf2, ox)
    assert len(set(tf1.values())) > 1


@pytest.mark.parametrize("part", ["variables.index", "variables.data-00000-of-00001"])
def test_savedmodel_counters_with_an_unreadable_checkpoint(keras_export: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str], part: str) -> None:
    """A new checkpoint is written from the old one's tensors: a corrupt one is a one-line
    error (exit 2), and no output appears."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(keras_export, src)
    target = src / "variables" / part
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text())
    assert main([str(src), "--spec", str(spec), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint" in err[0], err
    assert not (tmp_path / "out").exists()
