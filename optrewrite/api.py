"""The library entry point behind the CLI: format-blind, through :mod:`optrewrite.formats`."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from optrewrite.errors import InputError, shorten
from optrewrite.fileio import check_distinct, check_writable
from optrewrite.formats import check_output, format_for, output_for, read_graph
from optrewrite.report import Report
from optrewrite.spec import Spec, load_spec


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
) -> Report:
    """Rewrite ``input_path`` by the spec at ``spec_path``; write the output atomically.

    Nothing is written unless the whole rewrite succeeds; the input is never modified.
    ``lower`` replaces ONNX preview-training ops by standard ops (as ``lower: true`` does).
    An ONNX output is checked with the onnx checker before it replaces anything; external
    data files it references are placed beside it when it goes to another directory.

    ``mode`` "dry-run" and "check" rewrite in memory and write nothing but the report (the
    rewritten graph is never serialized); ``report.changed`` then says whether writing would
    change the graph. ``verify`` loads the written graph in its runtime (TensorFlow,
    onnxruntime) and runs one step on generated data before it replaces anything (see
    :mod:`optrewrite.verify`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    src = Path(input_path)
    writes = mode == "write"
    out = (Path(output) if output is not None else output_for(src)) if writes else None
    for target in (t for t in (out, Path(report_path) if report_path is not None else None) if t is not None):
        check_distinct(src, target)
        check_distinct(Path(spec_path), target, what="the spec")
        check_output(src, target) if target is out else check_writable(target)
    if report_path is not None and out is not None and Path(report_path).resolve() == out.resolve():
        raise InputError(f"{report_path}: the report would overwrite the output")
    if verify and not writes:
        raise InputError(f"--verify runs the written graph; it cannot be combined with {mode}")
    spec = load_spec(spec_path)
    raw = read_graph(src)
    fmt = format_for(src)
    outcome = fmt.rewrite(src, raw, spec, lower=lower)
    report = outcome.report
    if out is not None:
        report.output = str(out)
        fmt.save(outcome, out, check=_runtime_check(src, out, report) if verify else None)
    report.mode = mode
    if report_path is not None:
        from optrewrite.fileio import write_atomic  # noqa: PLC0415

        write_atomic(Path(report_path), report.to_json().encode())
    return report


def _runtime_check(src: Path, out: Path, report: Report) -> Callable[[Path], None]:
    """Run one step of the temporary output; blame the input when it fails there too."""

    def run(tmp: Path) -> None:
        from optrewrite.verify import TooLargeToVerify, VerificationFailed, verify_file  # noqa: PLC0415

        try:
            report.verified = verify_file(tmp, like=out)
        except TooLargeToVerify as exc:
            raise InputError(_line(f"{src}: --verify cannot run this graph (rewrite without --verify): ", str(exc))) from None
        except VerificationFailed as exc:
            try:
                verify_file(src)
            except VerificationFailed as bad_input:
                raise InputError(_line(f"{src}: the input graph does not run either: ", str(bad_input))) from None
            raise AssertionError(_line("the rewritten graph fails to run though its input runs: ", str(exc))) from None

    return run


def _line(prefix: str, detail: str, limit: int = 280) -> str:
    """``prefix`` + ``detail``, the detail cut so that the line stays short."""
    return prefix + shorten(detail, max(80, limit - len(prefix)))
