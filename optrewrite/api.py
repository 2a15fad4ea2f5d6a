"""The library entry point behind the CLI."""
from __future__ import annotations

from pathlib import Path

from optrewrite.errors import InputError
from optrewrite.fileio import check_distinct, default_output, write_atomic
from optrewrite.report import Report
from optrewrite.spec import Spec, load_spec


def read_input(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a graph file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def rewrite_bytes(path: Path, raw: bytes, spec: Spec) -> tuple[bytes, Report]:
    """Rewrite the graph held in ``raw`` (read from ``path``, whose name picks the format)."""
    if path.suffix.lower() == ".onnx":
        raise InputError(f"{path}: ONNX models are not supported by this version of optrewrite")
    from optrewrite.tf import io  # noqa: PLC0415
    from optrewrite.tf.rewrite import rewrite_tf  # noqa: PLC0415

    loaded = io.load(path, raw)
    outcome = rewrite_tf(loaded, spec)
    return outcome.data, outcome.report


def rewrite_file(
    input_path: Path | str,
    spec_path: Path | str,
    *,
    output: Path | str | None = None,
    report_path: Path | str | None = None,
) -> Report:
    """Rewrite ``input_path`` by the spec at ``spec_path``; write the output atomically.

    Nothing is written unless the whole rewrite succeeds; the input is never modified.
    """
    src = Path(input_path)
    out = Path(output) if output is not None else default_output(src)
    check_distinct(src, out)
    if report_path is not None:
        check_distinct(src, Path(report_path))
        if Path(report_path).resolve() == out.resolve():
            raise InputError(f"{report_path}: the report would overwrite the output")
    spec = load_spec(spec_path)
    raw = read_input(src)
    data, report = rewrite_bytes(src, raw, spec)
    report.output = str(out)
    write_atomic(out, data)
    if report_path is not None:
        write_atomic(Path(report_path), report.to_json().encode())
    return report
