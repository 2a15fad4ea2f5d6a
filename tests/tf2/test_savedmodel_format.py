"""SavedModels in and out: round trip, discovery by data flow, guard and clip fidelity, bad inputs.

The SavedModels are tiny Keras 3 two-head models trained by a ``tf.function`` step and saved
with ``train`` and ``infer`` signatures (built once per session). Semantics:
docs/semantics.md#guard, #clip.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from optrewrite.cli import main
from optrewrite.errors import InputError
from optrewrite.tf import proto
from optrewrite.tf.io import top_level_fields
from optrewrite.tf2 import io

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

GUARD_B = "version: 1\nguard:\n  variables: ['net/head_b/*']\n"
CLIP_A = ("version: 1\nguard:\n  variables: ['net/head_b/*']\nclip:\n"
          "  - variables: ['net/head_a/kernel']\n    max_norm: 0.5\n    dims: [0]\n")
CLIP_EMB = ("version: 1\nguard:\n  variables: ['net/emb/*']\nclip:\n"
            "  - variables: ['net/emb/embeddings']\n    max_norm: 0.05\n    dims: [1]\n")
GNC = "version: 1\nglobal_norm_clip:\n  variables: ['*']\n  clip_norm: 0.01\n"


def _build(out: Path, optimizer: str, *, sparse: bool = False) -> Path:
    """A two-head model (an embedding in front when ``sparse``) and its train step, saved."""
    keras.utils.set_random_seed(0)

    class Net(keras.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.emb = keras.layers.Embedding(5, 3) if sparse else None
            self.head_a = keras.layers.Dense(2)
            self.head_b = keras.layers.Dense(1)

        def call(self, x: Any) -> Any:
            if self.emb is not None:
                x = tf.reduce_sum(self.emb(x), axis=1)
            return self.head_a(x), self.head_b(x)

    net = Net()
    x_spec = tf.TensorSpec([2, 2], tf.int32) if sparse else tf.TensorSpec([2, 3], tf.float32)
    net(tf.zeros(x_spec.shape, x_spec.dtype))
    opt = {"adam": lambda: keras.optimizers.Adam(0.05),
           "sgdm": lambda: keras.optimizers.SGD(0.1, momentum=0.9)}[optimizer]()
    opt.build(net.trainable_variables)

    class Step(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net, self.opt = net, opt

        @tf.function(input_signature=[x_spec, tf.TensorSpec([2, 2]), tf.TensorSpec([2, 1]), tf.TensorSpec([2])])
        def train(self, x: Any, ya: Any, yb: Any, wb: Any) -> Any:
            with tf.GradientTape() as tape:
                a, b = self.net(x)
                loss = tf.reduce_mean((a - ya) ** 2) + tf.reduce_mean(wb[:, None] * (b - yb) ** 2)
            grads = tape.gradient(loss, self.net.trainable_variables)
            self.opt.apply_gradients(zip(grads, self.net.trainable_variables))
            return {"loss": loss}

        @tf.function(input_signature=[x_spec])
        def infer(self, x: Any) -> Any:
            a, b = self.net(x)
            return {"a": a, "b": b}

    step = Step()
    tf.saved_model.save(step, str(out), signatures={"train": step.train.get_concrete_function(),
                                                    "infer": step.infer.get_concrete_function()})
    return out


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tf.config.experimental.enable_op_determinism()
    root = tmp_path_factory.mktemp("savedmodels")
    return {"adam": _build(root / "adam", "adam"), "sgdm": _build(root / "sgdm", "sgdm"),
            "emb": _build(root / "emb", "sgdm", sparse=True)}


def _spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _rewrite(src: Path, spec: Path, out: Path, *extra: str) -> int:
    return main([str(src), "--spec", str(spec), "-o", str(out), *extra])


# ------------------------------------------------------------------------------ round trip


def test_round_trip_keeps_untouched_parts_byte_for_byte(models: dict[str, Path], tmp_path: Path) -> None:
    src = models["adam"]
    before = _tree(src)
    out = tmp_path / "out"
    assert _rewrite(src, _spec(tmp_path, CLIP_A), out) == 0
    assert _tree(src) == before, "the input directory was written"
    after = _tree(out)
    for name, digest in before.items():
        if name.startswith(("variables/", "assets/")):
            assert after[name] == digest
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "a temporary directory was left"
    a = io.load(src, (src / "saved_model.pb").read_bytes())
    b = io.load(out, (out / "saved_model.pb").read_bytes())
    changed = {f.signature.name for f in b.meta.graph_def.library.function
               if f.SerializeToString(deterministic=True) != a.functions[f.signature.name].SerializeToString(deterministic=True)}
    assert changed and all(name.startswith("__inference_train_") for name in changed)
    # everything but the library and the plan record is the input's bytes
    for fld in ("object_graph_def", "signature_def", "saver_def", "meta_info_def"):
        assert getattr(a.meta, fld) == getattr(b.meta, fld)
    assert list(a.meta.graph_def.node) == list(b.meta.graph_def.node)
    assert "optrewrite_plan" in b.meta.collection_def
    assert (out / "fingerprint.pb").read_bytes() != (src / "fingerprint.pb").read_bytes()
    loaded = tf.saved_model.load(str(out))
    result = loaded.signatures["infer"](x=tf.ones([2, 3]))
    assert set(result) == {"a", "b"}


def _fingerprint_fields(raw: bytes) -> dict[int, bytes]:
    """FingerprintDef's fields by number, without the uuid (field 7), which TensorFlow draws at random."""
    return {number: raw[start:end] for number, start, _p, end in top_level_fields(raw) if number != 7}


def test_fingerprint_is_tensorflows_own(models: dict[str, Path], tmp_path: Path) -> None:
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    out = tmp_path / "out"
    assert _rewrite(models["adam"], _spec(tmp_path, CLIP_A), out) == 0
    written = (out / "fingerprint.pb").read_bytes()
    assert _fingerprint_fields(written) == _fingerprint_fields(bytes(fingerprinting.CreateFingerprintDef(str(out))))
    fp = tf.saved_model.experimental.read_fingerprint(str(out))
    assert fp.saved_model_checksum != tf.saved_model.experimental.read_fingerprint(str(models["adam"])).saved_model_checksum


REWRITE_THEN_IMPORT = r"""
import sys, tempfile
from optrewrite.cli import main
assert main([sys.argv[1], "--spec", sys.argv[2], "-o", sys.argv[3]]) == 0
assert "tensorflow" not in sys.modules, "the rewrite imported the tensorflow package"
import tensorflow as tf
print(tf.saved_model.experimental.read_fingerprint(sys.argv[3]).saved_model_checksum)
class M(tf.Module):
    def __init__(self):
        self.v = tf.Variable(1.0)
d = tempfile.mkdtemp()
tf.saved_model.save(M(), d)  # TensorFlow's own saving still fingerprints, through the extension loaded first
print(tf.saved_model.experimental.read_fingerprint(d).saved_model_checksum)
"""


def test_fingerprint_without_importing_tensorflow(models: dict[str, Path], tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "out"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", REWRITE_THEN_IMPORT, str(models["adam"]),
                           str(_spec(tmp_path, CLIP_A)), str(out)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ours, theirs = done.stdout.split()[-2:]
    assert int(ours) == tf.saved_model.experimental.read_fingerprint(str(out)).saved_model_checksum
    assert int(theirs) > 0


def test_check_of_a_sealed_savedmodel_searches_nothing(models: dict[str, Path], tmp_path: Path) -> None:
    from optrewrite.api import rewrite_file
    from optrewrite.tf2.rewrite import SEAL_MARKER

    spec = _spec(tmp_path, CLIP_A)
    out = tmp_path / "out"
    assert _rewrite(models["adam"], spec, out) == 0
    quick = rewrite_file(out, spec, mode="check")
    assert quick.sealed and not quick.changed and quick.sites == []
    full = rewrite_file(out, spec, mode="check", report_path=tmp_path / "r.json")  # a report: always searched
    assert not full.sealed and not full.changed and full.sites
    other = _spec(tmp_path, GUARD_B, "other.yaml")
    with pytest.raises(InputError, match="different spec"):
        rewrite_file(out, other, mode="check")
    # one digit of the seal changed: not trusted, searched, and still nothing to do
    pb = out / "saved_model.pb"
    raw = pb.read_bytes()
    at = raw.rfind(SEAL_MARKER) + len(SEAL_MARKER)
    pb.write_bytes(raw[:at] + (b"1" if raw[at:at + 1] == b"0" else b"0") + raw[at + 1:])
    report = rewrite_file(out, spec, mode="check")
    assert not report.sealed and not report.changed and report.sites


def test_rerun_is_reproducible_and_idempotent(models: dict[str, Path], tmp_path: Path) -> None:
    spec = _spec(tmp_path, CLIP_A)
    one, two, three = tmp_path / "one", tmp_path / "two", tmp_path / "three"
    assert _rewrite(models["adam"], spec, one) == 0
    assert _rewrite(models["adam"] / "saved_model.pb", spec, two) == 0
    assert _tree(one) == _tree(two)
    assert _rewrite(one, spec, three) == 0  # nothing to do: the same bytes
    assert (three / "saved_model.pb").read_bytes() == (one / "saved_model.pb").read_bytes()
    assert _rewrite(one, spec, one.with_name("again")) == 0
    assert _rewrite(models["adam"], spec, one) == 0, "an earlier output directory is replaced"
    assert _rewrite(one, _spec(tmp_path, GUARD_B, "other.yaml"), tmp_path / "four") == 2
    assert not (tmp_path / "four").exists()


def test_default_output_is_beside_the_export_dir(models: dict[str, Path], tmp_path: Path) -> None:
    from optrewrite.formats import format_for, output_for

    assert format_for(models["adam"]).name == "TensorFlow SavedModel"
    assert output_for(models["adam"]) == models["adam"].with_name("adam.rewritten")
    assert output_for(models["adam"] / "saved_model.pb") == models["adam"].with_name("adam.rewritten")


# ------------------------------------------------------------------------------ bad inputs


def test_bad_inputs_are_one_line_errors(models: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path, GUARD_B)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.txt").write_text("x")
    novars = tmp_path / "novars"
    novars.mkdir()
    (novars / "saved_model.pb").write_bytes((models["adam"] / "saved_model.pb").read_bytes())
    corrupt = tmp_path / "corrupt"
    (corrupt / "variables").mkdir(parents=True)
    (corrupt / "saved_model.pb").write_bytes(b"\x12\xff\xff\xff\x0f garbage")
    cases = [
        (novars, tmp_path / "o1", "variables/"),
        (corrupt, tmp_path / "o2", "corrupt"),
        (models["adam"], models["adam"], "input"),
        (models["adam"], models["adam"] / "inside", "inside the input"),
    ]
    for src, out, words in cases:
        capsys.readouterr()
        assert _rewrite(src, spec, out) == 2, src
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
        assert not (models["adam"] / "inside").exists()
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    assert main([str(empty), "--spec", str(spec), "-o", str(tmp_path / "o3")]) == 2


def _split(raw: bytes, path: list[int], field: int) -> bytes:
    """``raw`` with the message at ``path`` (field numbers from the top, each occurring once)
    written as two pieces, the second holding the later half of its repeated ``field``: a
    protobuf parser merges them into the same message."""
    from optrewrite.tf.io import _length_delimited

    head, *rest = path
    out = []
    for number, s, p, e in top_level_fields(raw):
        if number != head:
            out.append(raw[s:e])
        elif rest:
            out.append(_length_delimited(number, _split(raw[p:e], rest, field)))
        else:
            body = raw[p:e]
            inner = top_level_fields(body)
            items = [body[a:b] for n, a, _q, b in inner if n == field]
            others = b"".join(body[a:b] for n, a, _q, b in inner if n != field)
            half = len(items) // 2
            assert half, "nothing to split"
            out.append(_length_delimited(number, others + b"".join(items[:half])))
            out.append(_length_delimited(number, b"".join(items[half:])))
    return b"".join(out)


@pytest.mark.parametrize(("path", "field", "words"), [
    ([2, 2, 2], 1, "function library in several pieces"),  # SavedModel.meta_graphs/graph_def/library: functions
    ([2, 7], 1, "object graph in several pieces"),  # SavedModel.meta_graphs/object_graph_def: nodes
])
def test_a_message_in_several_pieces_is_refused(models: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str], path: list[int], field: int,
                                                 words: str) -> None:
    """Parsers merge a message written in pieces; edits by position would land in the wrong
    piece, so such a SavedModel is refused (exit 2, one line, nothing written)."""
    src = _copy_tree(models["adam"], tmp_path / "src")
    pb = src / "saved_model.pb"
    raw = _split(pb.read_bytes(), path, field)
    parsed = proto.MetaGraphDef.FromString(next(raw[p:e] for n, _s, p, e in top_level_fields(raw) if n == 2))
    assert parsed == proto.MetaGraphDef.FromString(
        next(pb.read_bytes()[p:e] for n, _s, p, e in top_level_fields(pb.read_bytes()) if n == 2))
    pb.write_bytes(raw)
    capsys.readouterr()
    assert _rewrite(src, _spec(tmp_path, GUARD_B), tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "out").exists()



@pytest.mark.parametrize("inputs", [1, 3])
def test_a_write_with_the_wrong_inputs_is_refused(models: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str], inputs: int) -> None:
    """An ``AssignSubVariableOp`` of the step with one data input, or three: TensorFlow would not
    load the function; exit 2, one line naming the node, nothing written."""
    from tensorflow.core.protobuf import saved_model_pb2

    src = _copy_tree(models["adam"], tmp_path / "src")
    pb = src / "saved_model.pb"
    sm = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    fn = next(f for f in sm.meta_graphs[0].graph_def.library.function if f.signature.name.startswith("__inference_train"))
    write = next(n for n in fn.node_def if n.op == "AssignSubVariableOp")
    data = [i for i in write.input if not i.startswith("^")]
    controls = [i for i in write.input if i.startswith("^")]
    del write.input[:]
    write.input.extend([*(data[:1] if inputs == 1 else [*data, data[1]]), *controls])
    pb.write_bytes(sm.SerializeToString())
    capsys.readouterr()
    assert _rewrite(src, _spec(tmp_path, GUARD_B), tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and write.name in err and "2 expected" in err, err
    assert not (tmp_path / "out").exists()

def _copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_no_output_lands_on_a_file_of_the_input_savedmodel(models: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Every file of the input directory is a read of the run's write plan: a report (or a
    SavedModel) that would land on one is exit 2 before anything is written."""
    src = _copy_tree(models["adam"], tmp_path / "src")
    before = _tree(src)
    index = next((src / "variables").glob("*.index"))
    spec = _spec(tmp_path, GUARD_B)
    for report in (src / "saved_model.pb", index):
        capsys.readouterr()
        out = tmp_path / "out"
        assert _rewrite(src, spec, out, "--report", str(report)) == 2, report
        err = capsys.readouterr().err.strip()
        assert "the report would overwrite the input SavedModel's" in err, err
        assert not out.exists()
    assert _tree(src) == before


def test_a_link_inside_the_input_savedmodel_is_refused(models: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A copied link would carry what it points to (a private file) into the output."""
    src = _copy_tree(models["adam"], tmp_path / "src")
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    (src / "assets").mkdir(exist_ok=True)
    (src / "assets" / "vocab.txt").symlink_to(secret)
    capsys.readouterr()
    out = tmp_path / "out"
    assert _rewrite(src, _spec(tmp_path, GUARD_B), out) == 2
    err = capsys.readouterr().err.strip()
    assert "a symbolic link in the SavedModel" in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_savedmodel_and_report_are_written_all_or_nothing(models: dict[str, Path], tmp_path: Path) -> None:
    """The output directory is staged in the run's write plan: a report that cannot be
    written leaves no output directory and no temporary one; a stale temporary directory of
    a killed run is removed; an earlier output directory is replaced whole."""
    spec = _spec(tmp_path, GUARD_B)
    out = tmp_path / "out"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert _rewrite(models["adam"], spec, out, "--report", str(blocker / "report.json")) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "spec.yaml"]
    stale = tmp_path / ".out.optrewrite-999999999-0badc0de.tmp"
    (stale / "variables").mkdir(parents=True)
    out.mkdir()
    (out / "saved_model.pb").write_bytes(b"an earlier output")
    (out / "left-over.txt").write_text("from an earlier run")
    assert _rewrite(models["adam"], spec, out, "--report", str(tmp_path / "r.json")) == 0
    assert not stale.exists(), "the stale temporary directory was left"
    assert not (out / "left-over.txt").exists(), "the earlier output was merged, not replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "out", "r.json", "spec.yaml"]


def test_a_savedmodel_without_updates_names_what_it_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    class Plain(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.ones([2]))

        @tf.function(input_signature=[tf.TensorSpec([2])])
        def infer(self, x: Any) -> Any:
            return {"y": x * self.w}

    src = tmp_path / "plain"
    m = Plain()
    tf.saved_model.save(m, str(src), signatures={"infer": m.infer.get_concrete_function()})
    capsys.readouterr()
    assert _rewrite(src, _spec(tmp_path, GUARD_B), tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "no optimizer update" in err and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ discovery


def test_sites_are_named_by_object_paths_with_their_slots(models: dict[str, Path]) -> None:
    from optrewrite.tf2.rewrite import discover

    for name, n_slots in (("adam", 2), ("sgdm", 1)):
        loaded = io.load(models[name], io.read(models[name]))
        found = discover(loaded)
        assert not found.skips
        by_var = {s.variable: s for s in found.sites}
        assert set(by_var) == {"net/head_a/kernel", "net/head_a/bias", "net/head_b/kernel", "net/head_b/bias"}
        for site in found.sites:
            assert len(site.slots) == n_slots and not site.sparse
            assert all(not slot.trainable for slot in site.slots)
    loaded = io.load(models["emb"], io.read(models["emb"]))
    emb = [s for s in discover(loaded).sites if s.variable == "net/emb/embeddings"]
    assert emb and all(s.sparse and s.indices for s in emb)


def test_output_arg_table_matches_the_op_registry() -> None:
    from tensorflow.python.framework import op_def_registry

    from optrewrite.tf2.functions import OUTPUT_ARGS, SECOND_OUTPUT_ARGS

    for op, arg in OUTPUT_ARGS.items():
        op_def = op_def_registry.get(op)
        assert op_def is not None, op
        assert [a.name for a in op_def.output_arg][:1] == ([arg] if arg else []), op
    for op, arg in SECOND_OUTPUT_ARGS.items():
        assert op_def_registry.get(op).output_arg[1].name == arg


# ------------------------------------------------------------------------------ fidelity


def _variables(loaded: Any) -> dict[str, Any]:
    net, opt = loaded.net, loaded.opt
    found = {"net/head_a/kernel": net.head_a._kernel, "net/head_a/bias": net.head_a.bias,
             "net/head_b/kernel": net.head_b._kernel, "net/head_b/bias": net.head_b.bias}
    for i, v in enumerate(opt._variables):
        found[f"opt/{i}"] = v
    return found


def _train(path: Path, masks: list[float], seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Run the ``train`` signature once per mask of head b; the variables after each step."""
    loaded = tf.saved_model.load(str(path))
    variables = _variables(loaded)
    rng = np.random.default_rng(seed)
    states = []
    for mask in masks:
        x = rng.uniform(-1, 1, (2, 3)).astype(np.float32)
        ya = rng.uniform(-1, 1, (2, 2)).astype(np.float32)
        yb = rng.uniform(-1, 1, (2, 1)).astype(np.float32)
        loaded.signatures["train"](x=x, ya=ya, yb=yb, wb=np.full([2], mask, np.float32))
        states.append({k: v.numpy().copy() for k, v in variables.items()})
    return states


@pytest.mark.parametrize("name", ["adam", "sgdm"])
def test_masked_head_keeps_its_values_the_other_trains_as_before(models: dict[str, Path], tmp_path: Path,
                                                                 name: str) -> None:
    out = tmp_path / "out"
    assert _rewrite(models[name], _spec(tmp_path, GUARD_B), out) == 0
    masks = [1.0, 0.0, 0.0, 1.0]
    original = _train(models[name], masks)
    rewritten = _train(out, masks)
    b_state = {k for k in original[0] if k.startswith("net/head_b/")}
    moving = set()  # optimizer variables that move in masked steps: the counter and head a's slots
    for step, mask in enumerate(masks):
        for k in original[step]:
            if k.startswith("net/head_a/") or mask == 1.0 and step == 0:
                np.testing.assert_array_equal(rewritten[step][k], original[step][k], err_msg=f"{k} step {step}")
        if mask == 0.0:
            for k in b_state:
                np.testing.assert_array_equal(rewritten[step][k], rewritten[step - 1][k], err_msg=k)
            changed = {k for k in original[step] if not np.array_equal(rewritten[step][k], rewritten[step - 1][k])}
            assert "opt/0" in changed, "the iteration counter advances every step"
            moving |= {k for k in changed if k.startswith("opt/")}
            # the original does move head b in this step (momentum), so the guard did something
            assert any(not np.array_equal(original[step][k], original[step - 1][k]) for k in b_state)
    # 2 + 4 slots of head a's two variables (Adam) or 2 (momentum), the counter: head b's are frozen
    assert len(moving) == (1 + 4 if name == "adam" else 1 + 2)


def test_bitwise_equal_when_nothing_is_masked(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _rewrite(models["adam"], _spec(tmp_path, GUARD_B), out) == 0
    masks = [1.0, 1.0, 1.0]
    for a, b in zip(_train(models["adam"], masks), _train(out, masks)):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_clip_bounds_the_norm_after_each_step(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _rewrite(models["adam"], _spec(tmp_path, CLIP_A), out) == 0
    for state in _train(out, [1.0, 1.0, 1.0]):
        norms = np.linalg.norm(state["net/head_a/kernel"], axis=0)
        assert (norms <= 0.5 * (1 + 1e-6)).all(), norms


def test_sparse_gradient_guard_and_row_clip(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _rewrite(models["emb"], _spec(tmp_path, CLIP_EMB), out) == 0
    loaded = tf.saved_model.load(str(out))
    emb = loaded.net.emb._embeddings
    before = emb.numpy().copy()
    x = np.array([[0, 1], [1, 3]], np.int32)
    loaded.signatures["train"](x=x, ya=np.ones([2, 2], np.float32), yb=np.ones([2, 1], np.float32),
                               wb=np.ones([2], np.float32))
    after = emb.numpy()
    for row in (0, 1, 3):
        assert np.linalg.norm(after[row]) <= 0.05 * (1 + 1e-6)
    for row in (2, 4):  # untouched rows are not clipped
        np.testing.assert_array_equal(after[row], before[row])


def test_global_norm_clip_runs(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _rewrite(models["sgdm"], _spec(tmp_path, GNC), out) == 0
    original = _train(models["sgdm"], [1.0])[0]
    clipped = _train(out, [1.0])[0]
    start = _variables(tf.saved_model.load(str(models["sgdm"])))
    moved = np.sqrt(sum(np.sum((clipped[k] - start[k].numpy()) ** 2) for k in start if k.startswith("net/")))
    moved_orig = np.sqrt(sum(np.sum((original[k] - start[k].numpy()) ** 2) for k in start if k.startswith("net/")))
    assert moved <= 0.1 * 0.01 * (1 + 1e-5) < moved_orig  # lr * clip_norm on the first SGD step


def test_explain_and_diff(models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path, CLIP_A)
    out = tmp_path / "out"
    assert _rewrite(models["adam"], spec, out) == 0
    capsys.readouterr()
    assert main(["explain", str(models["adam"]), "--spec", str(spec)]) == 0
    text = capsys.readouterr().out
    assert "net/head_b/kernel" in text and "guard" in text and "TensorFlow SavedModel" in text
    assert main(["diff", str(models["adam"]), str(out)]) == 1
    text = capsys.readouterr().out
    assert "optrewrite_plan" in text and "__inference_train_" in text and "variables/" not in text
    assert main(["diff", str(out), str(out)]) == 0


def test_rewriting_imports_no_tensorflow(models: dict[str, Path], tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from optrewrite.spec import load_spec; "
            "from optrewrite.formats import format_for, read_graph; "
            f"p = Path({str(models['adam'])!r}); f = format_for(p); "
            f"o = f.rewrite(p, read_graph(p), load_spec({str(_spec(tmp_path, CLIP_A))!r}), lower=False); "
            "f.serialize(o); assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})
    assert proto.FunctionDef


def test_verify_runs_the_training_signature(models: dict[str, Path], tmp_path: Path) -> None:
    out, report = tmp_path / "out", tmp_path / "report.json"
    assert _rewrite(models["sgdm"], _spec(tmp_path, GUARD_B), out, "--verify", "--report", str(report)) == 0
    verified = json.loads(report.read_text())["verified"]
    # only the training signature runs ('infer' updates nothing); the SGD momentum step moves
    # the six model variables and their six momenta, and the iteration counter
    assert verified.startswith("ran one step ('train') in TensorFlow"), verified
    assert verified.endswith("variables changed"), verified


def test_verify_with_relative_paths(models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The verification runs in a child with a working directory of its own: a relative
    output (staged as a relative temporary directory) once made the load fail there."""
    monkeypatch.chdir(tmp_path)
    spec = _spec(tmp_path, GUARD_B)
    assert main([os.path.relpath(models["sgdm"]), "--spec", "spec.yaml", "-o", "out", "--verify", "-q"]) == 0
    assert (tmp_path / "out" / "saved_model.pb").is_file() and spec.is_file()


def _build_step(out: Path, body: Any) -> Path:
    """A one-variable SGD step whose ``train`` signature also runs ``body(loss)``."""
    keras.utils.set_random_seed(0)
    dense = keras.layers.Dense(1)
    dense(tf.zeros([2, 3]))
    opt = keras.optimizers.SGD(0.1)
    opt.build(dense.trainable_variables)

    class Step(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.dense, self.opt = dense, opt

        @tf.function(input_signature=[tf.TensorSpec([2, 3]), tf.TensorSpec([2, 1])])
        def train(self, x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((self.dense(x) - y) ** 2)
            grads = tape.gradient(loss, self.dense.trainable_variables)
            self.opt.apply_gradients(zip(grads, self.dense.trainable_variables))
            body(loss)
            return {"loss": loss}

    step = Step()
    tf.saved_model.save(step, str(out), signatures={"train": step.train.get_concrete_function()})
    return out


def test_verify_refuses_a_step_that_writes_a_file(tmp_path: Path, capsys: Any) -> None:
    """The allow-list is checked before anything runs: the step's WriteFile never runs."""
    target = tmp_path / "written-by-the-graph"
    src = _build_step(tmp_path / "writer", lambda loss: tf.io.write_file(str(target), tf.strings.as_string(loss)))
    capsys.readouterr()
    out = tmp_path / "out"
    assert _rewrite(src, _spec(tmp_path, "version: 1\nguard:\n  variables: ['*']\n"), out, "--verify") == 2
    err = capsys.readouterr().err
    assert "op 'WriteFile'" in err and "not on the list of ops" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not target.exists() and not out.exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "a temporary directory was left"


def test_verify_errors_never_quote_the_runtime_text(tmp_path: Path, capsys: Any) -> None:
    """A step whose Assert fails (in the input too): exit 2, the node and a phrase of ours,
    not the values the Assert prints."""
    secret = 271828.5

    def body(loss: Any) -> None:
        tf.debugging.Assert(loss < 0.0, [tf.constant(secret), loss])

    src = _build_step(tmp_path / "asserts", body)
    capsys.readouterr()
    out = tmp_path / "out"
    assert _rewrite(src, _spec(tmp_path, "version: 1\nguard:\n  variables: ['*']\n"), out, "--verify") == 2
    err = capsys.readouterr().err
    assert "does not run either" in err and "an Assert failed" in err, err
    assert "271828" not in err, err
    assert not out.exists()


def test_a_refusal_naming_many_skipped_updates_stays_one_short_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every update skipped, the names long: the line names the first and counts the rest."""
    long = "counter_with_a_name_as_long_as_a_generated_one_" * 3

    class Counters(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.counts = [tf.Variable(tf.zeros([2], tf.int32), name=f"{long}{k}") for k in range(6)]

        @tf.function(input_signature=[tf.TensorSpec([2], tf.int32)])
        def step(self, x: Any) -> Any:
            for v in self.counts:
                v.assign_add(x)
            return {"n": self.counts[0].read_value()}

    src = tmp_path / "counters"
    m = Counters()
    tf.saved_model.save(m, str(src), signatures={"step": m.step.get_concrete_function()})
    capsys.readouterr()
    assert _rewrite(src, _spec(tmp_path, "version: 1\nguard: {}\n"), tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) <= 300, err
    assert "(found: counts/0: the variable is int32; only float variables are rewritten, and 5 more: " in err, err
    assert not (tmp_path / "out").exists()
