"""Keras 3 functional models whose forward pass reads non-trainable variables.

A dropout layer reads its seed generator's state, batch normalization its moving statistics
(and writes them in training), a frozen layer its kernel: every gradient depends on those
reads, and none of them is optimizer state. The model is functional, so its object graph
reaches the variables through list indices (``net/operations/1/kernel``) while Keras saves
``variable.path`` (``conv/kernel``), the name users know.

The reference is the original SavedModel run step by step, with the guard's semantics applied
by hand: after each step, a head whose loss weight was 0 (its gradient is all zero, and so
are those of the shared layers when both weights are 0) gets its variables and its optimizer
slots back from before the step. Dropout masks, batch statistics and the iteration counter
advance in both runs. Besides Adam, two optimizers train the model whose update math computes
a tensor of the variable's shape from the variable alone (Lamb's ``var ** 2`` for a norm,
Ftrl's ``2 * l2_shrinkage * var``): no gradient either.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .keras_heads import module_for, rewrite, train_steps

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

BATCH = 4
SHARED = ("conv/", "bn/gamma", "bn/beta", "mid/")  # trained by both heads
WEIGHTS = [(1, 1), (1, 0), (0, 1), (1, 1), (0, 0), (1, 0), (0.5, 2), (0, 1)]
OPTIMIZERS = {
    "Adam": lambda: keras.optimizers.Adam(0.05),
    "Lamb": lambda: keras.optimizers.Lamb(0.05),
    "Ftrl": lambda: keras.optimizers.Ftrl(0.2, l2_shrinkage_regularization_strength=0.01),
}


def _build(export_dir: Path, optimizer: str) -> list[str]:
    """Save the model's ``train`` and ``state`` signatures; return the state's variable paths."""
    keras.utils.set_random_seed(5)
    inp = keras.Input((6, 3), batch_size=BATCH)
    h = keras.layers.Conv1D(4, 2, name="conv")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Dropout(0.3, name="drop", seed=3)(h)
    frozen = keras.layers.Dense(4, activation="tanh", name="frozen")
    frozen.trainable = False
    h = keras.layers.Flatten()(frozen(h))
    h = keras.layers.Dense(3, activation="tanh", name="mid")(h)
    net = keras.Model(inp, [keras.layers.Dense(1, name="head_a")(h), keras.layers.Dense(1, name="head_b")(h)],
                      name="net")
    # the dropout layer's seed generator is tracked through module.state_variables alone
    opt = OPTIMIZERS[optimizer]()
    module, names = module_for(net, opt)
    state = module.state_variables

    @tf.function(input_signature=[tf.TensorSpec([BATCH, 6, 3]), tf.TensorSpec([BATCH, 2]), tf.TensorSpec([2])])
    def train(x: Any, y: Any, w: Any) -> dict[str, Any]:
        with tf.GradientTape() as tape:
            a, b = net(x, training=True)
            loss = w[0] * tf.reduce_mean((a[:, 0] - y[:, 0]) ** 2) + w[1] * tf.reduce_mean((b[:, 0] - y[:, 1]) ** 2)
        grads = tape.gradient(loss, net.trainable_variables)
        opt.apply_gradients(zip(grads, net.trainable_variables))
        return {"loss": loss}

    @tf.function(input_signature=[])
    def read() -> list[Any]:
        return [v.value for v in state]

    module.train, module.read = train, read
    tf.saved_model.save(module, str(export_dir), signatures={"train": train.get_concrete_function(),
                                                              "state": read.get_concrete_function()})
    return names


@pytest.fixture(scope="module", params=sorted(OPTIMIZERS))
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    tf.config.experimental.enable_op_determinism()
    export_dir = tmp_path_factory.mktemp("keras_forward_state") / request.param
    return export_dir, _build(export_dir, request.param)


def _steps() -> list[tuple[dict[str, Any], tuple[float, float]]]:
    rng = np.random.default_rng(11)
    return [({"x": tf.constant(rng.normal(size=(BATCH, 6, 3)).astype(np.float32)),
              "y": tf.constant(rng.normal(size=(BATCH, 2)).astype(np.float32))}, w) for w in WEIGHTS]


def _run(export_dir: Path, names: list[str], *, guard_by_hand: bool = False) -> list[dict[str, np.ndarray]]:
    return train_steps(export_dir, names, _steps(), guard_by_hand=guard_by_hand, shared=SHARED)


def test_every_trainable_variable_is_found_by_its_keras_path(model: tuple[Path, list[str]], tmp_path: Path) -> None:
    from optrewrite.tf2 import io
    from optrewrite.tf2.rewrite import discover

    src, names = model
    found = discover(io.load(src, io.read(src)))
    assert not found.skips, found.skips
    trainable = {"conv/kernel", "conv/bias", "bn/gamma", "bn/beta", "mid/kernel", "mid/bias",
                 "head_a/kernel", "head_a/bias", "head_b/kernel", "head_b/bias"}
    assert {s.variable for s in found.sites} == trainable
    for site in found.sites:  # its own slots only: the frozen layer, statistics and seed are none
        slug = site.variable.replace("/", "_")
        assert site.slots and all(v.path.split("/", 1)[1].startswith(slug + "_") for v in site.slots), site
        if src.name == "Adam":  # "adam/", or "adam_1/" where another test's optimizer took the name
            opt = names[-1].split("/")[0]
            assert {v.path for v in site.slots} == {f"{opt}/{slug}_momentum", f"{opt}/{slug}_velocity"}
    # the spec selects by those names
    _out, report = rewrite(src, tmp_path, "version: 1\nguard: {variables: ['head_b/*']}\n")
    assert report["counts"]["guarded"] == 2 and report["counts"]["updates_found"] == len(trainable)


def test_guarded_step_trains_like_the_reference(model: tuple[Path, list[str]], tmp_path: Path) -> None:
    src, names = model
    out, _report = rewrite(src, tmp_path, "version: 1\nguard: {}\n")
    original, reference, rewritten = _run(src, names), _run(src, names, guard_by_hand=True), _run(out, names)
    # the reference is not the original: masked steps changed the masked variables there
    assert any(not np.array_equal(o["head_b/kernel"], r["head_b/kernel"]) for o, r in zip(original, reference))
    for t, (ref, got) in enumerate(zip(reference, rewritten)):
        for n in names:
            assert np.array_equal(ref[n], got[n]), (t, WEIGHTS[t], n)
    # the seed generator and the batch statistics advanced every step
    seed = next(n for n in names if n.endswith("/seed_generator_state"))
    for n in (seed, "bn/moving_mean"):
        assert all(not np.array_equal(a[n], b[n]) for a, b in zip(rewritten, rewritten[1:])), n


@pytest.mark.parametrize("vocab", [7, 8])
def test_embedding_gradient_is_rows_whatever_the_batch(vocab: int, tmp_path: Path) -> None:
    """Keras 3 Adam densifies an embedding's IndexedSlices gradient (``UnsortedSegmentSum``);
    the site's gradient is the slices' values and their indices. With 4 x 2 ids and 8 rows the
    values have the table's shape, and they are still rows, not a dense gradient."""
    from optrewrite.tf2 import io
    from optrewrite.tf2.rewrite import discover

    inp = keras.Input((2,), batch_size=4, dtype="int32")
    emb = keras.layers.Embedding(vocab, 3, name="emb")(inp)
    net = keras.Model(inp, keras.layers.Dense(1, name="head")(keras.layers.Flatten()(emb)), name="net")
    opt = keras.optimizers.Adam(0.05)
    opt.build(net.trainable_variables)
    module = tf.Module()
    module.net, module.opt = net, opt

    @tf.function(input_signature=[tf.TensorSpec([4, 2], tf.int32), tf.TensorSpec([4, 1])])
    def train(ids: Any, y: Any) -> dict[str, Any]:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((net(ids) - y) ** 2)
        opt.apply_gradients(zip(tape.gradient(loss, net.trainable_variables), net.trainable_variables))
        return {"loss": loss}

    module.train = train
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"train": train.get_concrete_function()})
    found = discover(io.load(tmp_path / "sm", io.read(tmp_path / "sm")))
    emb_sites = [s for s in found.sites if s.variable == "emb/embeddings"]
    assert emb_sites and all(s.sparse and s.indices for s in emb_sites), emb_sites


def test_write_index_agrees_with_descendants(model: tuple[Path, list[str]]) -> None:
    """The gradient search skips tensors another variable's write depends on, by an index
    built in one pass (``Body.index_writes``) once walks of descendants grow costly; it must
    say what walking every tensor's descendants says."""
    from optrewrite.tf2 import io, sites

    src, _names = model
    if src.name != "Adam":
        pytest.skip("one optimizer is enough")
    loaded = io.load(src, io.read(src))
    bound = sites.bindings(loaded.meta)
    fn = next(f for f in loaded.meta.graph_def.library.function
              if f.signature.name.startswith("__inference_train") and any(bound.get(f.signature.name, {}).values()))
    local = bound[fn.signature.name]
    body = sites.Body.of(fn)
    writes = {}
    for name in body.order:
        node = body.nodes[name]
        if node.op in sites.WRITES:
            var = sites._resource(body, node.input[0], local)
            if var is not None and var.trainable:
                writes[name] = var.node_id
    assert len(set(writes.values())) > 5
    body.index_writes(writes)
    refs = [r for refs in body.out_refs.values() for r in refs]
    expected = {(ref, var): any(w in body.tensor_descendants(ref) for w, v in writes.items() if v != var)
                for ref in refs for var in set(writes.values())}
    # the walks above visited the body many times over: the index is made at the first question
    assert [key for key, other in expected.items() if body.writes_other_than(*key) != other] == []
    assert body._write_reach is not None and len(expected) > 1000 and any(expected.values())
