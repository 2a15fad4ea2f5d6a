"""The TensorFlow zero-gradient guard (:mod:`optrewrite.tf.passes.guard_zero_grad`) on its own.

For each selected update it must emit, under ``<update scope>/optrewrite_guard``::

    flat/shape = Const([-1]);  flat = Reshape(g, flat/shape);  as_bool = Cast(flat -> bool)
    nonzero/axis = Const([0]);  nonzero = Any(as_bool, nonzero/axis)
    switch = Switch(nonzero, nonzero);  pivot_t = Identity(switch:1);  pivot_f = Identity(switch:0)
    applied = Identity(pivot_t, ^update);  merge = Merge(pivot_f, applied)

give every state write of the update a control input ``^pivot_t``, and leave the Merge as
what stands for "the update happened". Unselected updates stay as they were.
"""
from __future__ import annotations

from optrewrite.tf.passes import guard_zero_grad
from tests.tf.passes.graphs import check_golden, momentum_step, run_only, selected, sparse_adagrad_step, state_of

GUARD = guard_zero_grad.PASS
KERNEL_UPDATE = "Momentum/update_dense/kernel/ResourceApplyMomentum"
BIAS_UPDATE = "Momentum/update_dense/bias/ResourceApplyMomentum"


def test_guard_on_a_dense_resource_update() -> None:
    g, states = selected(momentum_step(), "version: 1\nguard:\n  variables: [dense/kernel]\n")
    bias_before = str(g.node(BIAS_UPDATE))

    result = run_only(GUARD, g, states)

    scope = "Momentum/update_dense/kernel/optrewrite_guard"
    check_golden(g, "guard_momentum", guard=scope)
    assert result.inserted == {KERNEL_UPDATE: ["guard"]}
    assert list(g.node(KERNEL_UPDATE).input)[-1] == f"^{scope}/pivot_t"
    merges = [n for n in g.added if g.node(n).op == "Merge"]
    assert merges == [f"{scope}/merge"]
    assert list(g.node(f"{scope}/merge").input) == [f"{scope}/pivot_f", f"{scope}/applied"]
    assert f"^{KERNEL_UPDATE}" in g.node(f"{scope}/applied").input
    assert g.node(f"{scope}/flat").input[0] == "gradients/dense/kernel:0"
    assert state_of(states, "dense/kernel").after == [f"{scope}/merge"]
    assert str(g.node(BIAS_UPDATE)) == bias_before
    assert state_of(states, "dense/bias").after == [BIAS_UPDATE]
    assert all(g.node(n).attr["_optrewrite"].s == b"guard" for n in g.added)
    assert {g.node(n).device for n in g.added} == {"/device:CPU:0"}
    g.lint()


def test_guard_on_a_sparse_update_tests_the_gradient_values() -> None:
    g, states = selected(sparse_adagrad_step(), "version: 1\nguard: {}\n")
    update = "Adagrad/update_emb/ResourceSparseApplyAdagrad"

    result = run_only(GUARD, g, states)

    scope = "Adagrad/update_emb/optrewrite_guard"
    check_golden(g, "guard_sparse_adagrad", guard=scope)
    assert result.inserted == {update: ["guard"]}
    for write in state_of(states, "emb").site.writes:
        assert f"^{scope}/pivot_t" in g.node(write).input
    assert g.node(f"{scope}/flat").input[0] == "gradients/emb/values:0"
    assert [n for n in g.added if g.node(n).op == "Merge"] == [f"{scope}/merge"]
    g.lint()
