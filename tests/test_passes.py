"""The pipeline as the spec and the report know it (optrewrite/passes.py), on both formats.

One plan rule for every format: the digest covers each site's resolved actions with their
parameters, so a spec that asks the same of the same sites — however its patterns are
spelled — finds a rewritten graph "already rewritten", and one that asks something else is
refused. Models rewritten before per-site plans (a digest of the selector text) are still
recognised.
"""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from optrewrite import passes
from optrewrite.api import rewrite_file
from optrewrite.cli import main
from optrewrite.errors import SpecError
from optrewrite.report import Report
from optrewrite.spec import parse_spec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

# (fixture, input name, the fixture's spec re-spelled, a spec asking something else)
CASES = [
    ("momentum_ref_dense", "input.pb",
     'version: 1\nguard:\n  variables: ["re:dense/.*"]\nclip:\n  - variables: ["*/kernel"]\n    dims: [1]\n    max_norm: 1.0\n',
     'version: 1\nguard:\n  variables: ["*"]\nclip:\n  - variables: ["dense/kernel"]\n    dims: [1]\n    max_norm: 2.0\n'),
    ("momentum_preview_guarded", "input.onnx",
     'version: 1\nguard:\n  variables: ["head/a", "re:head/b"]\n',
     'version: 1\nguard:\n  variables: ["*"]\n'),
]


@pytest.mark.parametrize(("case", "name", "respelled", "other"), CASES, ids=[c[0] for c in CASES])
def test_a_respelled_spec_finds_the_rewritten_graph_done_and_another_is_refused(
        tmp_path: Path, case: str, name: str, respelled: str, other: str, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / name
    src.write_bytes((FIXTURES / case / name).read_bytes())
    out = tmp_path / f"out{src.suffix}"
    assert rewrite_file(src, FIXTURES / case / "spec.yaml", output=out).changed
    (tmp_path / "same.yaml").write_text(respelled)
    (tmp_path / "other.yaml").write_text(other)
    again = rewrite_file(out, tmp_path / "same.yaml", mode="check")
    assert not again.changed and again.note == "already rewritten with this spec: nothing to do"
    assert main([str(out), "--spec", str(tmp_path / "other.yaml"), "--check"]) == 2
    assert "already rewritten by optrewrite with a different spec" in capsys.readouterr().err


def test_an_onnx_model_rewritten_with_a_selector_digest_is_still_recognised(tmp_path: Path) -> None:
    """Before per-site plans, ONNX models recorded a digest of the spec's selector texts."""
    from optrewrite.onnx.rewrite import PLAN_KEY, SITES_KEY, _selector_digest

    spec_path = FIXTURES / "momentum_preview_guarded" / "spec.yaml"
    model = onnx.load(str(FIXTURES / "momentum_preview_guarded" / "expected.onnx"))
    props = [p for p in model.metadata_props if p.key not in (PLAN_KEY, SITES_KEY)]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    model.metadata_props.add(key=PLAN_KEY, value=_selector_digest(parse_spec(spec_path.read_text()), False))
    old = tmp_path / "old.onnx"
    old.write_bytes(model.SerializeToString())
    assert not rewrite_file(old, spec_path, mode="check").changed
    (tmp_path / "respelled.yaml").write_text(CASES[1][2])
    with pytest.raises(Exception, match="different spec"):  # the old record cannot tell a re-spelling
        rewrite_file(old, tmp_path / "respelled.yaml", mode="check")


def test_the_plan_digest_covers_every_parameter() -> None:
    class Site:
        key, variable = "u", "w"

    base = "version: 1\nguard: {}\nclip:\n  - variables: ['w']\n    max_norm: 1.0\n"
    variants = [base, base.replace("1.0", "2.0"), base + "    dims: [0]\n", base + "    use_locking: true\n",
                base + "global_norm_clip:\n  clip_norm: 3.0\n", "version: 1\nguard: {}\n"]
    digests = set()
    for text in variants:
        spec = parse_spec(text)
        digests.add(passes.plan_digest([passes.select(Site(), "w", passes.rules(spec))], spec))
    assert len(digests) == len(variants)


def test_actions_run_and_are_reported_in_pipeline_order() -> None:
    spec = parse_spec("version: 1\nlower: true\nclip:\n  - variables: ['*']\n    max_norm: 1.0\nguard: {}\n"
                      "global_norm_clip:\n  clip_norm: 1.0\n")
    assert [r.label for r in passes.rules(spec)] == ["global_norm_clip", "guard", "clip[0]", "lower"]
    assert [k.name for k in passes.PASSES] == ["global_norm_clip", "guard", "clip", "lower"]


def test_report_counts_and_action_names_come_from_the_pass_kinds() -> None:
    import re

    from optrewrite.schema import report_schema

    keys = set(Report(input="g", format="f").counts())
    assert keys == {"updates_found", "skipped", *(k.count for k in passes.PASSES if k.count)}
    schema = report_schema()
    assert set(schema["properties"]["counts"]["required"]) == keys
    pattern = re.compile(schema["$defs"]["site"]["properties"]["inserted"]["items"]["pattern"])
    spec = parse_spec("version: 1\nlower: true\nguard: {}\nclip:\n  - max_norm: 1.0\n    variables: ['*']\n"
                      "  - max_norm: 2.0\n    variables: ['*']\nglobal_norm_clip:\n  clip_norm: 1.0\n")
    labels = [r.label for r in passes.rules(spec)]
    assert labels == ["global_norm_clip", "guard", "clip[0]", "clip[1]", "lower"]
    assert all(pattern.match(label) for label in labels)
    assert not any(pattern.match(bad) for bad in ("clip", "guard[0]", "nothing"))


def test_each_format_registers_the_passes_it_implements() -> None:
    from optrewrite.onnx.passes import REGISTRY as ONNX_PASSES
    from optrewrite.tf.passes import REGISTRY as TF_PASSES

    assert list(TF_PASSES) == ["global_norm_clip", "guard", "clip"]
    assert list(ONNX_PASSES) == ["global_norm_clip", "guard", "clip", "lower"]
    assert all(p.name == name for registry in (TF_PASSES, ONNX_PASSES) for name, p in registry.items())


def test_mixed_gradient_types_under_one_global_norm_clip_blame_the_spec_on_tensorflow(tmp_path: Path) -> None:

    from optrewrite.tf import proto

    graph = proto.GraphDef.FromString((FIXTURES / "momentum_ref_dense" / "input.pb").read_bytes())
    for node in graph.node:
        if node.name.startswith("dense/bias") or node.name == "train/update_dense/bias/ApplyMomentum":
            for key in ("dtype", "T"):
                if key in node.attr and node.attr[key].type == proto.DT_FLOAT:
                    node.attr[key].type = proto.DT_DOUBLE
    src = tmp_path / "g.pb"
    src.write_bytes(graph.SerializeToString())
    spec = tmp_path / "s.yaml"
    spec.write_text("version: 1\nglobal_norm_clip:\n  clip_norm: 1.0\n")
    with pytest.raises(SpecError, match=r"s\.yaml: global_norm_clip: the selected gradients have different"):
        rewrite_file(src, spec, mode="dry-run")


def test_mixed_tensor_types_under_one_global_norm_clip_blame_the_spec_on_onnx(tmp_path: Path) -> None:
    import numpy as np

    from tests.onnx.preview import Step

    f, d = np.float32, np.float64
    step = Step("mixed", "Momentum", {"alpha": 0.9, "beta": 1.0, "mode": "standard", "norm_coefficient": 0.0},
                np.array(0.1, f), np.array(1, np.int64), (np.ones(2, f), np.ones(2, d)), (np.ones(2, f), np.ones(2, d)),
                ((np.zeros(2, f), np.zeros(2, d)),))
    src = step.save(tmp_path)
    spec = tmp_path / "s.yaml"
    spec.write_text("version: 1\nglobal_norm_clip:\n  clip_norm: 1.0\n")
    with pytest.raises(SpecError, match=r"s\.yaml: global_norm_clip: the selected gradients have different"):
        rewrite_file(src, spec, mode="dry-run")
