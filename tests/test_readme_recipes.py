"""The README's pipeline recipes and example output, run as written.

A block is marked in README.md by an HTML comment on the line before it:
``<!-- recipe: NAME -->`` (a Makefile, a shell script, a pre-commit config) or
``<!-- output of: COMMAND -->`` (what COMMAND prints, run from the repository root).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FIXTURE = ROOT / "fixtures" / "momentum_ref_dense"
_BLOCK = re.compile(r"<!-- (recipe|output of): (.+?) -->\n```[a-z]*\n(.*?)```\n", re.S)
BLOCKS = {(kind, name): body for kind, name, body in _BLOCK.findall(README)}


def recipe(name: str) -> str:
    return BLOCKS[("recipe", name)]


def _env() -> dict[str, str]:
    """PATH with this interpreter's scripts (optrewrite, pre-commit) first."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["TMPDIR"] = env.get("TMPDIR", "/tmp")
    env.pop("COLUMNS", None)  # the README shows whole tables, as a pipe gets them
    return env


def sh(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project: original graphs and the spec."""
    (tmp_path / "graphs").mkdir()
    shutil.copy(FIXTURE / "input.pb", tmp_path / "graphs" / "model.pb")
    shutil.copy(FIXTURE / "input.pb", tmp_path / "graphs" / "second.pb")
    shutil.copy(FIXTURE / "spec.yaml", tmp_path / "wrap.yaml")
    return tmp_path


def test_the_readme_marks_every_recipe() -> None:
    assert {name for kind, name in BLOCKS if kind == "recipe"} == {"makefile", "ci", "pre-commit"}
    assert any(kind == "output of" for kind, _ in BLOCKS)


def _make(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (project / "Makefile").write_text(recipe("makefile"))
    return sh(["make", *args], project)


def test_makefile_recipe_rewrites_verifies_and_is_incremental(project: Path) -> None:
    import json

    first = _make(project)
    assert first.returncode == 0, first.stdout + first.stderr
    for name in ("model", "second"):
        report = json.loads((project / "build" / f"{name}.pb.json").read_text())
        assert report["mode"] == "write" and report["changed"] and report["verified"], report
    assert _make(project, "-q").returncode == 0, "nothing left to do"
    os.utime(project / "wrap.yaml")  # a newer spec: every graph is rebuilt
    assert _make(project, "-q").returncode == 1


def test_ci_recipe_passes_on_an_up_to_date_build_and_fails_on_a_stale_one(project: Path) -> None:
    assert _make(project).returncode == 0
    script = "set -euo pipefail\n" + recipe("ci")
    ok = sh(["bash", "-c", script], project)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    shutil.copy(project / "graphs" / "model.pb", project / "build" / "model.pb")  # not rewritten
    stale = sh(["bash", "-c", script], project)
    assert stale.returncode == 1
    assert "check: rewriting would change the graph" not in stale.stderr  # -q: the exit code says it


def _hook_commands(project: Path) -> dict[str, list[str]]:
    """Each hook of the README's config as pre-commit would run it on the project's files."""
    manifest = {h["id"]: h for h in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    (config,) = yaml.safe_load(recipe("pre-commit"))["repos"]
    files = sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file())
    commands = {}
    for hook in config["hooks"]:
        spec = {**manifest[hook["id"]], **hook}
        chosen = [f for f in files if re.search(spec["files"], f)]
        commands[hook["id"]] = [*shlex.split(spec["entry"]), *spec.get("args", []), *chosen]
    return commands


def test_pre_commit_manifest_and_readme_config_are_valid(project: Path) -> None:
    assert sh(["pre-commit", "validate-manifest", str(ROOT / ".pre-commit-hooks.yaml")], project).returncode == 0
    (project / ".pre-commit-config.yaml").write_text(recipe("pre-commit"))
    proc = sh(["pre-commit", "validate-config", ".pre-commit-config.yaml"], project)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pre_commit_hooks_pass_on_a_rewritten_build_and_fail_otherwise(project: Path) -> None:
    assert _make(project).returncode == 0
    commands = _hook_commands(project)
    assert commands["optrewrite-check"][-2:] == ["build/model.pb", "build/second.pb"]
    assert commands["optrewrite-spec"][-1] == "wrap.yaml"
    for command in commands.values():
        proc = sh(command, project)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    shutil.copy(project / "graphs" / "second.pb", project / "build" / "second.pb")
    stale = sh(commands["optrewrite-check"], project)
    assert stale.returncode == 1
    # the quiet hook still names the graph that is not rewritten, and only that one
    assert stale.stderr == "optrewrite: build/second.pb: rewriting with wrap.yaml would change it\n", stale.stderr
    (project / "wrap.yaml").write_text("version: 1\nguard: {variables: ['*'], colour: red}\n")
    bad = sh(commands["optrewrite-spec"], project)
    assert bad.returncode == 2 and bad.stderr.startswith("optrewrite: error: wrap.yaml:2: guard")


@pytest.mark.parametrize("command", [name for kind, name in BLOCKS if kind == "output of"])
def test_readme_example_output_is_what_the_command_prints(command: str) -> None:
    proc = sh(shlex.split(command), ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == BLOCKS[("output of", command)]
