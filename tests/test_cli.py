"""The command line: exit codes, messages, nothing lost, nothing half-written.

These run the real CLI in a subprocess where the point is what a user sees (one line on
stderr, no traceback), and in-process otherwise.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from optrewrite import fileio
from optrewrite.cli import main
from optrewrite.errors import InputError, plural
from optrewrite.tf import io, proto

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DENSE = FIXTURES / "momentum_ref_dense"
SPARSE = FIXTURES / "adam_resource_sparse"
META = FIXTURES / "gd_ref_sparse_meta"


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "optrewrite", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=120,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A copy of the dense fixture's input and spec, so tests can see the input stay intact."""
    (tmp_path / "graph.pb").write_bytes((DENSE / "input.pb").read_bytes())
    (tmp_path / "wrap.yaml").write_text((DENSE / "spec.yaml").read_text())
    return tmp_path


def test_default_output_is_beside_the_input_and_input_is_untouched(work: Path) -> None:
    before = digest(work / "graph.pb")
    proc = run_cli(work / "graph.pb", "--spec", work / "wrap.yaml")
    assert proc.returncode == 0, proc.stderr
    assert (work / "graph.rewritten.pb").exists()
    assert digest(work / "graph.pb") == before
    assert "2 updates found, 2 guarded, 1 clipped" in proc.stderr


def test_report_json_matches_the_summary(work: Path) -> None:
    import json

    assert main([str(work / "graph.pb"), "--spec", str(work / "wrap.yaml"), "-o", str(work / "o.pb"),
                 "--report", str(work / "r.json"), "-q"]) == 0
    report = json.loads((work / "r.json").read_text())
    assert report["counts"] == {"updates_found": 2, "guarded": 2, "clipped": 1,
                                "global_norm_clipped": 0, "skipped": 0}
    assert {s["variable"]: s["inserted"] for s in report["sites"]} == {
        "dense/kernel": ["guard", "clip[0]"], "dense/bias": ["guard"]}


def test_same_input_and_spec_give_the_same_bytes(work: Path) -> None:
    for name in ("a.pb", "b.pb"):
        assert main([str(work / "graph.pb"), "--spec", str(work / "wrap.yaml"), "-o", str(work / name), "-q"]) == 0
    assert (work / "a.pb").read_bytes() == (work / "b.pb").read_bytes()


@pytest.mark.parametrize("case", [DENSE, SPARSE, META], ids=lambda p: p.name)
def test_rewriting_the_output_again_changes_nothing(case: Path, tmp_path: Path) -> None:
    src = next(case.glob("input.*"))
    once, twice = tmp_path / f"once{src.suffix}", tmp_path / f"twice{src.suffix}"
    assert main([str(src), "--spec", str(case / "spec.yaml"), "-o", str(once), "-q"]) == 0
    assert main([str(once), "--spec", str(case / "spec.yaml"), "-o", str(twice), "-q"]) == 0
    assert twice.read_bytes() == once.read_bytes()


def test_rewriting_a_rewritten_graph_with_another_spec_is_refused(work: Path) -> None:
    assert main([str(work / "graph.pb"), "--spec", str(work / "wrap.yaml"), "-o", str(work / "o.pb"), "-q"]) == 0
    (work / "other.yaml").write_text("version: 1\nguard:\n  variables: [dense/kernel]\n")
    proc = run_cli(work / "o.pb", "--spec", work / "other.yaml", "-o", work / "o2.pb")
    assert proc.returncode == 2
    assert "already rewritten by optrewrite with a different spec" in proc.stderr
    assert not (work / "o2.pb").exists()


@pytest.mark.parametrize("case", [DENSE, META], ids=lambda p: p.name)
def test_untouched_nodes_keep_their_exact_bytes(case: Path, tmp_path: Path) -> None:
    src = next(case.glob("input.*"))
    out = tmp_path / f"out{src.suffix}"
    assert main([str(src), "--spec", str(case / "spec.yaml"), "-o", str(out), "-q"]) == 0
    raw_in, raw_out = src.read_bytes(), out.read_bytes()
    if src.suffix == ".meta":
        raw_in = next(raw_in[p:e] for n, _s, p, e in io.top_level_fields(raw_in) if n == 2)
        raw_out = next(raw_out[p:e] for n, _s, p, e in io.top_level_fields(raw_out) if n == 2)
    spans_in = [raw_in[s:e] for n, s, _p, e in io.top_level_fields(raw_in) if n == 1]
    spans_out = [raw_out[s:e] for n, s, _p, e in io.top_level_fields(raw_out) if n == 1]
    from optrewrite.tf import proto

    def parsed(span: bytes) -> proto.NodeDef:
        node = proto.NodeDef()
        node.ParseFromString(span[io.top_level_fields(span)[0][2]:])
        return node

    same_content = [i for i in range(len(spans_in)) if parsed(spans_in[i]) == parsed(spans_out[i])]
    assert len(same_content) > len(spans_in) // 2
    assert all(spans_in[i] == spans_out[i] for i in same_content)
    # the non-node fields (versions, library, and the MetaGraphDef's other fields) are kept verbatim
    others = lambda raw: [raw[s:e] for n, s, _p, e in io.top_level_fields(raw) if n != 1]  # noqa: E731
    assert others(raw_in) == others(raw_out)


def test_metagraph_keeps_collections_saver_and_signatures(tmp_path: Path) -> None:
    src = META / "input.meta"
    out = tmp_path / "out.meta"
    assert main([str(src), "--spec", str(META / "spec.yaml"), "-o", str(out), "-q"]) == 0
    a, b = io.load(src, src.read_bytes()).message, io.load(out, out.read_bytes()).message
    assert a.collection_def == b.collection_def
    assert a.saver_def == b.saver_def
    assert a.signature_def == b.signature_def
    assert a.meta_info_def == b.meta_info_def


def test_text_input_gives_text_output(tmp_path: Path) -> None:
    out = tmp_path / "out.pbtxt"
    assert main([str(SPARSE / "input.pbtxt"), "--spec", str(SPARSE / "spec.yaml"), "-o", str(out), "-q"]) == 0
    assert out.read_text().lstrip().startswith("node {")


# ----------------------------------------------------------------------------- bad input

GARBAGE = {
    "empty.pb": b"",
    "truncated.pb": (DENSE / "input.pb").read_bytes()[:-37],
    "random.pb": bytes(range(256)) * 8,
    "text_as_binary.pb": b"hello world, not a graph\n",
    "random.pbtxt": b"node { name: 'a' op: \n",
    "binary.meta": os.urandom(0) + b"\xff\xff\xff\xff",
    "graph_as_meta.meta": b"\x0a\x03\x0a\x01a",
    "model.onnx": b"\x08\x07\x12\x04test",
    "dangling.pbtxt": b"node { name: 'a' op: 'Identity' input: 'nowhere' }\n",
    "dup.pbtxt": b"node { name: 'a' op: 'NoOp' }\nnode { name: 'a' op: 'NoOp' }\n",
    "no_updates.pbtxt": b"node { name: 'a' op: 'NoOp' }\n",
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_bad_graph_files_exit_2_with_one_line_and_write_nothing(name: str, work: Path) -> None:
    bad = work / name
    bad.write_bytes(GARBAGE[name])
    before = digest(bad)
    proc = run_cli(bad, "--spec", work / "wrap.yaml", "-o", work / f"out{bad.suffix}")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("optrewrite: error: ")
    assert "Traceback" not in proc.stderr
    assert digest(bad) == before
    assert sorted(p.name for p in work.iterdir()) == sorted(["graph.pb", "wrap.yaml", name])


SPEC_ERRORS = {
    "invalid yaml": ("version: 1\nguard: [\n", "invalid YAML"),
    "unknown key": ("version: 1\nguard: {}\nextra: 1\n", "wrap2.yaml:3: extra: unknown key"),
    "wrong type": ("version: 1\nguard:\n  variables: 3\n", "guard.variables: must be a list"),
    "version": ("version: 9\nguard:\n", "unsupported version 9"),
    "norm": ("version: 1\nclip:\n  - variables: ['*']\n    max_norm: 0\n", "clip[0].max_norm: must be a positive number"),
    "dims": ("version: 1\nclip:\n  - variables: [dense/bias]\n    dims: [1]\n    max_norm: 1\n",
             "dim 1 is out of range for variable 'dense/bias' of rank 1"),
    "regex": ("version: 1\nguard:\n  variables: ['re:[']\n", "invalid regular expression"),
    "no match": ("version: 1\nguard:\n  variables: ['nothing*']\n", "guard: selects no variable"),
}


@pytest.mark.parametrize("key", sorted(SPEC_ERRORS))
def test_spec_errors_exit_2_naming_file_line_and_field(key: str, work: Path) -> None:
    text, expected = SPEC_ERRORS[key]
    (work / "wrap2.yaml").write_text(text)
    proc = run_cli(work / "graph.pb", "--spec", work / "wrap2.yaml", "-o", work / "out.pb")
    assert proc.returncode == 2
    assert expected in proc.stderr and "wrap2.yaml" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (work / "out.pb").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("{g}", "--spec", "{s}", "-o", "{g}"),
        ("{g}", "--spec", "{s}", "-o", "{d}/./graph.pb"),
        ("{g}", "--spec", "{s}", "--report", "{g}"),
        ("{g}",),
        ("{d}/missing.pb", "--spec", "{s}"),
        ("{g}", "--spec", "{d}/missing.yaml"),
        ("{g}", "--spec", "{s}", "-o", "{d}/no/such/dir/out.pb"),
        ("{g}", "--spec", "{s}", "--bogus"),
        ("{d}", "--spec", "{s}", "-o", "{d}/x.pb"),
    ],
    ids=["out-is-in", "out-is-in-spelled-otherwise", "report-is-in", "no-spec", "missing-input",
         "missing-spec", "missing-out-dir", "unknown-flag", "input-is-dir"],
)
def test_usage_errors_exit_2(args: tuple[str, ...], work: Path) -> None:
    before = digest(work / "graph.pb")
    argv = [a.format(g=work / "graph.pb", s=work / "wrap.yaml", d=work) for a in args]
    proc = run_cli(*argv)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert digest(work / "graph.pb") == before
    assert sorted(p.name for p in work.iterdir()) == ["graph.pb", "wrap.yaml"]


def test_symlinked_output_onto_the_input_is_refused(work: Path) -> None:
    (work / "link.pb").symlink_to(work / "graph.pb")
    assert main([str(work / "graph.pb"), "--spec", str(work / "wrap.yaml"), "-o", str(work / "link.pb")]) == 2


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.pb"
    target.write_bytes(b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(InputError, match=r"out.pb: cannot write: disk full"):
        fileio.write_atomic(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.pb"]


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "out.pb"
    target.write_bytes(b"old old old")
    fileio.write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_help_and_version_exit_0() -> None:
    assert run_cli("--help").returncode == 0
    proc = run_cli("--version")
    assert proc.returncode == 0 and "optrewrite" in proc.stdout


def test_rewriting_does_not_import_tensorflow(work: Path) -> None:
    code = (
        "import sys; from optrewrite.cli import main; "
        f"rc = main([{str(work / 'graph.pb')!r}, '--spec', {str(work / 'wrap.yaml')!r}, '-q']); "
        "assert rc == 0; assert 'tensorflow' not in sys.modules, 'tensorflow imported'; print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_format_comes_from_content_when_the_extension_disagrees(tmp_path: Path) -> None:
    text_named_pb = tmp_path / "graph.pb"
    text_named_pb.write_bytes((SPARSE / "input.pbtxt").read_bytes())
    binary_named_odd = tmp_path / "graph.bin"
    binary_named_odd.write_bytes((DENSE / "input.pb").read_bytes())
    for src, spec in ((text_named_pb, SPARSE), (binary_named_odd, DENSE)):
        out = tmp_path / f"out{src.suffix}"
        assert main([str(src), "--spec", str(spec / "spec.yaml"), "-o", str(out), "-q"]) == 0
        assert io.load(out, out.read_bytes()).encoding == io.load(src, src.read_bytes()).encoding
    assert io.load(text_named_pb, text_named_pb.read_bytes()).encoding == io.TEXT


# --------------------------------------------------------------------- --check and --dry-run
ONNX_CASE = FIXTURES / "momentum_preview_guarded"


@pytest.mark.parametrize("case", [DENSE, ONNX_CASE], ids=lambda p: p.name)
def test_check_exits_1_until_the_graph_is_rewritten(case: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / next(case.glob("input.*")).name
    src.write_bytes(next(case.glob("input.*")).read_bytes())
    spec = case / "spec.yaml"
    assert main([str(src), "--spec", str(spec), "--check"]) == 1
    assert "check: rewriting would change the graph (+" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name], "--check writes nothing"
    out = tmp_path / f"out{src.suffix}"
    assert main([str(src), "--spec", str(spec), "-o", str(out), "-q"]) == 0
    assert main([str(out), "--spec", str(spec), "--check"]) == 0
    assert "rewriting would not change the graph" in capsys.readouterr().err


def test_check_with_several_graphs_reports_each_and_exits_with_the_worst(work: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(work / "wrap.yaml")
    assert main([str(work / "graph.pb"), "--spec", spec, "-q"]) == 0
    done, raw = work / "graph.rewritten.pb", work / "graph.pb"
    assert main(["--check", "-q", "--spec", spec, str(done), str(done)]) == 0
    assert main(["--check", "-q", "--spec", spec, str(done), str(raw)]) == 1
    assert main(["--check", "-q", "--spec", spec, str(raw), str(work / "missing.pb"), str(done)]) == 2
    err = capsys.readouterr().err.splitlines()
    stale = f"optrewrite: {raw}: rewriting with {spec} would change it"  # named even when quiet
    assert err == [stale, stale, f"optrewrite: error: {work / 'missing.pb'}: cannot read: No such file or directory"]
    for jobs in ("1", "2"):  # in worker processes: the same lines in the inputs' order, the same exit code
        assert main(["--check", "-q", "-j", jobs, "--spec", spec, str(raw), str(work / "missing.pb"), str(done)]) == 2
        assert capsys.readouterr().err.splitlines() == err[1:]


def test_dry_run_writes_only_the_report(work: Path) -> None:
    import json

    before = sorted(p.name for p in work.iterdir())
    assert main([str(work / "graph.pb"), "--spec", str(work / "wrap.yaml"), "--dry-run", "-q",
                 "--report", str(work / "r.json")]) == 0
    assert sorted(p.name for p in work.iterdir()) == sorted([*before, "r.json"])
    report = json.loads((work / "r.json").read_text())
    assert report["mode"] == "dry-run" and report["output"] is None and report["changed"] is True
    assert report["nodes_added"] > 0 and report["counts"]["guarded"] == 2


def test_several_inputs_each_get_their_default_output(work: Path) -> None:
    (work / "other.pb").write_bytes((work / "graph.pb").read_bytes())
    assert main([str(work / "graph.pb"), str(work / "other.pb"), "--spec", str(work / "wrap.yaml"), "-q"]) == 0
    assert (work / "graph.rewritten.pb").read_bytes() == (work / "other.rewritten.pb").read_bytes()


@pytest.mark.parametrize("args", [
    ("--check", "--dry-run"),
    ("--dry-run", "--verify"),
    ("--check", "--verify"),
    ("-o", "x.pb", "EXTRA"),
    ("--report", "r.json", "EXTRA"),
], ids=["check+dry-run", "dry-run+verify", "check+verify", "two inputs and -o", "one input twice, and --report"])
def test_flag_combinations_that_make_no_sense_exit_2(args: tuple[str, ...], work: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(work / "graph.pb"), "--spec", str(work / "wrap.yaml"),
            *[str(work / "graph.pb") if a == "EXTRA" else str(work / a) if a.endswith((".pb", ".json")) else a
              for a in args]]
    before = sorted(p.name for p in work.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("optrewrite: error:") and err.count("\n") == 1
    assert sorted(p.name for p in work.iterdir()) == before


# --------------------------------------------------------------------- --verify
def test_verify_records_the_step_in_the_report(work: Path) -> None:
    import json

    out = work / "out.pb"
    assert main([str(work / "graph.pb"), "--spec", str(work / "wrap.yaml"), "-o", str(out), "--verify",
                 "-q", "--report", str(work / "r.json")]) == 0
    report = json.loads((work / "r.json").read_text())
    assert "TensorFlow" in report["verified"]


def test_verify_blames_an_input_that_does_not_run_and_writes_nothing(work: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The dense fixture with MatMul told to transpose its first operand: the shapes no longer
    agree, which only running the graph finds."""
    graph = proto.GraphDef.FromString((work / "graph.pb").read_bytes())
    (matmul,) = [n for n in graph.node if n.name == "MatMul"]
    matmul.attr["transpose_a"].b = True
    (work / "graph.pb").write_bytes(graph.SerializeToString())
    before = digest(work / "graph.pb")
    out = work / "out.pb"
    assert main([str(work / "graph.pb"), "--spec", str(work / "wrap.yaml"), "-o", str(out), "--verify"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"optrewrite: error: {work / 'graph.pb'}: the input graph does not run either:")
    assert err.count("\n") == 1
    assert not out.exists() and digest(work / "graph.pb") == before
    assert not [p for p in work.iterdir() if p.name.startswith(".")], "no temporary file left"


def test_verify_failing_only_on_the_output_is_an_internal_error(work: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A rewrite that breaks a runnable graph (simulated by corrupting the rewrite's bytes) is
    our bug: exit 3, and the broken graph is not written."""
    from optrewrite.tf.format import TensorFlowFormat

    real = TensorFlowFormat.serialize

    def broken(self, outcome):  # type: ignore[no-untyped-def]
        graph = proto.GraphDef.FromString(real(self, outcome))
        (matmul,) = [n for n in graph.node if n.name == "MatMul"]
        matmul.attr["transpose_a"].b = True
        return graph.SerializeToString()

    monkeypatch.setattr(TensorFlowFormat, "serialize", broken)
    out = work / "out.pb"
    assert main([str(work / "graph.pb"), "--spec", str(work / "wrap.yaml"), "-o", str(out), "--verify"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("optrewrite: internal error: AssertionError: the rewritten graph fails to run")
    assert not out.exists()


def test_verify_refuses_a_graph_too_large_to_generate_data_for(work: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    graph = proto.GraphDef.FromString((work / "graph.pb").read_bytes())
    (x,) = [n for n in graph.node if n.name == "x"]
    x.attr["shape"].shape.dim[0].size = 2**26  # x: [2**26, 3], more than verify generates
    (work / "graph.pb").write_bytes(graph.SerializeToString())
    out = work / "out.pb"
    assert main([str(work / "graph.pb"), "--spec", str(work / "wrap.yaml"), "-o", str(out), "--verify"]) == 2
    err = capsys.readouterr().err
    assert "--verify cannot run this graph (rewrite without --verify): placeholder 'x'" in err
    assert err.count("\n") == 1 and not out.exists()
    assert main([str(work / "graph.pb"), "--spec", str(work / "wrap.yaml"), "-o", str(out), "-q"]) == 0


# --------------------------------------------------------------------- diff and schema
def test_diff_exit_codes(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = work / "graph.pb"
    assert main([str(graph), "--spec", str(work / "wrap.yaml"), "-q"]) == 0
    text = work / "graph.pbtxt"
    from google.protobuf import text_format

    text.write_text(text_format.MessageToString(proto.GraphDef.FromString(graph.read_bytes())))
    assert main(["diff", str(graph), str(text)]) == 0
    assert main(["diff", str(graph), str(work / "graph.rewritten.pb")]) == 1
    out = capsys.readouterr().out
    assert "optrewrite/plan" in out
    assert main(["diff", "-q", str(graph), str(work / "graph.rewritten.pb")]) == 1
    assert capsys.readouterr().out == ""
    assert main(["diff", str(graph), str(work / "wrap.yaml")]) == 2
    assert main(["diff", str(graph)]) == 2


def test_schema_prints_json_schemas_and_validates_specs(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    for which in ("spec", "report"):
        assert main(["schema", which]) == 0
        assert json.loads(capsys.readouterr().out)["$schema"].startswith("https://json-schema.org/")
    assert main(["schema", "--validate", str(work / "wrap.yaml")]) == 0
    (work / "bad.yaml").write_text("version: 1\nclip:\n  - variables: ['*']\n    max_norm: -1\n")
    assert main(["schema", "--validate", str(work / "bad.yaml"), str(work / "wrap.yaml")]) == 2
    assert capsys.readouterr().err == f"optrewrite: error: {work / 'bad.yaml'}:4: clip[0].max_norm: must be a positive number, got -1\n"


# --------------------------------------------------------------------- where outputs may go
@pytest.mark.parametrize("target", ["-o", "--report"])
def test_an_output_that_is_a_directory_or_in_a_missing_one_writes_nothing(
        target: str, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "adir").mkdir()
    other = ["--report", str(work / "r.json")] if target == "-o" else ["-o", str(work / "o.pb")]
    for path, expected in ((work / "adir", "is a directory"), (work / "missing" / "x", "does not exist")):
        before = sorted(p.name for p in work.iterdir())
        assert main([str(work / "graph.pb"), "--spec", str(work / "wrap.yaml"), target, str(path), *other, "-q"]) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1
        assert sorted(p.name for p in work.iterdir()) == before, "nothing written, not even the other file"


@pytest.mark.parametrize("target", ["-o", "--report"])
def test_the_spec_is_never_overwritten(target: str, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = work / "wrap.yaml"
    before = spec.read_bytes()
    assert main([str(work / "graph.pb"), "--spec", str(spec), target, str(spec)]) == 2
    assert "would overwrite the spec" in capsys.readouterr().err
    assert spec.read_bytes() == before


def test_an_input_that_is_another_inputs_default_output_is_refused(work: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(work / "graph.pb"), "--spec", str(work / "wrap.yaml"), "-q"]) == 0
    rewritten = work / "graph.rewritten.pb"
    before = sorted((p.name, digest(p)) for p in work.iterdir())
    assert main([str(work / "graph.pb"), str(rewritten), "--spec", str(work / "wrap.yaml"), "-q"]) == 2
    assert f"the output of {work / 'graph.pb'} (job 1) would overwrite the input" in capsys.readouterr().err
    assert sorted((p.name, digest(p)) for p in work.iterdir()) == before
    assert main([str(work / "graph.pb"), str(rewritten), "--spec", str(work / "wrap.yaml"), "--check", "-q"]) == 1


def test_explain_dot_into_a_directory_is_an_input_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(DENSE / "input.pb"), "--spec", str(DENSE / "spec.yaml"), "--dot", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_the_front_door(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bare call prints the usage; schema errors name no internal argument; --validate says
    what passed; counts of one are singular; `python -m optrewrite.cli` runs the CLI."""
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: optrewrite") and "optrewrite: error: usage: give a graph and --spec" in err
    assert main(["schema", "nope"]) == 2
    err = capsys.readouterr().err
    assert "which" not in err and "spec|report" in err, err
    assert main(["schema", "--validate", str(work / "wrap.yaml")]) == 0
    assert capsys.readouterr().out == f"{work / 'wrap.yaml'}: valid\n"
    one = work / "one.yaml"
    one.write_text("version: 1\nguard:\n  variables: ['dense/kernel']\n")  # of two updates
    assert main([str(work / "graph.pb"), "--spec", str(one), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "2 updates found, 1 guarded" in err, err
    assert (plural(1, "update"), plural(1, "node"), plural(0, "node")) == ("1 update", "1 node", "0 nodes")
    proc = subprocess.run([sys.executable, "-m", "optrewrite.cli", "schema", "--validate", str(work / "wrap.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.endswith(": valid\n"), proc


def test_default_outputs_do_not_stack_suffixes(work: Path) -> None:
    assert fileio.default_output(Path("a/g.rewritten.pbtxt")) == Path("a/g.rewritten-2.pbtxt")
    assert fileio.default_output(Path("g.rewritten-2.pb")) == Path("g.rewritten-3.pb")
    assert fileio.default_output(Path("rewritten.pb")) == Path("rewritten.rewritten.pb")
    assert main([str(work / "graph.pb"), "--spec", str(work / "wrap.yaml"), "-q"]) == 0
    assert main([str(work / "graph.rewritten.pb"), "--spec", str(work / "wrap.yaml"), "-q"]) == 0
    assert (work / "graph.rewritten-2.pb").read_bytes() == (work / "graph.rewritten.pb").read_bytes()


def test_the_output_name_chooses_the_encoding(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """-o out.pbtxt writes text, -o out.pb binary (a graph is re-encoded by rewriting); a name
    of another format, or a container that would not read back, is exit 2 before writing."""
    text, binary = work / "out.pbtxt", work / "again.pb"
    assert main([str(work / "graph.pb"), "--spec", str(work / "wrap.yaml"), "-o", str(text), "-q"]) == 0
    assert io.load(text, text.read_bytes()).encoding == io.TEXT
    assert main([str(text), "--spec", str(work / "wrap.yaml"), "-o", str(binary), "-q"]) == 0
    assert io.load(binary, binary.read_bytes()).encoding == io.BINARY
    assert main(["diff", str(text), str(binary)]) == 0
    capsys.readouterr()
    for bad, words in ((work / "out.onnx", "names an ONNX model"), (work / "out.meta", "holds a MetaGraphDef")):
        assert main([str(work / "graph.pb"), "--spec", str(work / "wrap.yaml"), "-o", str(bad)]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.splitlines()) == 1, err
        assert not bad.exists()
    onnx_in = ONNX_CASE / "input.onnx"
    assert main([str(onnx_in), "--spec", str(ONNX_CASE / "spec.yaml"), "-o", str(work / "m.pb")]) == 2
    assert "names a TensorFlow graph" in capsys.readouterr().err


def test_jobs_write_what_a_sequential_run_writes(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = ["a.pb", "b.pb", "c.pb", "d.pb"]
    for name in names:
        (work / name).write_bytes((work / "graph.pb").read_bytes())
    spec = str(work / "wrap.yaml")
    assert main(["--spec", spec, *(str(work / n) for n in names)]) == 0
    sequential = capsys.readouterr().err
    first = {n: (work / n.replace(".pb", ".rewritten.pb")).read_bytes() for n in names}
    for n in names:
        (work / n.replace(".pb", ".rewritten.pb")).unlink()
    assert main(["-j", "3", "--spec", spec, *(str(work / n) for n in names)]) == 0
    assert capsys.readouterr().err == sequential  # the same summaries, in the inputs' order
    assert {n: (work / n.replace(".pb", ".rewritten.pb")).read_bytes() for n in names} == first
    assert main(["-j", "0", "--spec", spec, str(work / "a.pb")]) == 2
    assert "expected a number of workers" in capsys.readouterr().err


def test_verify_says_what_it_does_on_a_terminal_only(work: Path) -> None:
    """``--verify`` runs a step in a child process, which takes seconds: on a terminal a line
    says so before it starts; in a pipe (CI logs) there is no such line."""
    import os
    import pty

    argv = [sys.executable, "-m", "optrewrite", str(work / "graph.pb"), "--spec", str(work / "wrap.yaml"),
            "-o", str(work / "out.pb"), "--verify"]
    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=child_fd)
    os.close(child_fd)
    chunks = []
    while True:
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=120) == 0
    os.close(main_fd)
    on_terminal = b"".join(chunks).decode()
    assert f"optrewrite: {work / 'out.pb'}: verifying: one step" in on_terminal
    assert on_terminal.index("verifying") < on_terminal.index("verified:")
    (work / "out.pb").unlink()
    piped = run_cli(work / "graph.pb", "--spec", work / "wrap.yaml", "-o", work / "out.pb", "--verify")
    assert piped.returncode == 0 and "verifying" not in piped.stderr and "verified:" in piped.stderr
