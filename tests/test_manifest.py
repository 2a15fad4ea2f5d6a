"""``optrewrite --manifest FILE``: many rewrites, each with its own spec and output, one
combined report, the worst exit code; a bad manifest is a one-line error and writes nothing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from optrewrite.cli import main
from optrewrite.schema import report_schema
from tests.fed_step import onnx_step, tf1_graph


@pytest.fixture
def work(tmp_path: Path) -> Path:
    tf1_graph(tmp_path)
    onnx_step(tmp_path)
    (tmp_path / "guard.yaml").write_text("version: 1\nguard:\n")
    (tmp_path / "clip.yaml").write_text("version: 1\nclip:\n  - {variables: [w], max_norm: 1, dims: [1]}\n")
    (tmp_path / "out").mkdir()
    return tmp_path


def _manifest(work: Path, text: str) -> Path:
    path = work / "jobs.yaml"
    path.write_text("version: 1\njobs:\n" + text)
    return path


JOBS = """\
  - input: tf1_resource.pb
    spec: clip.yaml
    output: out/tf1.pb
  - input: sgd.onnx
    lower: true
  - input: missing.onnx
"""


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_jobs_run_with_their_specs_and_one_report(work: Path, jobs: str, capsys: pytest.CaptureFixture[str]) -> None:
    import jsonschema

    manifest = _manifest(work, JOBS)
    report = work / "all.json"
    assert main(["--manifest", str(manifest), "--spec", str(work / "guard.yaml"), "-j", jobs,
                 "--report", str(report)]) == 2  # the missing input's exit code
    err = capsys.readouterr().err
    assert err.index("tf1_resource.pb") < err.index("sgd.onnx") < err.index("missing.onnx")  # in the jobs' order
    combined = json.loads(report.read_text())
    assert combined["schema"] == "optrewrite.reports/1" and combined["exit_code"] == 2
    tf, ox, missing = combined["runs"]
    for run in (tf, ox):
        jsonschema.validate(run, report_schema())
    assert tf["output"] == str(work / "out/tf1.pb") and [s["inserted"] for s in tf["sites"]].count(["clip[0]"]) == 1
    assert ox["output"] == str(work / "sgd.rewritten.onnx") and {tuple(s["inserted"]) for s in ox["sites"]} == {
        ("guard", "lower")}
    assert missing["input"] == str(work / "missing.onnx") and missing["exit_code"] == 2
    assert "cannot read" in missing["error"]
    assert (work / "out/tf1.pb").exists() and (work / "sgd.rewritten.onnx").exists()


def test_parallel_and_sequential_runs_write_the_same_bytes(work: Path) -> None:
    manifest = _manifest(work, JOBS.replace("  - input: missing.onnx\n", ""))
    outputs = [work / "out/tf1.pb", work / "sgd.rewritten.onnx"]
    assert main(["--manifest", str(manifest), "--spec", str(work / "guard.yaml"), "-q"]) == 0
    first = [p.read_bytes() for p in outputs]
    for p in outputs:
        p.unlink()
    assert main(["--manifest", str(manifest), "--spec", str(work / "guard.yaml"), "-q", "-j", "2"]) == 0
    assert [p.read_bytes() for p in outputs] == first


def test_check_names_the_stale_graph_with_its_own_spec(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _manifest(work, "  - {input: sgd.onnx, spec: guard.yaml}\n  - {input: tf1_resource.pb, spec: clip.yaml}\n")
    assert main(["--manifest", str(manifest), "--check", "-q"]) == 1
    err = capsys.readouterr().err
    assert f"{work / 'tf1_resource.pb'}: rewriting with {work / 'clip.yaml'} would change it" in err


@pytest.mark.parametrize(("text", "message"), [
    ("  - input: sgd.onnx\n", "jobs.yaml:3: jobs[0]: missing key 'spec', and no --spec given"),
    ("  - {input: sgd.onnx, spec: guard.yaml, output: out/x.onnx}\n"
     "  - {input: tf1_resource.pb, spec: guard.yaml, output: out/x.onnx}\n",
     "out/x.onnx: the output of "),
    ("  - {input: sgd.onnx, spec: guard.yaml, output: tf1_resource.pb}\n"
     "  - {input: tf1_resource.pb, spec: guard.yaml}\n",
     "tf1_resource.pb: the output of "),
    ("  - {input: sgd.onnx, spec: guard.yaml, output: guard.yaml}\n", "guard.yaml: the output of "),
    ("  - {input: sgd.onnx, spec: guard.yaml, output: jobs.yaml}\n", "would overwrite the manifest"),
    ("  - {input: sgd.onnx, spec: guard.yaml, lower: 'yes'}\n", "jobs.yaml:3: jobs[0].lower: must be true or false"),
    ("  - {input: sgd.onnx, specs: guard.yaml}\n", "jobs.yaml:3: jobs[0].specs: unknown key"),
    ("", "jobs.yaml:2: jobs: must be a list"),
])
def test_a_bad_manifest_is_one_line_and_writes_nothing(work: Path, text: str, message: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _manifest(work, text)
    before = sorted(p.name for p in work.iterdir())
    assert main(["--manifest", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in work.iterdir()) == before


def test_manifest_and_inputs_do_not_mix(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _manifest(work, "  - {input: sgd.onnx, spec: guard.yaml}\n")
    assert main(["--manifest", str(manifest), str(work / "sgd.onnx")]) == 2
    assert "usage: --manifest lists the inputs and outputs" in capsys.readouterr().err
    assert main(["--manifest", str(manifest), "--report", str(work / "sgd.onnx")]) == 2
    assert "the report would overwrite the input" in capsys.readouterr().err


def test_several_inputs_share_one_report(work: Path) -> None:
    report = work / "all.json"
    assert main(["--spec", str(work / "guard.yaml"), str(work / "sgd.onnx"), str(work / "tf1_resource.pb"),
                 "--dry-run", "-q", "--report", str(report)]) == 0
    runs = json.loads(report.read_text())["runs"]
    assert [r["mode"] for r in runs] == ["dry-run", "dry-run"] and [r["input"] for r in runs] == [
        str(work / "sgd.onnx"), str(work / "tf1_resource.pb")]


def test_the_readme_manifest_loads(tmp_path: Path) -> None:
    import re

    from optrewrite.manifest import load_manifest

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"^```yaml\n(.*?)^```", readme, re.S | re.M) if "jobs:" in b]
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(block)
    jobs = load_manifest(manifest, spec=tmp_path / "default.yaml")
    assert [(j.input.name, j.spec.name, j.output, j.lower) for j in jobs] == [
        ("tower.pb", "wrap.yaml", tmp_path / "out/tower.pb", False), ("step.onnx", "default.yaml", None, True)]
