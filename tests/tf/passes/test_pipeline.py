"""The TensorFlow passes through :func:`optrewrite.passes.run_pipeline`, all of them on one small step.

The pipeline must run them in :data:`optrewrite.passes.PASSES` order (the global-norm clip once,
then site by site the guard and the clip groups), so each site's labels follow that order, the
guard tests the clipped gradient and the clip reads the variable once the guard's Merge ran.
"""
from __future__ import annotations

from optrewrite import passes
from optrewrite.tf.graph import GraphEditor
from optrewrite.tf.passes import REGISTRY
from tests.tf.passes.graphs import momentum_step, selected

SPEC = """\
version: 1
global_norm_clip:
  clip_norm: 5.0
guard: {}
clip:
  - variables: [dense/kernel]
    dims: [1]
    max_norm: 1.0
"""
ORDER = [p.name for p in passes.PASSES]


def test_every_registered_pass_runs_in_pipeline_order() -> None:
    assert [name for name in ORDER if name in REGISTRY] == list(REGISTRY)
    g, states = selected(momentum_step(), SPEC)

    result = passes.run_pipeline(REGISTRY, g, states, lint=GraphEditor.lint)

    assert result.inserted == {
        "Momentum/update_dense/kernel/ResourceApplyMomentum": ["global_norm_clip", "guard", "clip[0]"],
        "Momentum/update_dense/bias/ResourceApplyMomentum": ["global_norm_clip", "guard"],
    }
    for labels in result.inserted.values():
        ranks = [ORDER.index(passes.pass_of(label)) for label in labels]
        assert ranks == sorted(ranks)
    tags = [g.node(n).attr["_optrewrite"].s.decode() for n in g.added]
    runs = [t for k, t in enumerate(tags) if k == 0 or tags[k - 1] != t]
    assert runs == ["global_norm_clip", "guard", "clip[0]", "guard"]  # the kernel's guard and clip, then the bias's

    kernel = "Momentum/update_dense/kernel"
    assert g.node(f"{kernel}/optrewrite_guard/flat").input[0] == f"{kernel}/optrewrite_global_norm_clip/clipped:0"
    read = g.node(f"{kernel}/optrewrite_clip_0/ReadVariableOp")
    assert list(read.input) == ["dense/kernel", f"^{kernel}/optrewrite_guard/merge"]
    assert not result.skipped
