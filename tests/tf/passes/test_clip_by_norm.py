"""The TensorFlow post-update clip (:mod:`optrewrite.tf.passes.clip_by_norm`) on its own.

After a selected update ``u`` of variable ``v`` it must emit, under
``<update scope>/optrewrite_clip_<group>``, a read of ``v`` that waits for ``u``, TensorFlow's
clip_by_norm of it (Mul, Sum over the dims, Greater, OnesLike, Select, Sqrt, Select, Mul,
Maximum, RealDiv, Identity; no epsilon), ``sub = value - clipped`` and one final write:

* dense: ``ReadVariableOp`` (a ref variable: ``Identity``) ... ``AssignSubVariableOp(v, sub)``
  (``AssignSub``, with the group's ``use_locking``);
* sparse with 0 not in dims: only the touched rows, ``Unique(indices)``, ``ResourceGather(v, rows)``
  ... ``ResourceScatterSub(v, rows, sub)``.

Nothing it emits reads the gradient values: the clip acts on the variable's new value.
The write becomes what stands for "the update happened"; a second group waits for the first.
"""
from __future__ import annotations

from optrewrite.tf.graph import GraphEditor, node_of
from optrewrite.tf.passes import clip_by_norm
from tests.tf.passes.graphs import (
    ancestors, check_golden, gradient_descent_step, momentum_step, run_only, selected, sparse_adagrad_step, state_of,
)

CLIP = clip_by_norm.PASS
KERNEL_UPDATE = "Momentum/update_dense/kernel/ResourceApplyMomentum"


def last_write(g: GraphEditor) -> str:
    return g.added[-1]


def assert_chain_independent_of(g: GraphEditor, write: str, *tensors: str) -> None:
    """The write's inputs, back to the graph's own nodes, read none of ``tensors``."""
    new = set(g.added)
    for name in ancestors(g, write) & new:
        for inp in g.node(name).input:
            assert node_of(inp) not in {node_of(t) for t in tensors}, f"{name} reads {inp}"


def test_clip_of_a_dense_resource_variable() -> None:
    g, states = selected(momentum_step(), "version: 1\nclip:\n  - variables: [dense/kernel]\n"
                                          "    dims: [1]\n    max_norm: 1.0\n")

    result = run_only(CLIP, g, states)

    scope = "Momentum/update_dense/kernel/optrewrite_clip_0"
    check_golden(g, "clip_dense_resource", clip=scope)
    assert result.inserted == {KERNEL_UPDATE: ["clip[0]"]}
    write = g.node(last_write(g))
    assert (write.op, list(write.input)) == ("AssignSubVariableOp", ["dense/kernel", f"{scope}/sub"])
    read = g.node(f"{scope}/ReadVariableOp")
    assert list(read.input) == ["dense/kernel", f"^{KERNEL_UPDATE}"]
    assert g.node(f"{scope}/sub").input[:] == [f"{scope}/ReadVariableOp", f"{scope}/clip_by_norm"]
    assert_chain_independent_of(g, write.name, "gradients/dense/kernel")
    assert state_of(states, "dense/kernel").after == [write.name]
    assert not g.changed  # the update itself is untouched
    assert all(g.node(n).attr["_optrewrite"].s == b"clip[0]" for n in g.added)


def test_clip_of_a_ref_variable_over_all_dims_with_locking_and_colocation() -> None:
    g, states = selected(gradient_descent_step(), "version: 1\nclip:\n  - variables: [w]\n    max_norm: 2.0\n"
                                                  "    use_locking: true\n    colocate_with_variable: true\n")

    result = run_only(CLIP, g, states)

    scope = "GradientDescent/update_w/optrewrite_clip_0"
    check_golden(g, "clip_dense_ref", clip=scope)
    assert result.inserted == {"GradientDescent/update_w/ApplyGradientDescent": ["clip[0]"]}
    write = g.node(last_write(g))
    assert (write.op, list(write.input)) == ("AssignSub", ["w", f"{scope}/sub"])
    assert write.attr["use_locking"].b
    assert list(write.attr["_class"].list.s) == [b"loc:@w"]
    assert list(g.node(f"{scope}/read").input) == ["w", "^GradientDescent/update_w/ApplyGradientDescent"]
    assert_chain_independent_of(g, write.name, "gradients/w")


def test_clip_of_a_sparse_update_touches_only_its_rows() -> None:
    g, states = selected(sparse_adagrad_step(), "version: 1\nclip:\n  - variables: [emb]\n"
                                                "    dims: [1]\n    max_norm: 1.0\n")
    update = "Adagrad/update_emb/ResourceSparseApplyAdagrad"

    result = run_only(CLIP, g, states)

    scope = "Adagrad/update_emb/optrewrite_clip_0"
    check_golden(g, "clip_sparse_rows", clip=scope)
    assert result.inserted == {update: ["clip[0]"]}
    assert list(g.node(f"{scope}/Unique").input) == ["gradients/emb/indices:0"]
    gather = g.node(f"{scope}/ResourceGather")
    assert list(gather.input) == ["emb", f"{scope}/Unique:0", f"^{update}"]
    write = g.node(last_write(g))
    assert (write.op, list(write.input)) == ("ResourceScatterSub", ["emb", f"{scope}/Unique:0", f"{scope}/sub"])
    assert_chain_independent_of(g, write.name, "gradients/emb/values")
    assert "gradients/emb/indices" in ancestors(g, write.name)
    assert state_of(states, "emb").after == [write.name]


def test_a_sparse_clip_over_dim_0_clips_the_whole_variable() -> None:
    g, states = selected(sparse_adagrad_step(), "version: 1\nclip:\n  - variables: [emb]\n"
                                                "    dims: [0, 1]\n    max_norm: 1.0\n")

    run_only(CLIP, g, states)

    ops = [g.node(n).op for n in g.added]
    assert "Unique" not in ops and ops[-1] == "AssignSubVariableOp"


def test_clip_groups_chain_in_spec_order() -> None:
    g, states = selected(momentum_step(), "version: 1\nclip:\n  - variables: [dense/kernel]\n    max_norm: 1.0\n"
                                          "  - variables: [dense/*]\n    dims: [0]\n    max_norm: 3.0\n")

    result = run_only(CLIP, g, states)

    assert result.inserted == {KERNEL_UPDATE: ["clip[0]", "clip[1]"],
                               "Momentum/update_dense/bias/ResourceApplyMomentum": ["clip[1]"]}
    first = "Momentum/update_dense/kernel/optrewrite_clip_0"
    second = "Momentum/update_dense/kernel/optrewrite_clip_1"
    assert list(g.node(f"{second}/ReadVariableOp").input) == ["dense/kernel", f"^{first}/AssignSubVariableOp"]
    assert state_of(states, "dense/kernel").after == [f"{second}/AssignSubVariableOp"]
