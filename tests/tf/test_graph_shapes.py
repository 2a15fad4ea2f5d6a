"""Graph shapes the finder must handle, and the MetaGraphDef round trip through TensorFlow."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from optrewrite.api import rewrite_file
from optrewrite.tf import io
from optrewrite.tf.graph import GraphEditor
from optrewrite.tf.sites import find_update_sites

ROOT = Path(__file__).resolve().parents[2]


def test_op_table_matches_the_installed_tensorflow_registry() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_tf_op_table.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _sites(graph_def):  # type: ignore[no-untyped-def]
    from optrewrite.tf import proto

    g = GraphEditor(proto.GraphDef.FromString(graph_def.SerializeToString()))
    found = find_update_sites(g)
    return found.sites, found.skips


def test_partitioned_variables_two_optimizers_nested_scopes_and_import_prefix() -> None:
    import tensorflow as tf

    tf1 = tf.compat.v1
    inner = tf.Graph()
    with inner.as_default():
        ids = tf1.placeholder(tf.int32, [None], name="ids")
        with tf1.variable_scope("tower/embed"):
            emb = tf1.get_variable("emb", shape=[10, 4], partitioner=tf1.fixed_size_partitioner(2),
                                   initializer=tf1.ones_initializer())
        w = tf1.get_variable("head/w", initializer=np.ones((4, 1), np.float32), use_resource=True)
        loss = tf.reduce_sum(tf.matmul(tf.nn.embedding_lookup(emb, ids), w))
        with tf1.name_scope("outer/train"):
            a = tf1.train.AdamOptimizer(0.1).minimize(loss, var_list=list(emb))
            b = tf1.train.MomentumOptimizer(0.1, 0.9).minimize(loss, var_list=[w])
        tf.group(a, b, name="step")
    outer = tf.Graph()
    with outer.as_default():
        tf1.import_graph_def(inner.as_graph_def(), name="imported")
    sites, skips = _sites(outer.as_graph_def())
    assert skips == []
    found = {s.variable: (s.kind, s.sparse, s.slots) for s in sites}
    assert found == {
        "imported/tower/embed/emb/part_0": ("Adam (decomposed)", True,
                                            ("imported/tower/embed/emb/part_0/Adam", "imported/tower/embed/emb/part_0/Adam_1")),
        "imported/tower/embed/emb/part_1": ("Adam (decomposed)", True,
                                            ("imported/tower/embed/emb/part_1/Adam", "imported/tower/embed/emb/part_1/Adam_1")),
        "imported/head/w": ("ResourceApplyMomentum", False, ("imported/head/w/Momentum",)),
    }


def test_rewritten_metagraph_reimports_and_its_train_op_trains(tmp_path: Path, tf_config) -> None:  # type: ignore[no-untyped-def]
    import tensorflow as tf

    tf1 = tf.compat.v1
    case = ROOT / "fixtures" / "gd_ref_sparse_meta"
    out = tmp_path / "out.meta"
    rewrite_file(case / "input.meta", case / "spec.yaml", output=out)
    graph = tf.Graph()
    with graph.as_default():
        tf1.train.import_meta_graph(str(out))
        train = tf1.get_collection("train_op")[0]
        emb = graph.get_tensor_by_name("emb:0")
        feed = {"x:0": np.ones((2, 3), np.float32), "mask:0": 1.0}
        with tf1.Session(graph=graph, config=tf_config) as sess:
            sess.run(tf1.global_variables_initializer())
            start = sess.run(emb)
            sess.run(train, {**feed, "ids:0": np.array([], np.int32).reshape(0)})
            # no rows: an all-zero gradient, so the update is skipped; the clip still holds the
            # variable to its norm (dims [0, 1]: the whole variable), as it does every step
            np.testing.assert_allclose(sess.run(emb), start * 2.0 / np.linalg.norm(start), rtol=1e-6)
            sess.run(train, {**feed, "ids:0": [0, 0, 3]})
            after = sess.run(emb)
            assert not np.array_equal(after, start)
            # dims [0, 1]: the whole variable is clipped to norm 2 after the update
            assert np.linalg.norm(after) <= 2.0 * (1 + 1e-6)
            assert sess.run(tf1.train.get_global_step()) == 2


@pytest.mark.parametrize("container", ["graphdef", "meta"])
def test_fixture_inputs_load_as_their_container(container: str, tmp_path: Path) -> None:
    case = ROOT / "fixtures" / ("gd_ref_sparse_meta" if container == "meta" else "adam_resource_sparse")
    src = next(case.glob("input.*"))
    loaded = io.load(src, src.read_bytes())
    assert loaded.container == (io.METAGRAPH if container == "meta" else io.GRAPHDEF)
    assert len(loaded.graph.node) > 10


def test_updates_inside_library_functions_are_reported_as_skipped() -> None:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        v = tf.compat.v1.get_variable("v", initializer=[1.0, 2.0], use_resource=True)

        @tf.function
        def step(handle: tf.Tensor, g: tf.Tensor) -> None:
            tf.raw_ops.ResourceApplyGradientDescent(var=handle, alpha=tf.constant(0.1), delta=g)

        step(v.handle, tf.constant([0.5, 0.5]))
    graph_def = graph.as_graph_def()
    assert graph_def.library.function
    sites, skips = _sites(graph_def)
    assert sites == []
    assert [s.reason for s in skips] == ["inside a library function; updates in functions are not rewritten"]
