"""One write plan per run (optrewrite.writeplan): what a run writes is checked against what it
reads and against itself before anything is written, and written all or nothing; signals,
closed pipes and bounded inputs. Real files throughout."""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optrewrite import api, writeplan
from optrewrite.cli import main
from optrewrite.errors import InputError
from optrewrite.writeplan import WritePlan, remove_stale, temp_name

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DENSE = FIXTURES / "momentum_ref_dense"
DOMAIN = "ai.onnx.preview.training"
GUARD = "version: 1\nguard: {}\n"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(*dirs: Path) -> dict[str, str]:
    """Every file under ``dirs`` (hidden ones too) with its digest, links as links."""
    out = {}
    for d in dirs:
        for p in sorted(d.rglob("*")):
            if p.is_symlink():
                out[str(p)] = "-> " + os.readlink(p)
            elif p.is_file():
                out[str(p)] = digest(p)
            else:
                out[str(p)] = "dir"
    return out


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("optrewrite: error: "), err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture
def tfdir(tmp_path: Path) -> Path:
    d = tmp_path / "tf"
    d.mkdir()
    shutil.copyfile(DENSE / "input.pb", d / "g.pb")
    shutil.copyfile(DENSE / "spec.yaml", d / "s.yaml")
    return d


def onnx_step(d: Path, *, size: int = 8, locations: tuple[str, str] = ("data.bin", "data.bin")) -> Path:
    """A Momentum step whose W and V initializers live in external data files."""
    d.mkdir(parents=True, exist_ok=True)
    x, v = np.arange(size, dtype=np.float32), np.zeros(size, np.float32)
    node = helper.make_node("Momentum", ["R", "T", "W", "G", "V"], ["W_new", "V_new"], domain=DOMAIN,
                            alpha=0.9, beta=1.0, mode="standard", norm_coefficient=0.0)
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node], "ext",
        [vi("R", TensorProto.FLOAT, []), vi("T", TensorProto.INT64, []), vi("G", TensorProto.FLOAT, [size])],
        [vi("W_new", TensorProto.FLOAT, [size]), vi("V_new", TensorProto.FLOAT, [size])],
        [numpy_helper.from_array(x, "W"), numpy_helper.from_array(v, "V")])
    model = helper.make_model(graph, ir_version=10, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    src = d / "step.onnx"
    if locations[0] == locations[1]:
        onnx.save_model(model, str(src), save_as_external_data=True, location=locations[0], size_threshold=0)
    else:
        for tensor, location in zip(model.graph.initializer, locations):
            onnx.external_data_helper.set_external_data(tensor, location)
            (d / location).parent.mkdir(parents=True, exist_ok=True)
            (d / location).write_bytes(tensor.raw_data)
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
        src.write_bytes(model.SerializeToString())
    for location in set(locations):
        os.chmod(d / location, 0o644)
    (d / "s.yaml").write_text(GUARD)
    return src


# ----------------------------------------------------------------------------- clashes


@pytest.mark.parametrize("target", ["g.pb", "s.yaml"])
def test_explain_drawing_onto_the_input_or_the_spec_is_refused(
        tfdir: Path, target: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(tfdir)
    code, err = cli(capsys, "explain", tfdir / "g.pb", "--spec", tfdir / "s.yaml", "--dot", tfdir / target)
    role = "the input graph" if target == "g.pb" else "the spec"
    one_line_error(code, err, f"the drawing would overwrite {role}")
    assert snapshot(tfdir) == before


@pytest.mark.parametrize("flag", ["-o", "--report"])
@pytest.mark.parametrize("link", ["hard", "symlink", "dir-symlink"])
def test_outputs_onto_the_input_by_any_link_are_refused(
        tfdir: Path, flag: str, link: str, capsys: pytest.CaptureFixture[str]) -> None:
    if link == "hard":
        os.link(tfdir / "g.pb", tfdir / "alias.pb")
        target = tfdir / "alias.pb"
    elif link == "symlink":
        (tfdir / "alias.pb").symlink_to("g.pb")
        target = tfdir / "alias.pb"
    else:
        (tfdir / "via").symlink_to(tfdir, target_is_directory=True)
        target = tfdir / "via" / "g.pb"
    before = snapshot(tfdir)
    code, err = cli(capsys, tfdir / "g.pb", "--spec", tfdir / "s.yaml", flag, target)
    role = "the output graph" if flag == "-o" else "the report"
    one_line_error(code, err, f"{role} would overwrite the input graph")
    assert snapshot(tfdir) == before


def test_a_hard_link_of_the_spec_is_the_spec(tfdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.link(tfdir / "s.yaml", tfdir / "r.json")
    code, err = cli(capsys, tfdir / "g.pb", "--spec", tfdir / "s.yaml", "--report", tfdir / "r.json", "--dry-run")
    one_line_error(code, err, "the report would overwrite the spec")


def test_the_report_and_the_output_spelled_apart_are_one_file(tfdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = cli(capsys, tfdir / "g.pb", "--spec", tfdir / "s.yaml", "-o", tfdir / "o.pb",
                    "--report", tfdir / "." / "sub" / ".." / "o.pb")
    one_line_error(code, err, "the report would overwrite the output graph")
    assert sorted(p.name for p in tfdir.iterdir()) == ["g.pb", "s.yaml"]


@pytest.mark.parametrize("args", [
    ("-o", "{d}/data.bin"),
    ("--report", "{d}/data.bin", "--dry-run"),
    ("--report", "{d}/data.bin", "--check"),
    ("-o", "{d}/x.onnx", "--report", "{d}/data.bin"),
], ids=["out", "report-dry-run", "report-check", "report-beside-out"])
def test_outputs_onto_the_models_external_data_are_refused(
        tmp_path: Path, args: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    src = onnx_step(tmp_path / "in")
    before = snapshot(tmp_path)
    code, err = cli(capsys, src, "--spec", src.parent / "s.yaml", *(a.format(d=src.parent) for a in args))
    one_line_error(code, err, "would overwrite the external data 'data.bin' of the input graph")
    assert snapshot(tmp_path) == before


def test_an_output_named_like_the_data_it_needs_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = onnx_step(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(tmp_path)
    code, err = cli(capsys, src, "--spec", src.parent / "s.yaml", "-o", out / "data.bin")
    one_line_error(code, err, "out/data.bin: the copy of the external data 'data.bin' would overwrite the output graph")
    assert snapshot(tmp_path) == before
    code, err = cli(capsys, src, "--spec", src.parent / "s.yaml", "-o", out / "m.onnx", "--report", out / "data.bin")
    one_line_error(code, err, "the copy of the external data 'data.bin' would overwrite the report")
    assert snapshot(tmp_path) == before


def test_a_drawing_onto_the_models_external_data_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = onnx_step(tmp_path / "in")
    before = snapshot(tmp_path)
    code, err = cli(capsys, "explain", src, "--spec", src.parent / "s.yaml", "--dot", src.parent / "data.bin")
    one_line_error(code, err, "the drawing would overwrite the external data 'data.bin' of the input graph")
    assert snapshot(tmp_path) == before


def test_a_clashing_data_file_in_the_output_directory_copies_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = onnx_step(tmp_path / "in", locations=("a.bin", "b.bin"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.bin").write_bytes(b"someone else's weights")
    before = snapshot(tmp_path)
    code, err = cli(capsys, src, "--spec", src.parent / "s.yaml", "-o", out / "m.onnx")
    one_line_error(code, err, "b.bin: a different file of that name is in the output directory")
    assert snapshot(tmp_path) == before, "a.bin was copied before b.bin was refused"


def test_data_copies_keep_their_mode_are_no_links_and_subfolders_are_made(tmp_path: Path) -> None:
    src = onnx_step(tmp_path / "in", locations=("a.bin", "sub/b.bin"))
    os.chmod(src.parent / "sub" / "b.bin", 0o640)
    out = tmp_path / "out"
    out.mkdir()
    old = os.umask(0o077)
    try:
        assert main([str(src), "--spec", str(src.parent / "s.yaml"), "-o", str(out / "m.onnx"), "-q"]) == 0
    finally:
        os.umask(old)
    for name, mode in (("a.bin", 0o644), ("sub/b.bin", 0o640)):
        copy, orig = out / name, src.parent / name
        assert stat.S_IMODE(copy.stat().st_mode) == mode
        assert copy.stat().st_nlink == 1 and not os.path.samefile(copy, orig)
        assert copy.read_bytes() == orig.read_bytes()
    onnx.checker.check_model(str(out / "m.onnx"))


# ----------------------------------------------------------------------------- all or nothing


def test_a_full_disk_while_copying_data_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    src = onnx_step(tmp_path / "in", locations=("a.bin", "sub/b.bin"))
    out = tmp_path / "out"
    out.mkdir()
    copies = []

    def full(src_fd: int, dst_fd: int) -> None:
        copies.append(dst_fd)
        if len(copies) == 2:  # the first file is in place, the second half written
            os.write(dst_fd, b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_copy(src_fd, dst_fd)

    real_copy = writeplan._copy_bytes
    monkeypatch.setattr(writeplan, "_copy_bytes", full)
    before = snapshot(tmp_path)
    code, err = cli(capsys, src, "--spec", src.parent / "s.yaml", "-o", out / "m.onnx", "--report", out / "r.json")
    one_line_error(code, err, "cannot write: No space left on device")
    assert len(copies) == 2
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("which", ["output", "report"])
def test_a_full_disk_while_writing_leaves_the_old_files(
        tfdir: Path, which: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tfdir / "o.pb").write_bytes(b"old output")
    (tfdir / "r.json").write_bytes(b"old report")
    real = writeplan._write_chunk

    def full(fd: int, data: memoryview) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(f".{'o.pb' if which == 'output' else 'r.json'}."):
            real(fd, data[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell the files apart")
    monkeypatch.setattr(writeplan, "_write_chunk", full)
    before = snapshot(tfdir)
    code, err = cli(capsys, tfdir / "g.pb", "--spec", tfdir / "s.yaml", "-o", tfdir / "o.pb", "--report", tfdir / "r.json")
    one_line_error(code, err, f"{'o.pb' if which == 'output' else 'r.json'}: cannot write: No space left on device")
    assert snapshot(tfdir) == before


def test_a_failing_verify_leaves_nothing_not_even_copied_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    src = onnx_step(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    seen = []

    def failing(src: Path, out: Path, report: object, progress: object = None,  # type: ignore[no-untyped-def]
                timeout_s: object = None):
        def run(tmp: Path) -> None:
            seen.append(sorted(p.name for p in tmp.parent.iterdir()))
            raise AssertionError("the rewritten graph fails to run")
        return run

    monkeypatch.setattr(api, "_runtime_check", failing)
    before = snapshot(tmp_path)
    code, err = cli(capsys, src, "--spec", src.parent / "s.yaml", "-o", out / "m.onnx", "--report", out / "r.json",
                    "--verify")
    assert code == 3 and "fails to run" in err
    assert "data.bin" in seen[0], "verify runs with the data beside the model"
    assert snapshot(tmp_path) == before


def test_a_rename_failing_at_the_end_puts_back_what_the_earlier_ones_replaced(
        tfdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tfdir / "o.pb").write_bytes(b"old output")
    real = os.replace

    def failing(a: str | Path, b: str | Path) -> None:
        if Path(b).name == "r.json":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(a, b)

    monkeypatch.setattr(os, "replace", failing)
    before = snapshot(tfdir)
    code, err = cli(capsys, tfdir / "g.pb", "--spec", tfdir / "s.yaml", "-o", tfdir / "o.pb", "--report", tfdir / "r.json")
    one_line_error(code, err, "r.json: cannot write: Input/output error")
    assert snapshot(tfdir) == before


def test_a_real_full_disk_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 1 MiB tmpfs as the output directory, 4 MiB of external data to copy (needs root)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        src = onnx_step(tmp_path / "in", size=1 << 19, locations=("a.bin", "b.bin"))
        code, err = cli(capsys, src, "--spec", src.parent / "s.yaml", "-o", mnt / "m.onnx")
        one_line_error(code, err, "No space left on device")
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ----------------------------------------------------------------------------- signals and stale temporaries

SLOW_CHILD = textwrap.dedent("""
    import signal, sys, time
    from optrewrite import writeplan
    from optrewrite.cli import main

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    commit = writeplan.WritePlan.commit

    def slow(self):
        print("staged", flush=True)
        time.sleep(60)
        commit(self)

    writeplan.WritePlan.commit = slow
    sys.exit(main(sys.argv[1:]))
""")


def _slow_run(tmp_path: Path) -> tuple[subprocess.Popen[str], Path, Path]:
    src = onnx_step(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_CHILD, str(src), "--spec", str(src.parent / "s.yaml"), "-o", str(out / "m.onnx"),
         "--report", str(out / "r.json"), "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "staged\n", proc.communicate(timeout=30)
    return proc, src, out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_while_writing_removes_everything_the_run_wrote(tmp_path: Path, sig: signal.Signals) -> None:
    proc, src, out = _slow_run(tmp_path)
    staged = sorted(p.name for p in out.iterdir())
    assert "data.bin" in staged and any(".optrewrite-" in n for n in staged), staged  # the test sees a real state
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, err
    assert err == f"optrewrite: interrupted by {sig.name}\n"
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in src.parent.iterdir()) == ["data.bin", "s.yaml", "step.onnx"]


def test_a_killed_runs_temporaries_are_removed_by_the_next_run(tmp_path: Path) -> None:
    proc, src, out = _slow_run(tmp_path)
    proc.kill()
    proc.communicate(timeout=30)
    left = sorted(p.name for p in out.iterdir())
    temps = [n for n in left if n.startswith(".")]
    pattern = rf"\.(m\.onnx|r\.json)\.optrewrite-{proc.pid}-[0-9a-f]{{8}}\.tmp"
    assert len(temps) == 2 and all(re.fullmatch(pattern, n) for n in temps), left
    assert main([str(src), "--spec", str(src.parent / "s.yaml"), "-o", str(out / "m.onnx"),
                 "--report", str(out / "r.json"), "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["data.bin", "m.onnx", "r.json"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_removed_only_when_their_process_is_gone_or_they_are_old(tmp_path: Path) -> None:
    target = tmp_path / "out.pb"
    dead, alive = _dead_pid(), os.getppid()
    names = {
        "dead": f".out.pb.optrewrite-{dead}-0123abcd.tmp",
        "alive": f".out.pb.optrewrite-{alive}-0123abcd.tmp",
        "alive-old": f".out.pb.optrewrite-{alive}-4567abcd.tmp",
        "other-target": f".other.pb.optrewrite-{dead}-0123abcd.tmp",
        "not-ours": f".out.pb.{dead}.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / f".out.pb.optrewrite-{dead}-89abcdef.tmp").symlink_to(tmp_path / names["other-target"])
    old = time.time() - writeplan.STALE_AFTER_S - 60
    os.utime(tmp_path / names["alive-old"], (old, old))
    removed = {p.name for p in remove_stale(target)}
    assert removed == {names["dead"], names["alive-old"]}
    assert (tmp_path / names["alive"]).exists() and (tmp_path / names["other-target"]).exists()


def test_temporary_names_are_recognisable_and_fit_long_names(tmp_path: Path) -> None:
    tmp = temp_name(tmp_path / "model.onnx")
    assert tmp.parent == tmp_path
    assert re.fullmatch(rf"\.model\.onnx\.optrewrite-{os.getpid()}-[0-9a-f]{{8}}\.tmp", tmp.name)
    long = tmp_path / ("é" * 118 + ".pb")  # 239 bytes of the 255 a name may have: the temporary one must fit too
    with WritePlan() as plan:
        plan.write(long, "the output graph")
        plan.stage(long, b"data")
        plan.commit()
    assert long.read_bytes() == b"data"
    assert [p.name for p in tmp_path.iterdir()] == [long.name]


def test_the_plan_removes_what_it_wrote_on_any_exception(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), WritePlan() as plan:
        plan.write(tmp_path / "a" / "b" / "x.bin", "the copy", make_dirs=True)
        plan.write(tmp_path / "y.json", "the report")
        plan.publish(plan.stage(tmp_path / "a" / "b" / "x.bin", b"1"))
        plan.stage(tmp_path / "y.json", b"2")
        assert (tmp_path / "a" / "b" / "x.bin").exists()
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- closed pipes


def _closed_pipe_run(*args: object, stream: str = "stdout") -> subprocess.CompletedProcess[str]:
    """Run the CLI with ``stream`` a pipe whose reader is already gone."""
    r, w = os.pipe()
    os.close(r)
    try:
        kwargs = {"stdout": w, "stderr": subprocess.PIPE} if stream == "stdout" else {"stdout": subprocess.PIPE, "stderr": w}
        proc = subprocess.run([sys.executable, "-m", "optrewrite", *map(str, args)], text=True, timeout=120, **kwargs)
    finally:
        os.close(w)
    return proc


@pytest.mark.parametrize("args", [
    ("diff", DENSE / "input.pb", DENSE / "expected.pbtxt"),
    ("explain", DENSE / "input.pb", "--spec", DENSE / "spec.yaml"),
    ("explain", DENSE / "input.pb", "--json"),
    ("schema", "report"),
    ("--help",),
], ids=["diff", "explain", "explain-json", "schema", "help"])
def test_a_closed_stdout_ends_the_run_quietly_with_141(args: tuple[object, ...]) -> None:
    proc = _closed_pipe_run(*args)
    assert proc.returncode == (0 if args == ("--help",) else 141), proc.stderr  # argparse ignores it for --help
    assert proc.stderr == ""


def test_a_closed_stderr_after_writing_is_141_and_the_output_stays(tfdir: Path) -> None:
    proc = _closed_pipe_run(tfdir / "g.pb", "--spec", tfdir / "s.yaml", "-o", tfdir / "o.pb", stream="stderr")
    assert proc.returncode == 141
    assert (tfdir / "o.pb").is_file()
    assert sorted(p.name for p in tfdir.iterdir()) == ["g.pb", "o.pb", "s.yaml"]


# ----------------------------------------------------------------------------- bounded inputs


@pytest.mark.parametrize("role", ["input", "spec", "explain-spec", "validate", "diff"])
@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "directory"])
def test_inputs_that_are_no_regular_files_are_refused_before_reading(
        tfdir: Path, role: str, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    if kind == "dev-zero":
        bad = Path("/dev/zero")
        if not bad.exists():
            pytest.skip("no /dev/zero")
    elif kind == "fifo":
        bad = tfdir / "fifo"
        os.mkfifo(bad)
    else:
        bad = tfdir / "adir"
        bad.mkdir()
    g, s = tfdir / "g.pb", tfdir / "s.yaml"
    argv = {"input": [bad, "--spec", s, "-o", tfdir / "o.pb"], "spec": [g, "--spec", bad, "-o", tfdir / "o.pb"],
            "explain-spec": ["explain", g, "--spec", bad], "validate": ["schema", "--validate", bad],
            "diff": ["diff", g, bad]}[role]
    code, err = cli(capsys, *argv)
    what = {"dev-zero": "a character device", "fifo": "a FIFO", "directory": "a directory"}[kind]
    one_line_error(code, err, str(bad), what)
    assert not (tfdir / "o.pb").exists()


def test_a_graph_over_2_gib_and_a_spec_over_1_mib_are_refused_unread(
        tfdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    huge = tfdir / "huge.pb"
    with open(huge, "wb") as f:
        f.truncate(2**31)  # sparse: no disk used
    code, err = cli(capsys, huge, "--spec", tfdir / "s.yaml")
    one_line_error(code, err, "huge.pb: the file is 2.0 GiB; a graph file may hold at most 2 GiB")
    big_spec = tfdir / "big.yaml"
    big_spec.write_text(GUARD + "#" * (1 << 20) + "\n")
    for argv in ([tfdir / "g.pb", "--spec", big_spec], ["explain", tfdir / "g.pb", "--spec", big_spec],
                 ["schema", "--validate", big_spec]):
        code, err = cli(capsys, *argv)
        one_line_error(code, err, "big.yaml: the file is 1.0 MiB; a spec file may hold at most 1 MiB")
    assert sorted(p.name for p in tfdir.iterdir()) == ["big.yaml", "g.pb", "huge.pb", "s.yaml"]


def _with_location(src: Path, location: str) -> Path:
    model = onnx.load(str(src), load_external_data=False)
    for entry in model.graph.initializer[1].external_data:
        if entry.key == "location":
            entry.value = location
    bad = src.with_name("bad.onnx")
    bad.write_bytes(model.SerializeToString())
    return bad


@pytest.mark.parametrize("location, why", [
    ("da\0ta.bin", "holds a NUL byte"),
    ("", "is empty"),
    ("x" * 300, "is too long"),
], ids=["nul", "empty", "long"])
@pytest.mark.parametrize("where", ["other-dir", "same-dir", "dry-run"])
def test_impossible_external_data_locations_are_input_errors_naming_the_tensor(
        tmp_path: Path, location: str, why: str, where: str, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _with_location(onnx_step(tmp_path / "in"), location)
    out = tmp_path / "out"
    out.mkdir()
    extra = {"other-dir": ["-o", out / "m.onnx"], "same-dir": ["-o", bad.parent / "m.onnx"], "dry-run": ["--dry-run"]}[where]
    before = snapshot(tmp_path)
    code, err = cli(capsys, bad, "--spec", bad.parent / "s.yaml", *extra)
    one_line_error(code, err, "tensor 'V'", why)
    assert snapshot(tmp_path) == before


def test_external_data_inside_a_local_function_is_an_input_error(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = onnx_step(tmp_path / "in")
    model = onnx.load(str(src), load_external_data=False)
    (src.parent / "c.bin").write_bytes(np.float32(1).tobytes())
    const = helper.make_tensor("c", TensorProto.FLOAT, [1], [1.0])
    del const.float_data[:]
    const.external_data.add(key="location", value="c.bin")
    const.data_location = TensorProto.EXTERNAL
    fn = helper.make_function("local", "f", [], ["y"], [helper.make_node("Constant", [], ["y"], value=const)],
                              [helper.make_opsetid("", 17)])
    model.functions.append(fn)
    model.opset_import.append(helper.make_opsetid("local", 1))
    bad = src.with_name("fn.onnx")
    bad.write_bytes(model.SerializeToString())
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(tmp_path)
    for extra in (["-o", out / "m.onnx"], ["-o", bad.parent / "m.onnx"], ["--check"]):
        code, err = cli(capsys, bad, "--spec", bad.parent / "s.yaml", *extra)
        one_line_error(code, err, "tensor 'c' of local function 'f'", "external data inside a local function")
    assert snapshot(tmp_path) == before


def test_an_output_name_too_long_is_an_input_error(tfdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = cli(capsys, tfdir / "g.pb", "--spec", tfdir / "s.yaml", "-o", tfdir / ("x" * 300 + ".pb"))
    one_line_error(code, err, "cannot write: File name too long")


def test_plan_errors_name_both_roles_in_the_library(tmp_path: Path) -> None:
    plan = WritePlan()
    plan.read(tmp_path / "in.pb", "the input graph")
    with pytest.raises(InputError, match=r"in.pb: the report would overwrite the input graph"):
        plan.write(tmp_path / "in.pb", "the report")
    plan.write(tmp_path / "o.pb", "the output graph")
    with pytest.raises(InputError, match=r"o.pb: the output graph would overwrite the spec"):
        plan.read(tmp_path / "o.pb", "the spec")


# ----------------------------------------------------------------------------- drawings


@pytest.fixture
def fake_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A graphviz ``dot`` on PATH that writes a tiny SVG (or fails when FAIL_DOT is set)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    dot = bindir / "dot"
    dot.write_text('#!/bin/sh\ncat >/dev/null\nif [ -n "$FAIL_DOT" ]; then echo "syntax error" >&2; exit 1; fi\n'
                   'echo "<svg/>"\n')
    dot.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return dot


def test_the_drawing_and_its_svg_are_written_together(tfdir: Path, fake_dot: Path) -> None:
    assert main(["explain", str(tfdir / "g.pb"), "--spec", str(tfdir / "s.yaml"), "--dot", str(tfdir / "x.dot")]) == 0
    assert (tfdir / "x.dot.svg").read_text() == "<svg/>\n"
    assert (tfdir / "x.dot").read_text().startswith("digraph")
    assert sorted(p.name for p in tfdir.iterdir()) == ["g.pb", "s.yaml", "x.dot", "x.dot.svg"]


def test_a_failing_graphviz_leaves_no_dot_file_either(tfdir: Path, fake_dot: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FAIL_DOT", "1")
    code, err = cli(capsys, "explain", tfdir / "g.pb", "--spec", tfdir / "s.yaml", "--dot", tfdir / "x.dot")
    one_line_error(code, err, "graphviz dot failed: syntax error")
    assert sorted(p.name for p in tfdir.iterdir()) == ["g.pb", "s.yaml"]


def test_the_svg_beside_the_drawing_is_checked_too(tfdir: Path, fake_dot: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.replace(tfdir / "s.yaml", tfdir / "x.dot.svg")
    before = snapshot(tfdir)
    code, err = cli(capsys, "explain", tfdir / "g.pb", "--spec", tfdir / "x.dot.svg", "--dot", tfdir / "x.dot")
    one_line_error(code, err, "x.dot.svg: the SVG drawing would overwrite the spec")
    assert snapshot(tfdir) == before
