"""The library entry point behind the CLI: format-blind, through :mod:`optrewrite.formats`."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from optrewrite.errors import InputError, shorten_middle
from optrewrite.fileio import read_spec
from optrewrite.formats import check_output, format_for, output_for, read_graph
from optrewrite.report import Report
from optrewrite.spec import Spec, load_spec
from optrewrite.writeplan import WritePlan, graph_reads


def rewrite_bytes(path: Path, raw: bytes, spec: Spec, *, lower: bool = False) -> tuple[bytes, Report]:
    """Rewrite the graph held in ``raw`` (read from ``path``, whose name picks the format).

    An ONNX model whose weights live in external files is rewritten with its data references
    as they are, relative to ``path``'s directory (see :func:`rewrite_file` for placing them).
    """
    fmt = format_for(path)
    outcome = fmt.rewrite(path, raw, spec, lower=lower)
    return fmt.serialize(outcome), outcome.report


MODES = ("write", "dry-run", "check")


def rewrite_file(
    input_path: Path | str,
    spec_path: Path | str,
    *,
    output: Path | str | None = None,
    report_path: Path | str | None = None,
    lower: bool = False,
    mode: str = "write",
    verify: bool = False,
    progress: Callable[[str], None] | None = None,
    trust_seal: bool = True,
    verify_timeout_s: float | None = None,
) -> Report:
    """Rewrite ``input_path`` by the spec at ``spec_path``; write the output atomically.

    Nothing is written unless the whole rewrite succeeds; the input is never modified.
    ``lower`` replaces ONNX preview-training ops by standard ops (as ``lower: true`` does).
    An ONNX output is checked with the onnx checker before it replaces anything; external
    data files it references are placed beside it when it goes to another directory.

    One :class:`~optrewrite.writeplan.WritePlan` holds every file the run reads (the input,
    its external data, the spec) and writes (the output, the data copied beside it, the
    report): a write onto a read, or two writes onto one file, is an InputError before
    anything is written, and the files are written all or nothing (temporary names beside
    each target, renamed at the end; removed on any failure, an interrupt included).

    ``mode`` "dry-run" and "check" rewrite in memory and write nothing but the report (the
    rewritten graph is never serialized); ``report.changed`` then says whether writing would
    change the graph; a "check" that writes no report (and ``trust_seal``) first asks the
    format whether the graph carries its seal for this spec
    (:meth:`~optrewrite.formats.Format.sealed`), and then searches nothing: the report says
    ``sealed`` and lists no sites. ``verify`` loads the written graph in its runtime (TensorFlow,
    onnxruntime) and runs one step on generated data before it replaces anything (see
    :mod:`optrewrite.verify`), stopped after ``verify_timeout_s`` (default
    :func:`optrewrite.verify.default_timeout`: 120 s plus 10 s per MB of the graph). ``progress``, when given, is told each long stage as a line
    (the command line prints them when stderr is a terminal).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    src, spec_file = Path(input_path), Path(spec_path)
    writes = mode == "write"
    out = (Path(output) if output is not None else output_for(src)) if writes else None
    report_file = Path(report_path) if report_path is not None else None
    if verify and not writes:
        raise InputError(f"--verify runs the written graph; it cannot be combined with {mode}")
    with WritePlan() as plan:
        plan.read(src, "the input graph")
        plan.read(spec_file, "the spec")
        if out is not None:
            check_output(src, out)
            plan.write(out, "the output graph", check=False)
        if report_file is not None:
            plan.write(report_file, "the report")
        spec = load_spec(spec_file, read=read_spec)
        raw = read_graph(src)
        fmt = format_for(src)
        if mode == "check" and report_file is None and trust_seal:
            fmt.check_request(src, spec, lower=lower)
            format_name = fmt.sealed(src, raw, spec, lower=lower)
            if format_name is not None:
                return Report(input=str(src), format=format_name, mode=mode, sealed=True,
                              note="already rewritten with this spec: nothing to do")
        outcome = fmt.rewrite(src, raw, spec, lower=lower)
        for path, role in graph_reads(src, raw, outcome):
            plan.read(path, role)
        report = outcome.report
        report.mode = mode
        if out is not None:
            report.output = str(out)
            check = _runtime_check(src, out, report, progress, verify_timeout_s) if verify else None
            fmt.save(outcome, out, check=check, plan=plan)
        if report_file is not None:
            plan.stage(report_file, report.to_json().encode())
        plan.commit()
    return report


def _runtime_check(src: Path, out: Path, report: Report, progress: Callable[[str], None] | None = None,
                   timeout_s: float | None = None) -> Callable[[Path], None]:
    """Run one step of the temporary output; blame the input when it fails there too."""

    def run(tmp: Path) -> None:
        from optrewrite.verify import TooLargeToVerify, VerificationFailed, verify_file  # noqa: PLC0415

        if progress is not None:
            progress(f"{out}: verifying: one step of the rewritten graph in its runtime, in a child process")
        try:
            report.verified = verify_file(tmp, like=out, timeout_s=timeout_s)
        except TooLargeToVerify as exc:
            raise InputError(_line(f"{src}: --verify cannot run this graph (rewrite without --verify): ", str(exc))) from None
        except VerificationFailed as exc:
            try:
                verify_file(src, timeout_s=timeout_s)
            except VerificationFailed as bad_input:
                raise InputError(_line(f"{src}: the input graph does not run either: ", str(bad_input))) from None
            raise AssertionError(_line("the rewritten graph fails to run though its input runs: ", str(exc))) from None

    return run


def _line(prefix: str, detail: str, limit: int = 280) -> str:
    """``prefix`` + ``detail``, the detail cut in its middle so that the line stays short."""
    return prefix + shorten_middle(detail, max(80, limit - len(prefix)))
