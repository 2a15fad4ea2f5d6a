"""The seal of a binary TensorFlow output: ``--check`` answers from it, and only when it holds.

A seal is the SHA-256 of the file without the seal itself, bound to the spec's meaning
(optrewrite/seal.py); every case here compares the sealed answer with the full check's.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from optrewrite.api import rewrite_file
from optrewrite.cli import main
from optrewrite.errors import InputError
from optrewrite.tf import io, proto
from optrewrite.seal import PLACEHOLDER
from optrewrite.tf.rewrite import SEAL_ATTR

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


@pytest.fixture
def dense(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "input.pb"
    shutil.copyfile(FIXTURES / "momentum_ref_dense" / "input.pb", src)
    spec = tmp_path / "spec.yaml"
    shutil.copyfile(FIXTURES / "momentum_ref_dense" / "spec.yaml", spec)
    return src, spec


def _plan_node(path: Path) -> proto.NodeDef:
    loaded = io.load(path, path.read_bytes())
    (node,) = [n for n in loaded.graph.node if n.name == "optrewrite/plan"]
    return node


def test_check_of_a_sealed_output_searches_nothing_and_agrees(dense: tuple[Path, Path], tmp_path: Path) -> None:
    src, spec = dense
    out = tmp_path / "out.pb"
    rewrite_file(src, spec, output=out)
    seal = _plan_node(out).attr[SEAL_ATTR].s
    assert len(seal) == 64 and seal != PLACEHOLDER
    quick = rewrite_file(out, spec, mode="check")
    assert quick.sealed and not quick.changed and quick.sites == []
    full = rewrite_file(out, spec, mode="check", report_path=tmp_path / "r.json")  # a report: always searched
    assert not full.sealed and not full.changed and full.sites
    assert "already rewritten with this spec" in full.note
    # the same spec in another layout, with comments, has the same meaning: still sealed
    respelled = tmp_path / "respelled.yaml"
    respelled.write_text("# the same rules\nversion: 1\nclip: [{variables: [dense/kernel], max_norm: 1.0, dims: [1]}]\n"
                         "guard: {variables: ['*']}\n")
    assert rewrite_file(out, respelled, mode="check").sealed
    assert main([str(out), "--spec", str(spec), "--check", "-q"]) == 0


def test_a_changed_byte_or_another_spec_takes_the_full_check(dense: tuple[Path, Path], tmp_path: Path) -> None:
    src, spec = dense
    out = tmp_path / "out.pb"
    rewrite_file(src, spec, output=out)
    # one constant changed after the rewrite, the plan node and its seal kept: checked in full
    loaded = io.load(out, out.read_bytes())
    assert loaded.graph.SerializeToString(deterministic=True) == out.read_bytes()  # so only the edit differs
    const = next(n for n in loaded.graph.node if n.op == "Const" and n.attr["value"].tensor.float_val)
    const.attr["value"].tensor.float_val[0] += 1.0
    edited = tmp_path / "edited.pb"
    edited.write_bytes(loaded.graph.SerializeToString(deterministic=True))
    report = rewrite_file(edited, spec, mode="check")
    assert not report.sealed and not report.changed and report.sites
    # another spec: searched, and refused as a full check refuses it
    other = tmp_path / "other.yaml"
    other.write_text("version: 1\nguard:\n  variables: ['dense/bias']\n")
    with pytest.raises(InputError, match="different spec"):
        rewrite_file(out, other, mode="check")
    # a spec that selects the same updates in other words: searched, nothing to do
    same = tmp_path / "same.yaml"
    same.write_text("version: 1\nguard:\n  variables: ['re:.*']\nclip:\n  - variables: ['dense/kernel']\n"
                    "    dims: [1]\n    max_norm: 1.0\n")
    report = rewrite_file(out, same, mode="check")
    assert not report.sealed and not report.changed and report.sites


def test_a_forged_or_missing_seal_is_not_trusted(dense: tuple[Path, Path], tmp_path: Path) -> None:
    src, spec = dense
    out = tmp_path / "out.pb"
    rewrite_file(src, spec, output=out)
    raw = out.read_bytes()
    seal = _plan_node(out).attr[SEAL_ATTR].s
    forged = tmp_path / "forged.pb"
    forged.write_bytes(raw.replace(seal, b"0" * 64))
    assert not rewrite_file(forged, spec, mode="check").sealed
    # a graph rewritten before seals existed (the plan node without one): the full check
    loaded = io.load(out, raw)
    node = next(n for n in loaded.graph.node if n.name == "optrewrite/plan")
    del node.attr[SEAL_ATTR]
    old = tmp_path / "old.pb"
    old.write_bytes(loaded.graph.SerializeToString(deterministic=True))
    report = rewrite_file(old, spec, mode="check")
    assert not report.sealed and not report.changed


def test_text_output_carries_no_seal_and_meta_graphs_do(dense: tuple[Path, Path], tmp_path: Path) -> None:
    src, spec = dense
    text = tmp_path / "out.pbtxt"
    rewrite_file(src, spec, output=text)
    assert SEAL_ATTR not in _plan_node(text).attr
    assert not rewrite_file(text, spec, mode="check").sealed
    # the text output re-encoded as binary (nothing to rewrite): unsealed, checked in full
    binary = tmp_path / "again.pb"
    assert not rewrite_file(text, spec, output=binary).changed
    report = rewrite_file(binary, spec, mode="check")
    assert not report.sealed and not report.changed
    meta_src = FIXTURES / "gd_ref_sparse_meta" / "input.meta"
    meta_spec = FIXTURES / "gd_ref_sparse_meta" / "spec.yaml"
    meta_out = tmp_path / "out.meta"
    rewrite_file(meta_src, meta_spec, output=meta_out)
    report = rewrite_file(meta_out, meta_spec, mode="check")
    assert report.sealed and report.format == "MetaGraphDef (binary)"
    assert PLACEHOLDER not in meta_out.read_bytes()


def test_sealed_output_is_reproducible(dense: tuple[Path, Path], tmp_path: Path) -> None:
    src, spec = dense
    one, two = tmp_path / "one.pb", tmp_path / "two.pb"
    rewrite_file(src, spec, output=one)
    rewrite_file(src, spec, output=two)
    assert one.read_bytes() == two.read_bytes()
    # rewriting the output again is nothing to do and writes the same bytes
    three = tmp_path / "three.pb"
    rewrite_file(one, spec, output=three)
    assert three.read_bytes() == one.read_bytes()


def test_many_inputs_check_trusts_seals_unless_a_report_is_written(dense: tuple[Path, Path], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import json

    src, spec = dense
    one, two = tmp_path / "one.pb", tmp_path / "two.pb"
    rewrite_file(src, spec, output=one)
    rewrite_file(src, spec, output=two)
    capsys.readouterr()
    assert main([str(one), str(two), "--spec", str(spec), "--check"]) == 0
    assert capsys.readouterr().err.count("sealed by a rewrite with this spec") == 2
    combined = tmp_path / "all.json"
    assert main([str(one), str(two), "--spec", str(spec), "--check", "--report", str(combined), "-q"]) == 0
    runs = json.loads(combined.read_text())["runs"]
    assert [r["sealed"] for r in runs] == [False, False] and all(r["sites"] for r in runs)
