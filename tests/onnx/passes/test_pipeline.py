"""The ONNX passes through :func:`optrewrite.passes.run_pipeline`, all of them on one small step.

The pipeline must run them in :data:`optrewrite.passes.PASSES` order (the global-norm clip once,
then site by site the guard, the clip groups and the lowering), so each site's labels follow
that order, and the finished model must still produce each original output exactly once.
"""
from __future__ import annotations

from optrewrite import passes
from optrewrite.onnx.graph import PREVIEW_DOMAIN
from optrewrite.onnx.passes import REGISTRY
from tests.onnx.passes.models import MOMENTUM, check_model, produced_once, selected, training_step

SPEC = """\
version: 1
lower: true
global_norm_clip:
  clip_norm: 2.5
guard: {}
clip:
  - variables: [W]
    dims: [1]
    max_norm: 1.0
"""
ORDER = [p.name for p in passes.PASSES]


def test_every_registered_pass_runs_in_pipeline_order() -> None:
    assert list(REGISTRY) == ORDER
    rw = selected(training_step("Momentum", MOMENTUM), SPEC)

    result = passes.run_pipeline(REGISTRY, rw.editor, rw.touched)
    model = rw.finish()

    assert result.inserted == {
        "Momentum 'optimizer'[0]": ["global_norm_clip", "guard", "clip[0]", "lower"],
        "Momentum 'optimizer'[1]": ["global_norm_clip", "guard", "lower"],
    }
    for labels in result.inserted.values():
        ranks = [ORDER.index(passes.pass_of(label)) for label in labels]
        assert ranks == sorted(ranks)
    assert not result.skipped
    outputs = ["W_new", "B_new", "V_W_new", "V_B_new"]
    assert produced_once(model, outputs) == dict.fromkeys(outputs, 1)
    assert not [n for n in model.graph.node if n.domain == PREVIEW_DOMAIN]
    guards = [n for n in model.graph.node if n.op_type == "If" and n.name.endswith("/guard/If")]
    assert [list(n.output) for n in guards] == [["W_new/optrewrite_unclipped", "V_W_new"], ["B_new", "V_B_new"]]
    reduce = next(n for n in model.graph.node if n.name == "optrewrite/W/guard/ReduceL1")
    assert list(reduce.input) == [rw.state("W").gradient]  # the guard tests the clipped gradient
    assert rw.state("W").gradient.startswith("optrewrite/global_norm_clip/")
    check_model(model)
