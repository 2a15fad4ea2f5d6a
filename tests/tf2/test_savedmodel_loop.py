"""A training step that loops over micro-steps inside one call: the updates sit in a ``While`` body.

``for i in tf.range(n)`` in a ``tf.function`` becomes a ``While`` op whose body function holds
the gradient and the optimizer's writes; the variables reach the body as loop variables that
the body passes on unchanged. The guard and the clip act per iteration, as they would on a
step of its own.

The reference is the original SavedModel called one micro-step at a time (``n = 1``), with the
guard's semantics applied by hand after each: a head whose loss weight was 0 gets its variables
and Adam slots back. The rewritten SavedModel runs the same micro-steps two per call.

``guard.counters`` counts per micro-step too: the counter's handle enters the loop as a new
loop variable. The expected counts come from the loss weights: a head's gradient is all zero
exactly in the micro-steps that weight its loss 0, the shared layer's in those that weight
both losses 0.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .keras_heads import masked_by, module_for, restore_masked, rewrite

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

BATCH = 4
WEIGHTS = [(1, 1), (1, 0), (0, 1), (0, 0), (1, 1), (0, 1), (2, 0.5), (1, 0)]
MAX_NORM = 0.4


def _build(export_dir: Path) -> list[str]:
    keras.utils.set_random_seed(9)
    inp = keras.Input((3,), batch_size=BATCH)
    h = keras.layers.Dense(4, activation="tanh", name="shared")(inp)
    net = keras.Model(inp, [keras.layers.Dense(1, name="head_a")(h), keras.layers.Dense(1, name="head_b")(h)],
                      name="net")
    opt = keras.optimizers.Adam(0.05)
    module, names = module_for(net, opt)
    spec = [tf.TensorSpec([None, BATCH, 3]), tf.TensorSpec([None, BATCH, 2]), tf.TensorSpec([None, 2])]

    @tf.function(input_signature=spec)
    def train(xs: Any, ys: Any, ws: Any) -> dict[str, Any]:
        total = tf.constant(0.0)
        for i in tf.range(tf.shape(xs)[0]):
            x, y, w = xs[i], ys[i], ws[i]
            with tf.GradientTape() as tape:
                a, b = net(x, training=True)
                loss = w[0] * tf.reduce_mean((a[:, 0] - y[:, 0]) ** 2) + w[1] * tf.reduce_mean((b[:, 0] - y[:, 1]) ** 2)
            grads = tape.gradient(loss, net.trainable_variables)
            opt.apply_gradients(zip(grads, net.trainable_variables))
            total += loss
        return {"loss": total}

    module.train = train
    tf.saved_model.save(module, str(export_dir), signatures={"train": train.get_concrete_function()})
    return names


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    tf.config.experimental.enable_op_determinism()
    export_dir = tmp_path_factory.mktemp("savedmodel_loop") / "net"
    return export_dir, _build(export_dir)


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    n = len(WEIGHTS)
    return (rng.normal(size=(n, BATCH, 3)).astype(np.float32), rng.normal(size=(n, BATCH, 2)).astype(np.float32),
            np.asarray(WEIGHTS, np.float32))


def _run(export_dir: Path, names: list[str], per_call: int, *, guard_by_hand: bool = False
         ) -> list[dict[str, np.ndarray]]:
    """The state after every ``per_call`` micro-steps."""
    loaded = tf.saved_model.load(str(export_dir))
    variables = dict(zip(names, loaded.state_variables))
    xs, ys, ws = _data()
    out = []
    for k in range(0, len(WEIGHTS), per_call):
        before = {n: v.numpy() for n, v in variables.items()}
        loaded.signatures["train"](xs=xs[k:k + per_call], ys=ys[k:k + per_call], ws=ws[k:k + per_call])
        if guard_by_hand:
            restore_masked(variables, before, masked_by(ws[k]))
        out.append({n: v.numpy() for n, v in variables.items()})
    return out


def test_updates_in_a_loop_body_are_found(model: tuple[Path, list[str]], tmp_path: Path) -> None:
    src, _names = model
    _out, report = rewrite(src, tmp_path, "version: 1\nguard: {}\n")
    assert report["counts"] == {"clipped": 0, "global_norm_clipped": 0, "guarded": 6, "skipped": 0,
                                "updates_found": 6}


def test_guard_acts_per_micro_step(model: tuple[Path, list[str]], tmp_path: Path) -> None:
    src, names = model
    out, _report = rewrite(src, tmp_path, "version: 1\nguard: {}\n")
    reference = _run(src, names, 1, guard_by_hand=True)[1::2]
    original = _run(src, names, 2)
    rewritten = _run(out, names, 2)
    assert any(not np.array_equal(o["head_b/kernel"], r["head_b/kernel"]) for o, r in zip(original, reference))
    for t, (ref, got) in enumerate(zip(reference, rewritten)):
        for n in names:
            assert np.array_equal(ref[n], got[n]), (t, n)


def test_clip_bounds_the_norm_after_every_micro_step(model: tuple[Path, list[str]], tmp_path: Path) -> None:
    src, names = model
    out, report = rewrite(src, tmp_path, f"version: 1\nclip:\n  - variables: ['head_a/kernel']\n"
                                          f"    max_norm: {MAX_NORM}\n")
    assert report["counts"]["clipped"] == 1
    original = _run(src, names, 1)
    assert max(np.linalg.norm(s["head_a/kernel"]) for s in original) > 2 * MAX_NORM, "the clip never acts"
    for s in _run(out, names, 1):
        assert np.linalg.norm(s["head_a/kernel"]) <= MAX_NORM * (1 + 1e-6)


def test_counters_count_each_micro_step(model: tuple[Path, list[str]], tmp_path: Path) -> None:
    src, names = model
    out, report = rewrite(src, tmp_path, "version: 1\nguard:\n  counters: true\n")
    assert report["counts"]["guarded"] == 6
    reference = _run(src, names, 1, guard_by_hand=True)[1::2]
    rewritten = _run(out, names, 2)
    for t, (ref, got) in enumerate(zip(reference, rewritten)):
        for n in names:
            assert np.array_equal(ref[n], got[n]), (t, n)
    ws = np.asarray(WEIGHTS)
    masked = {"head_a/": int(np.sum(ws[:, 0] == 0)), "head_b/": int(np.sum(ws[:, 1] == 0)),
              "shared/": int(np.sum((ws == 0).all(axis=1)))}
    assert masked == {"head_a/": 3, "head_b/": 3, "shared/": 1}
    loaded = tf.saved_model.load(str(out))
    xs, ys, ws_in = _data()
    for k in range(0, len(WEIGHTS), 2):
        loaded.signatures["train"](xs=xs[k:k + 2], ys=ys[k:k + 2], ws=ws_in[k:k + 2])
    counts = {name: int(value) for name, value in loaded.signatures["optrewrite_counters"]().items()}
    assert counts == {f"{layer}{part}/optrewrite_skipped_zero": n for layer, n in masked.items()
                      for part in ("kernel", "bias")}


def test_counters_refuse_a_loop_body_that_is_also_called(model: tuple[Path, list[str]], tmp_path: Path) -> None:
    """A new loop variable is a new output of the body: a call of the same body elsewhere
    would get one output more than it declares, so the rewrite is exit 2, nothing written."""
    import shutil

    from tensorflow.core.protobuf import saved_model_pb2

    from optrewrite.cli import main

    src, _names = model
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((src / "saved_model.pb").read_bytes())
    library = saved.meta_graphs[0].graph_def.library
    step = next(f for f in library.function for n in f.node_def if n.op == "While")
    body = next(n for n in step.node_def if n.op == "While").attr["body"].func.name
    call = step.node_def.add(name="also_calls_the_body", op="PartitionedCall")
    call.attr["f"].func.name = body
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    (bad / "saved_model.pb").write_bytes(saved.SerializeToString())
    (tmp_path / "spec.yaml").write_text("version: 1\nguard:\n  counters: true\n")
    assert main([str(bad), "--spec", str(tmp_path / "spec.yaml"), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert not (tmp_path / "out").exists()
