"""A GraphDef of a TensorFlow 2 function (``concrete_fn.graph.as_graph_def()``) is refused with why.

Its variables are captured resource placeholders: a tf.compat.v1 optimizer's fused
``ResourceApplyAdam`` and a Keras 3 optimizer's plain assign ops write through them. Which
write comes from which gradient is found in the SavedModel's functions, so the user is sent
there: exit 2, one line naming a captured input, nothing written; explain lists every captured
input written, by its name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from optrewrite.cli import main

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")


def _v1_adam() -> Any:
    w = tf.Variable(tf.ones([3, 2]), name="w")
    opt = tf.compat.v1.train.AdamOptimizer(0.1)

    @tf.function(input_signature=[tf.TensorSpec([4, 3])])
    def train(x: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.matmul(x, w) ** 2)
        opt.apply_gradients(zip(tape.gradient(loss, [w]), [w]))
        return loss

    return train.get_concrete_function().graph.as_graph_def()


def _keras_adam() -> Any:
    inp = keras.Input((3,), batch_size=4)
    net = keras.Model(inp, keras.layers.Dense(2, name="dense")(inp))
    opt = keras.optimizers.Adam(0.1)
    opt.build(net.trainable_variables)

    @tf.function(input_signature=[tf.TensorSpec([4, 3])])
    def train(x: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(net(x) ** 2)
        opt.apply_gradients(zip(tape.gradient(loss, net.trainable_variables), net.trainable_variables))
        return loss

    return train.get_concrete_function().graph.as_graph_def()


@pytest.mark.parametrize("build", [_v1_adam, _keras_adam])
def test_function_graphdef_is_refused_naming_the_savedmodel(build: Any, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    graph_def = build()
    graph = tmp_path / "step.pb"
    graph.write_bytes(graph_def.SerializeToString())
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\nguard: {}\n")
    capsys.readouterr()
    assert main([str(graph), "--spec", str(spec), "-o", str(tmp_path / "out.pb")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "captured resource placeholder" in err, err
    assert "rewrite the TensorFlow 2 SavedModel instead" in err
    assert not (tmp_path / "out.pb").exists()
    assert main(["explain", str(graph), "--spec", str(spec)]) == 0
    out = capsys.readouterr().out
    placeholders = {n.name for n in graph_def.node if n.op == "Placeholder" and n.attr["dtype"].type == tf.resource}
    listed = {p for p in placeholders if f"({p}):" in out}
    assert listed and all("captured resource placeholder" in line for line in out.splitlines() if "/resource)" in line)
