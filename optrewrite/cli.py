"""Command line.

    optrewrite INPUT... --spec SPEC [-o OUTPUT] [--lower] [--report FILE.json]
                        [--check | --dry-run] [--verify] [-q] [-j N]
    optrewrite --manifest FILE [--spec SPEC] [--report FILE.json] [-j N] ...
    optrewrite explain INPUT [--spec SPEC] [--lower] [--dot FILE] [--json]
    optrewrite diff A B [-q]
    optrewrite schema [spec|report] | schema --validate SPEC...

Exit codes: 0 success (the graphs are equal, for ``diff``; nothing to change, for
``--check``); 1 a difference (``diff``: the graphs differ; ``--check``: rewriting would
change the graph); 2 an input, spec or usage error (one line on stderr per failed input,
nothing written); 3 an internal failure; 141 stdout or stderr closed early (``| head``);
128 + N interrupted by signal N (SIGINT 130, SIGHUP 129, SIGTERM 143), nothing written.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import select
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from optrewrite import __version__
from optrewrite.errors import EXIT_DIFFERENT, EXIT_INPUT, EXIT_INTERNAL, EXIT_OK, InputError, OptrewriteError, printable

if TYPE_CHECKING:
    from optrewrite.manifest import Job

log = logging.getLogger("optrewrite")

EXIT_BROKEN_PIPE = 128 + 13  # 141: as a program killed by SIGPIPE (what `| head` expects)

EXIT_CODES = """exit codes:
  0  done (diff: the graphs are equal; --check: the graph is already rewritten)
  1  a difference (diff: the graphs differ; --check: rewriting would change the graph)
  2  bad input, spec or usage: one line on stderr, nothing written
  3  internal failure
  141  stdout closed early (| head)
  128+N  interrupted by signal N (SIGINT 130, SIGTERM 143): what the run was writing is removed"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"usage: {message} (see {self.prog} --help)")


def _rewrite_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="optrewrite",
        description="Insert all-zero-gradient guards and post-update clip-by-norm into an "
        "exported training graph (TensorFlow GraphDef .pb/.pbtxt or MetaGraphDef .meta, or an "
        "ONNX training step .onnx).",
        epilog="other commands: optrewrite explain|diff|schema --help\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, nargs="*",
                   help="the training graph(s) to rewrite (never modified); several only without -o (see -j)")
    p.add_argument("--spec", type=Path, help="the YAML rewrite spec (with --manifest: for jobs that name none)")
    p.add_argument("--manifest", type=Path, metavar="FILE",
                   help="a YAML list of jobs (input, spec, output, lower) to run instead of INPUT...")
    p.add_argument("-o", "--output", type=Path, help="output path (default: <stem>.rewritten<ext>)")
    p.add_argument("--lower", action="store_true",
                   help="ONNX: replace ai.onnx.preview.training ops by standard ops (as 'lower: true' does)")
    p.add_argument("--report", type=Path, help="also write the report as JSON to this file (schema: optrewrite "
                   "schema report); for several inputs, one file with every report")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 when rewriting would change the graph (is it already rewritten?)")
    mode.add_argument("--dry-run", action="store_true", help="write nothing but the report")
    p.add_argument("--verify", action="store_true",
                   help="before replacing the output, load it in TensorFlow or onnxruntime and run one step "
                   "on generated data")
    p.add_argument("--verify-timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="with --verify: stop the step after this many seconds, loading the graph included "
                   "(default 120, plus 10 per MB of the graph)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no summary on stderr (--check still names each graph that would change)")
    p.add_argument("-j", "--jobs", type=_jobs, default=1, metavar="N",
                   help="rewrite several inputs in N worker processes (default 1); summaries keep the inputs' order")
    p.add_argument("--version", action="version", version=f"optrewrite {__version__}")
    return p


def _rewrite(argv: Sequence[str]) -> int:
    args = _rewrite_parser().parse_intermixed_args(argv)
    from optrewrite.api import rewrite_file  # noqa: PLC0415  (after parsing: keeps --help fast)

    mode = "check" if args.check else "dry-run" if args.dry_run else "write"
    if args.manifest is not None:
        if args.input or args.output:
            raise InputError("usage: --manifest lists the inputs and outputs; give no INPUT and no -o")
        from optrewrite.manifest import load_manifest  # noqa: PLC0415

        jobs = load_manifest(args.manifest, spec=args.spec, lower=args.lower)
    else:
        if not args.input or args.spec is None:
            raise InputError("usage: optrewrite INPUT... --spec SPEC, or optrewrite --manifest FILE")
        if len(args.input) > 1 and args.output:
            raise InputError("usage: -o takes one input; give one input per run, or a --manifest")
        from optrewrite.manifest import Job  # noqa: PLC0415

        jobs = [Job(input=src, spec=args.spec, output=args.output, lower=args.lower) for src in args.input]
    if len(jobs) == 1 and args.manifest is None:
        report = rewrite_file(jobs[0].input, jobs[0].spec, output=jobs[0].output, report_path=args.report,
                              lower=jobs[0].lower, mode=mode, verify=args.verify, progress=_progress(args),
                              verify_timeout_s=args.verify_timeout)
        return _show(_Done.of(jobs[0].input, report, mode, keep_report=False), args)
    from optrewrite.manifest import check_jobs  # noqa: PLC0415

    check_jobs(jobs, writes=mode == "write", manifest=args.manifest, report=args.report)
    done = _run_jobs(jobs, min(args.jobs, len(jobs)), mode, args)
    worst = max((d.exit_code for d in done), default=EXIT_OK)
    if args.report is not None:
        from optrewrite.writeplan import WritePlan  # noqa: PLC0415

        with WritePlan() as plan:
            plan.write(args.report, "the report")
            plan.stage(args.report, _combined_report(done, worst).encode())
            plan.commit()
    return worst


def _run_jobs(jobs: Sequence[Job], workers: int, mode: str, args: argparse.Namespace) -> list[_Done]:
    """Each job's outcome, in the jobs' order, its summary printed as it comes in order."""
    done: list[_Done] = []
    progress = _progress(args)
    if progress is not None:
        progress(f"{len(jobs)} jobs in {workers} worker{'s' if workers > 1 else ''}")
    if workers == 1:
        for job in jobs:
            done.append(_rewrite_one(job, mode, args.verify, args.report is not None, args.verify_timeout))
            _show(done[-1], args)
        return done
    import concurrent.futures  # noqa: PLC0415
    import multiprocessing  # noqa: PLC0415

    # forked workers inherit the signal handlers: SIGTERM/SIGHUP/SIGINT clean up their writes
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    try:
        futures = [pool.submit(_rewrite_one, job, mode, args.verify, args.report is not None, args.verify_timeout)
                   for job in jobs]
        for future in futures:
            done.append(future.result())
            _show(done[-1], args)
    except BaseException:
        for process in list(getattr(pool, "_processes", {}).values()):
            with contextlib.suppress(OSError):
                process.terminate()  # SIGTERM: each worker removes what it was writing
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return done


def _progress(args: argparse.Namespace) -> Callable[[str], None] | None:
    """Long stages as lines on stderr, when it is a terminal and the run is not quiet."""
    if args.quiet or not sys.stderr.isatty():
        return None
    return lambda line: print(f"optrewrite: {printable(line)}", file=sys.stderr, flush=True)


def _combined_report(done: Sequence[_Done], worst: int) -> str:
    """Every job's report (or its error), in the jobs' order: ``optrewrite.reports/1``."""
    import json  # noqa: PLC0415

    runs = [json.loads(d.report) if d.report else {"input": str(d.src), "error": d.error, "exit_code": d.exit_code}
            for d in done]
    return json.dumps({"schema": "optrewrite.reports/1", "exit_code": worst, "runs": runs}, indent=2,
                      sort_keys=True) + "\n"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 1 <= value <= 86_400:
        raise argparse.ArgumentTypeError(f"expected a number of seconds from 1 to 86400, got {text!r}")
    return value


def _jobs(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise argparse.ArgumentTypeError(f"expected a number of workers from 1 to 256, got {text!r}")
    return int(text)


class _Done:
    """One input's outcome, as a worker process returns it: its summary, whether --check
    found a change, or the one-line error and its exit code."""

    def __init__(self, src: Path, summary: str = "", changed: bool = False, error: str = "",
                 exit_code: int = EXIT_OK, report: str = "", spec: Path | None = None) -> None:
        self.src, self.summary, self.changed, self.error, self.exit_code = src, summary, changed, error, exit_code
        self.report = report  # the report's JSON
        self.spec = spec

    @classmethod
    def of(cls, src: Path, report: object, mode: str, spec: Path | None = None, *, keep_report: bool = True) -> _Done:
        """``keep_report``: carry the report's JSON (for a combined report)."""
        changed = bool(getattr(report, "changed", False)) and mode == "check"
        return cls(src, report.summary(), changed, exit_code=EXIT_DIFFERENT if changed else EXIT_OK,  # type: ignore[attr-defined]
                   report=report.to_json() if keep_report else "", spec=spec)  # type: ignore[attr-defined]


def _rewrite_one(job: Job, mode: str, verify: bool, keep_report: bool, verify_timeout_s: float | None = None) -> _Done:
    from optrewrite.api import rewrite_file  # noqa: PLC0415

    try:
        report = rewrite_file(job.input, job.spec, output=job.output, lower=job.lower, mode=mode, verify=verify,
                              verify_timeout_s=verify_timeout_s,
                              trust_seal=not keep_report)  # a report (the combined one) lists the sites
    except InputError as exc:
        return _Done(job.input, error=str(exc), exit_code=exc.exit_code, spec=job.spec)
    finally:
        gc.collect()  # what cycles the job left (see main)
    return _Done.of(job.input, report, mode, job.spec, keep_report=keep_report)


def _show(done: _Done, args: argparse.Namespace) -> int:
    """Print one input's outcome as the sequential run does; its exit code."""
    if done.error:
        print(f"optrewrite: error: {done.error}", file=sys.stderr)
        return done.exit_code
    if done.changed and args.quiet:  # a failing check names its graph even when quiet (a pre-commit hook's line)
        print(f"optrewrite: {printable(str(done.src))}: rewriting with {printable(str(done.spec or args.spec))} "
              "would change it", file=sys.stderr)
    if not args.quiet:
        print(done.summary, file=sys.stderr)
    return done.exit_code


def _explain(argv: Sequence[str]) -> int:
    p = _Parser(prog="optrewrite explain",
                description="List every update site of a graph, which spec rule selects it, what would "
                "be inserted and what is skipped and why. Writes nothing but --dot; never imports TensorFlow.",
                epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", type=Path, help="the training graph")
    p.add_argument("--spec", type=Path, help="the YAML rewrite spec (without it: the sites only)")
    p.add_argument("--lower", action="store_true", help="ONNX: as the rewrite's --lower")
    p.add_argument("--dot", type=Path, metavar="FILE",
                   help="draw each inserted guard/clip subgraph with its neighbours as Graphviz DOT; "
                   "with graphviz's dot installed, FILE.svg is rendered too unless the drawing is very large "
                   "(a FILE ending in .svg: SVG only)")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON instead of a table")
    p.add_argument("--wide", action="store_true",
                   help="never cut the table's columns to fit $COLUMNS or the terminal")
    args = p.parse_args(argv)
    from optrewrite.explain import explain_file, render_table, write_drawing  # noqa: PLC0415

    if args.dot is not None and args.spec is None:
        raise InputError("usage: --dot draws what a spec inserts; give --spec")
    if args.spec is not None:
        _check_spec_file(args.spec)
    plan = None
    if args.dot is not None:  # refuse a drawing onto the input or the spec before the work
        import shutil  # noqa: PLC0415

        from optrewrite.writeplan import WritePlan, drawing_targets  # noqa: PLC0415

        plan = WritePlan()
        plan.read(args.input, "the input graph")
        plan.read(args.spec, "the spec")
        for target, role in drawing_targets(args.dot, dot_installed=shutil.which("dot") is not None):
            plan.write(target, role)
    explanation = explain_file(args.input, args.spec, lower=args.lower)
    print(explanation.to_json() if args.json else render_table(explanation, None if args.wide else _columns()),
          end="\n" if not args.json else "")
    if args.dot is not None:
        for written in write_drawing(explanation, args.dot, plan=plan):
            print(f"wrote {written}", file=sys.stderr)
    return EXIT_OK


def _columns() -> int | None:
    """The width a table should fit: $COLUMNS, else the terminal's when stdout is one; None
    (no limit) for a pipe or a file."""
    value = os.environ.get("COLUMNS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    if sys.stdout.isatty():
        import shutil  # noqa: PLC0415

        return shutil.get_terminal_size().columns
    return None


def _check_spec_file(path: Path) -> None:
    """Refuse a spec that is no regular file or is over the size limit before it is read (a
    missing one is left to the spec loader's message)."""
    import os  # noqa: PLC0415

    from optrewrite.fileio import MAX_SPEC_BYTES, check_input_file  # noqa: PLC0415

    if os.path.exists(path):
        check_input_file(path, limit=MAX_SPEC_BYTES, what="spec")


def _diff(argv: Sequence[str]) -> int:
    p = _Parser(prog="optrewrite diff",
                description="Compare two graphs of the same format structurally: nodes by name, attrs, inputs "
                "(control inputs as a set), functions; for ONNX also initializers by digest. Order does not matter.",
                epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path, help="the first graph (a file, or a SavedModel directory)")
    p.add_argument("b", type=Path, help="the second graph, of the same format")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing; the exit code says it")
    args = p.parse_args(argv)
    from optrewrite.diff import diff_files  # noqa: PLC0415

    result = diff_files(args.a, args.b)
    if not args.quiet:
        print(result.render(str(args.a), str(args.b)))
    return EXIT_OK if result.same else EXIT_DIFFERENT


def _schema(argv: Sequence[str]) -> int:
    p = _Parser(prog="optrewrite schema",
                description="Print a JSON Schema: the spec's (for editors validating wrap.yaml) or the "
                "JSON report's (what --report writes). With --validate, check spec files instead.",
                epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", nargs="?", choices=("spec", "report"), default="spec", metavar="spec|report",
                   help="which schema to print (default: spec)")
    p.add_argument("--validate", nargs="+", type=Path, metavar="SPEC",
                   help="load each spec file as the rewrite does (without a graph) and report the first problem of each")
    args = p.parse_args(argv)
    if args.validate:
        from optrewrite.fileio import read_spec  # noqa: PLC0415
        from optrewrite.spec import load_spec  # noqa: PLC0415

        worst = EXIT_OK
        for path in args.validate:
            try:
                load_spec(path, read=read_spec)
            except InputError as exc:
                _error(exc)
                worst = max(worst, exc.exit_code)
            else:
                print(f"{printable(str(path))}: valid")
        return worst
    from optrewrite.schema import schema_text  # noqa: PLC0415

    sys.stdout.write(schema_text(args.which))
    return EXIT_OK


_COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"explain": _explain, "diff": _diff, "schema": _schema}


def run(argv: Sequence[str]) -> int:
    """Dispatch on the first word: a command name, or else the rewrite's arguments.

    A graph file named like a command is given as ``./explain``.
    """
    if argv and argv[0] in _COMMANDS:
        return _COMMANDS[argv[0]](argv[1:])
    if not argv:  # a bare call: how to use it, as a usage error
        sys.stderr.write(_rewrite_parser().format_usage())
        print("optrewrite: error: usage: give a graph and --spec (see optrewrite --help)", file=sys.stderr)
        return EXIT_INPUT
    return _rewrite(argv)


def _error(exc: OptrewriteError) -> None:
    print(f"optrewrite: error: {exc}", file=sys.stderr)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, so that it cleans up as on SIGINT."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Interrupted` while the command runs (main thread only;
    a signal the caller ignores, as ``nohup`` does SIGHUP, stays ignored); the previous
    handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _broken(stream: object) -> bool:
    """Whether ``stream`` is a pipe whose reader has gone (poll reports an error on it)."""
    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _quiet_closed_outputs() -> None:
    """Point closed stdout/stderr at /dev/null, so that Python's flush at exit does not fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            if _broken(stream):
                os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit code (see the module's doc).

    A closed stdout or stderr (``optrewrite diff a b | head -1``) ends the run quietly with
    :data:`EXIT_BROKEN_PIPE`, what a program killed by SIGPIPE reports. SIGINT, SIGTERM and
    SIGHUP remove what the run wrote and exit with 128 + the signal's number.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # A run allocates millions of small objects that live until it ends (names, edge tuples,
    # consumer tables) and makes almost no reference cycles; the cyclic collector would scan
    # them over and over (about a tenth of a large rewrite). Batches collect after each job.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _main_quietly(argv)
    finally:
        if collecting:
            gc.enable()


def _main_quietly(argv: list[str]) -> int:
    with _signals_interrupt():
        try:
            code = _main(argv)
            if sys.stdout is not None:
                sys.stdout.flush()  # a closed stdout fails here, not at exit
            return code
        except KeyboardInterrupt as exc:  # one that came after the command, while flushing
            return 128 + (exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)
        except BrokenPipeError:
            if not (_broken(sys.stdout) or _broken(sys.stderr)):
                log.debug("internal failure", exc_info=True)
                print("optrewrite: internal error: BrokenPipeError", file=sys.stderr)
                return EXIT_INTERNAL
            _quiet_closed_outputs()
            return EXIT_BROKEN_PIPE


def _main(argv: list[str]) -> int:
    try:
        return run(argv)
    except OptrewriteError as exc:
        _error(exc)
        return exc.exit_code
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(f"optrewrite: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, exit 3
        log.debug("internal failure", exc_info=True)
        print(f"optrewrite: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


assert EXIT_INPUT == InputError.exit_code


if __name__ == "__main__":  # python -m optrewrite.cli
    sys.exit(main())
