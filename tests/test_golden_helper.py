"""optrewrite.testing and its pytest plugin: golden graphs that fail with a diff and change
only on request (regen=True, --optrewrite-regen, OPTREWRITE_REGEN=1).

The plugin tests run pytest in a subprocess on a test file written to a temporary directory;
the plugin comes from the installed ``pytest11`` entry point, not from ``-p``.
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format

from optrewrite import testing
from optrewrite.diff import diff_files
from optrewrite.testing import REGEN_ENV, REGEN_OPTION, assert_graph_matches, write_expected
from optrewrite.tf import io, proto

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TF_PB = FIXTURES / "momentum_ref_dense" / "input.pb"
TF_META = FIXTURES / "gd_ref_sparse_meta" / "input.meta"
ONNX_MODEL = FIXTURES / "adam_preview_lowered" / "input.onnx"


@pytest.fixture(autouse=True)
def no_regen_requested(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests check the default; a session run with --optrewrite-regen must not change it."""
    monkeypatch.delenv(REGEN_ENV, raising=False)
    monkeypatch.setattr(testing, "_session_regen", False)


def graph_with_extra_node(tmp_path: Path, name: str = "changed.pb") -> Path:
    graph = proto.GraphDef()
    graph.CopyFrom(io.load(TF_PB, TF_PB.read_bytes()).graph)
    graph.node.add(name="extra", op="NoOp", input=["^init"])
    path = tmp_path / name
    path.write_bytes(graph.SerializeToString())
    return path


def text_copy(source: Path, target: Path) -> Path:
    target.write_text(text_format.MessageToString(io.load(source, source.read_bytes()).message))
    return target


# --------------------------------------------------------------------------- the assertion


def test_equal_graphs_pass_whatever_their_encoding(tmp_path: Path) -> None:
    assert_graph_matches(TF_PB, text_copy(TF_PB, tmp_path / "expected.pbtxt"))
    assert_graph_matches(str(ONNX_MODEL), str(ONNX_MODEL))


def test_a_difference_fails_with_the_diff_and_the_regenerate_hint(tmp_path: Path) -> None:
    expected = text_copy(TF_PB, tmp_path / "expected.pbtxt")
    before = expected.read_bytes()
    actual = graph_with_extra_node(tmp_path)
    with pytest.raises(AssertionError) as info:
        assert_graph_matches(actual, expected)
    message = str(info.value)
    assert message.splitlines()[:2] == [
        f"1 difference between {expected} and {actual}",
        "  + node extra = NoOp(^init)",
    ]
    assert REGEN_OPTION in message and f"{REGEN_ENV}=1" in message
    assert expected.read_bytes() == before


def test_a_missing_expected_graph_fails_saying_how_to_create_it(tmp_path: Path) -> None:
    expected = tmp_path / "golden" / "model.pbtxt"
    with pytest.raises(AssertionError) as info:
        assert_graph_matches(TF_PB, expected)
    assert str(info.value) == (
        f"{expected}: no expected graph yet; to create it from the actual graph ({TF_PB}), "
        f"run the test with {REGEN_OPTION} (pytest) or {REGEN_ENV}=1, then review and commit it"
    )
    assert not expected.exists()


def test_an_unreadable_expected_graph_fails(tmp_path: Path) -> None:
    expected = tmp_path / "expected.pbtxt"
    expected.write_text("this is not a graph {")
    with pytest.raises(AssertionError, match=f"cannot compare {TF_PB} with {expected}: "):
        assert_graph_matches(TF_PB, expected)


def test_regen_writes_the_actual_graph_in_the_expected_files_encoding(tmp_path: Path) -> None:
    actual = graph_with_extra_node(tmp_path)
    expected = text_copy(TF_PB, tmp_path / "expected.pbtxt")
    assert_graph_matches(actual, expected, regen=True)
    assert expected.read_text().startswith("node {")  # text format, for reviewers
    assert diff_files(actual, expected).same
    assert_graph_matches(actual, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["changed.pb", "expected.pbtxt"]  # no temp left

    binary = tmp_path / "expected.pb"
    assert_graph_matches(expected, binary, regen=True)
    assert binary.read_bytes()[:1] != b"n" and diff_files(binary, actual).same


def test_regen_keeps_an_expected_graph_that_already_matches(tmp_path: Path) -> None:
    expected = text_copy(TF_PB, tmp_path / "expected.pbtxt")
    expected.write_text("# reviewed\n" + expected.read_text())
    before = expected.read_bytes()
    assert write_expected(TF_PB, expected) is False
    assert_graph_matches(TF_PB, expected, regen=True)
    assert expected.read_bytes() == before


def test_regen_of_metagraph_and_onnx(tmp_path: Path) -> None:
    meta = tmp_path / "expected.pbtxt"
    assert_graph_matches(TF_META, meta, regen=True)
    assert meta.read_text().startswith("meta_info_def {")
    assert io.load(meta, meta.read_bytes()).container == io.METAGRAPH
    assert diff_files(TF_META, meta).same

    model = tmp_path / "expected.onnx"
    assert_graph_matches(ONNX_MODEL, model, regen=True)
    assert model.read_bytes() == ONNX_MODEL.read_bytes()


def test_regen_creates_the_expected_graphs_missing_folders(tmp_path: Path) -> None:
    expected = tmp_path / "tests" / "golden" / "model.pbtxt"
    assert write_expected(TF_PB, expected) is True
    assert diff_files(TF_PB, expected).same
    model = tmp_path / "new" / "deeper" / "model.onnx"
    assert_graph_matches(ONNX_MODEL, model, regen=True)
    assert model.read_bytes() == ONNX_MODEL.read_bytes()
    (tmp_path / "in_the_way").write_text("")
    with pytest.raises(AssertionError, match="in_the_way: cannot create the folder"):
        assert_graph_matches(TF_PB, tmp_path / "in_the_way" / "model.pbtxt", regen=True)


def test_regen_refuses_what_the_expected_name_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="name graphs of different formats"):
        assert_graph_matches(ONNX_MODEL, tmp_path / "expected.pbtxt", regen=True)
    with pytest.raises(AssertionError, match="a .meta file holds a MetaGraphDef"):
        assert_graph_matches(TF_PB, tmp_path / "expected.meta", regen=True)
    junk = tmp_path / "junk.pb"
    junk.write_bytes(b"\xff\x00junk")
    with pytest.raises(AssertionError, match="cannot regenerate"):
        assert_graph_matches(junk, tmp_path / "expected.pbtxt", regen=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pb"]


def test_the_environment_variable_regenerates_and_an_explicit_false_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    actual = graph_with_extra_node(tmp_path)
    expected = text_copy(TF_PB, tmp_path / "expected.pbtxt")
    monkeypatch.setenv(REGEN_ENV, "0")
    with pytest.raises(AssertionError):
        assert_graph_matches(actual, expected)
    monkeypatch.setenv(REGEN_ENV, "1")
    with pytest.raises(AssertionError):
        assert_graph_matches(actual, expected, regen=False)
    assert_graph_matches(actual, expected)
    monkeypatch.delenv(REGEN_ENV)
    assert_graph_matches(actual, expected)


# --------------------------------------------------------------------------- the pytest plugin


def test_the_plugin_is_installed_as_a_pytest11_entry_point() -> None:
    points = {e.name: e.value for e in importlib.metadata.entry_points(group="pytest11")}
    assert points.get("optrewrite") == "optrewrite.pytest_plugin"


GOLDEN_TESTS = '''
from pathlib import Path

from optrewrite.testing import assert_graph_matches

HERE = Path(__file__).parent


def test_with_fixture(graph_golden):
    graph_golden(HERE / "actual.pb", HERE / "golden" / "fixture.pbtxt")


def test_direct():
    assert_graph_matches(HERE / "actual.pb", HERE / "golden" / "direct.pbtxt")
'''


def run_pytest(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in (REGEN_ENV, "PYTEST_DISABLE_PLUGIN_AUTOLOAD",
                                                                  "PYTEST_ADDOPTS")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
        cwd=folder, env=environ, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with a test file using both forms, its actual graph, and goldens of another graph."""
    (tmp_path / "test_golden.py").write_text(GOLDEN_TESTS)
    graph_with_extra_node(tmp_path, "actual.pb")
    (tmp_path / "golden").mkdir()
    for name in ("fixture.pbtxt", "direct.pbtxt"):
        text_copy(TF_PB, tmp_path / "golden" / name)
    return tmp_path


def test_plugin_fails_then_regenerates_only_with_the_flag(project: Path) -> None:
    goldens = {p: p.read_bytes() for p in (project / "golden").iterdir()}

    failed = run_pytest(project)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "2 failed" in failed.stdout
    assert "+ node extra = NoOp(^init)" in failed.stdout
    assert f"run the test with {REGEN_OPTION} (pytest)" in failed.stdout
    assert {p: p.read_bytes() for p in goldens} == goldens

    regenerated = run_pytest(project, REGEN_OPTION)
    assert regenerated.returncode == 0, regenerated.stdout + regenerated.stderr
    for golden in goldens:
        assert diff_files(project / "actual.pb", golden).same

    again = run_pytest(project)
    assert again.returncode == 0 and "2 passed" in again.stdout, again.stdout + again.stderr


def test_plugin_regenerates_with_the_environment_variable(project: Path) -> None:
    result = run_pytest(project, env={REGEN_ENV: "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert diff_files(project / "actual.pb", project / "golden" / "fixture.pbtxt").same


def test_plugin_reports_a_missing_expected_graph(project: Path) -> None:
    for golden in (project / "golden").iterdir():
        golden.unlink()
    result = run_pytest(project, "-k", "with_fixture")
    assert result.returncode == 1
    assert "fixture.pbtxt: no expected graph yet" in result.stdout
    assert "Traceback" not in result.stdout and "def test_with_fixture" not in result.stdout  # pytrace=False
    assert not (project / "golden" / "fixture.pbtxt").exists()


def test_plugin_option_regenerates_through_the_fixture_into_a_missing_folder(project: Path) -> None:
    shutil.rmtree(project / "golden")
    result = run_pytest(project, REGEN_OPTION, "-k", "with_fixture")
    assert result.returncode == 0, result.stdout + result.stderr
    assert diff_files(project / "actual.pb", project / "golden" / "fixture.pbtxt").same
    assert not (project / "golden" / "direct.pbtxt").exists()


def test_plugin_option_is_in_the_help(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, "--help")
    assert result.returncode == 0 and REGEN_OPTION in result.stdout


def test_onnx_golden_through_the_plugin(tmp_path: Path) -> None:
    (tmp_path / "test_onnx.py").write_text(
        "def test_model(graph_golden):\n"
        f"    graph_golden({str(ONNX_MODEL)!r}, 'expected.onnx')\n"
    )
    assert run_pytest(tmp_path).returncode == 1
    assert run_pytest(tmp_path, REGEN_OPTION).returncode == 0
    assert onnx.load(tmp_path / "expected.onnx") == onnx.load(ONNX_MODEL)
    assert run_pytest(tmp_path).returncode == 0
