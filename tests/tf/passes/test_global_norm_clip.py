"""The TensorFlow global-norm gradient clip (:mod:`optrewrite.tf.passes.global_norm_clip`) on its own.

Once over every selected gradient g_i it must emit, under ``optrewrite/global_norm_clip``::

    global_norm/L2Loss_i = L2Loss(g_i);  global_norm/stack = Pack(L2Loss_0, ..)
    global_norm/Sum = Sum(stack, [0]);  global_norm/mul = Mul(Sum, 2);  global_norm/global_norm = Sqrt(mul)
    truediv = RealDiv(1, norm);  truediv_1 = RealDiv(1, c);  Minimum;  mul = Mul(c, Minimum)
    sub = Sub(norm, norm);  scale = AddV2(mul, sub)

then, per site under ``<update scope>/optrewrite_global_norm_clip``, ``mul = Mul(g_i, scale)`` and
``clipped = Identity(mul)``, which the update reads instead of g_i (for a sparse update, its
values; the indices stay).
"""
from __future__ import annotations

from optrewrite.tf.passes import global_norm_clip
from tests.tf.passes.graphs import check_golden, momentum_step, run_only, selected, sparse_adagrad_step, state_of

GNC = global_norm_clip.PASS
KERNEL_UPDATE = "Momentum/update_dense/kernel/ResourceApplyMomentum"
BIAS_UPDATE = "Momentum/update_dense/bias/ResourceApplyMomentum"


def test_one_norm_over_both_gradients_scales_each() -> None:
    g, states = selected(momentum_step(), "version: 1\nglobal_norm_clip:\n  clip_norm: 5.0\n")

    result = run_only(GNC, g, states)

    kernel = "Momentum/update_dense/kernel/optrewrite_global_norm_clip"
    bias = "Momentum/update_dense/bias/optrewrite_global_norm_clip"
    check_golden(g, "global_norm_clip_momentum", norm="optrewrite/global_norm_clip", kernel=kernel, bias=bias)
    assert result.inserted == {KERNEL_UPDATE: ["global_norm_clip"], BIAS_UPDATE: ["global_norm_clip"]}
    assert g.node(KERNEL_UPDATE).input[3] == f"{kernel}/clipped"
    assert g.node(BIAS_UPDATE).input[3] == f"{bias}/clipped"
    assert list(g.node(f"{kernel}/mul").input) == ["gradients/dense/kernel:0", "optrewrite/global_norm_clip/scale"]
    assert list(g.node("optrewrite/global_norm_clip/global_norm/stack").input) == [
        "optrewrite/global_norm_clip/global_norm/L2Loss_0", "optrewrite/global_norm_clip/global_norm/L2Loss_1"]
    assert state_of(states, "dense/kernel").gradient == f"{kernel}/clipped:0"
    assert state_of(states, "dense/bias").gradient == f"{bias}/clipped:0"
    assert sorted(g.graph.node[i].name for i in g.changed) == sorted([KERNEL_UPDATE, BIAS_UPDATE])
    assert all(g.node(n).attr["_optrewrite"].s == b"global_norm_clip" for n in g.added)


def test_an_unselected_gradient_is_left_out_of_the_norm() -> None:
    g, states = selected(momentum_step(), "version: 1\nglobal_norm_clip:\n  clip_norm: 5.0\n"
                                          "  exclude: [dense/bias]\n")

    result = run_only(GNC, g, states)

    assert result.inserted == {KERNEL_UPDATE: ["global_norm_clip"]}
    assert g.node(BIAS_UPDATE).input[3] == "gradients/dense/bias"
    assert list(g.node("optrewrite/global_norm_clip/global_norm/stack").input) == [
        "optrewrite/global_norm_clip/global_norm/L2Loss_0"]


def test_a_sparse_update_reads_its_clipped_values_and_keeps_its_indices() -> None:
    g, states = selected(sparse_adagrad_step(), "version: 1\nglobal_norm_clip:\n  clip_norm: 1.0\n")
    update = "Adagrad/update_emb/ResourceSparseApplyAdagrad"

    result = run_only(GNC, g, states)

    assert result.inserted == {update: ["global_norm_clip"]}
    inputs = list(g.node(update).input)
    assert inputs[3:] == ["Adagrad/update_emb/optrewrite_global_norm_clip/clipped", "gradients/emb/indices"]
    assert list(g.node("optrewrite/global_norm_clip/global_norm/L2Loss_0").input) == ["gradients/emb/values:0"]
