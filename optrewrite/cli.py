"""Command line: ``optrewrite INPUT --spec SPEC [-o OUTPUT] [--lower] [--report FILE.json]``.

Exit codes: 0 success; 2 an input, spec or usage error (one line on stderr, nothing
written); 3 an internal failure.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from optrewrite import __version__
from optrewrite.errors import EXIT_INPUT, EXIT_INTERNAL, EXIT_OK, InputError, OptrewriteError

log = logging.getLogger("optrewrite")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"usage: {message} (see optrewrite --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="optrewrite",
        description="Insert all-zero-gradient guards and post-update clip-by-norm into an "
        "exported training graph (TensorFlow GraphDef .pb/.pbtxt or MetaGraphDef .meta, or an "
        "ONNX training step .onnx).",
    )
    p.add_argument("input", type=Path, help="the training graph to rewrite (never modified)")
    p.add_argument("--spec", type=Path, required=True, help="the YAML rewrite spec")
    p.add_argument("-o", "--output", type=Path, help="output path (default: <stem>.rewritten<ext>)")
    p.add_argument("--lower", action="store_true",
                   help="ONNX: replace ai.onnx.preview.training ops by standard ops (as 'lower: true' does)")
    p.add_argument("--report", type=Path, help="also write the report as JSON to this file")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")
    p.add_argument("--version", action="version", version=f"optrewrite {__version__}")
    return p


def run(argv: Sequence[str]) -> int:
    from optrewrite.api import rewrite_file  # noqa: PLC0415  (keeps --help fast)

    args = _parser().parse_args(argv)
    report = rewrite_file(args.input, args.spec, output=args.output, report_path=args.report, lower=args.lower)
    if not args.quiet:
        print(report.summary(), file=sys.stderr)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(argv)
    except OptrewriteError as exc:
        print(f"optrewrite: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print("optrewrite: interrupted", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, exit 3
        log.debug("internal failure", exc_info=True)
        print(f"optrewrite: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


assert EXIT_INPUT == InputError.exit_code
