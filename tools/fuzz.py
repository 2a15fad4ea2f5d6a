"""Fuzz the rewrite path: generated cases, each run in a worker process, checked against the promise.

    python tools/fuzz.py --cases 10000 --seed 0     # the full run, --verify on every case
    python tools/fuzz.py --seed 0 --case 1234       # rerun one case here, with its traceback
    python tools/fuzz.py --seed 0 --case 1234 --save DIR   # and keep its input and spec
    python tools/fuzz.py --signals 40 --seed 0      # signal faults: children interrupted mid-run

The promise (tools/fuzzing.py): ``optrewrite INPUT --spec SPEC -o OUT --verify`` exits 0 with an
output that loads, or exits 2 with one short ``optrewrite: error:`` line and nothing written;
never a traceback, never exit 3, never a changed input. One case in ten has a path fault
(tools/fuzzing.py PATH_FAULTS: ``-o`` or ``--report`` naming the input, the spec, a link to
them, each other): exit 2, nothing written. Cases come from the building blocks
tests/test_fuzz.py draws with hypothesis, here from ``random.Random`` seeded by (seed, case
index), so a case is reproduced from those two numbers alone. A pool of worker processes
(one per core) each imports optrewrite, TensorFlow, onnx and onnxruntime once and runs cases
in-process; a worker that dies (a segfault or abort in a runtime) or runs past --timeout is
recorded as a violation and replaced. Exits 1 on any violation.

Measured on the 2-core reference machine (Python 3.11, TensorFlow 2.21, onnxruntime 1.31),
``python tools/fuzz.py --cases 10000 --seed 0``: 268 s wall (119-133 s before SavedModels
joined the seeds: about 940 of the cases, each loading TensorFlow's fingerprinting, one in
ten verified in a child TensorFlow), two workers of at most 553 MB RSS, no worker crash;
1,229 cases exit 0 (written and verified), 8,771 exit 2, no violation. Seeds 1 and 2
(10,000 cases each, 122-132 s) found one more violation between them, since fixed (an ai.onnx opset newer than onnx knows, which onnxruntime refused only
after the rewrite).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

READY = b"fuzz-worker-ready\n"


# --------------------------------------------------------------------------- the worker


def worker(seeds_file: Path, seed: int, verify: bool, timeout: float) -> int:
    """Read case indices on stdin, answer one JSON line each on the original stdout."""
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a runtime prints goes to the log, not into the protocol
    from tools import fuzzing  # noqa: PLC0415

    pool = fuzzing.load_seeds(seeds_file)
    import onnx  # noqa: F401, PLC0415 - every runtime once, before the first case
    import onnxruntime  # noqa: F401, PLC0415

    import optrewrite.onnx.rewrite  # noqa: F401, PLC0415
    import optrewrite.tf.rewrite  # noqa: F401, PLC0415

    if verify:
        import tensorflow  # noqa: F401, PLC0415

        import optrewrite.verify  # noqa: F401, PLC0415
    protocol.write(READY)
    protocol.flush()
    for line in sys.stdin:
        index = int(line)
        case = fuzzing.case_at(seed, index, pool, verify=verify)
        print(f"case {index}: {case.seed} {case.kind}", file=sys.stderr, flush=True)
        outcome = fuzzing.run_case(case, timeout=timeout)
        result = {"index": index, "seed": case.seed, "kind": list(case.corruptions), "rc": outcome.rc,
                  "violations": outcome.violations, "seconds": round(outcome.seconds, 4),
                  "error": outcome.stderr.strip().splitlines()[-1][:300] if outcome.stderr.strip() else ""}
        protocol.write(json.dumps(result).encode() + b"\n")
        protocol.flush()
    return 0


class Worker:
    """One worker process; ``run`` sends it a case and waits for the answer or its death."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.buffer = b""
        self.restarts = 0
        self.peak_rss_mb = 0.0

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        self.buffer = b""
        line = self._line(600.0)
        if line != READY.strip():
            raise RuntimeError(f"a fuzz worker did not start; see {self.log}:\n{self._tail()}")

    def _line(self, timeout: float) -> bytes | None:
        """The next line from the worker; None when it died or ``timeout`` passed."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def _tail(self, lines: int = 6) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _rss(self) -> None:
        if self.proc is None:
            return
        try:
            for row in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if row.startswith("VmHWM:"):
                    self.peak_rss_mb = max(self.peak_rss_mb, int(row.split()[1]) / 1024)
        except OSError:
            pass

    def stop(self) -> None:
        if self.proc is not None:
            self._rss()
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def run(self, index: int, timeout: float) -> dict[str, Any]:
        if self.proc is None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(f"{index}\n".encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self._line(timeout)
        if line is not None:
            return json.loads(line)
        self._rss()
        try:
            self.proc.wait(timeout=2)  # a worker that closed its output is exiting: let it finish
        except subprocess.TimeoutExpired:
            pass
        if self.proc.poll() is None:
            what = f"the worker ran past {timeout:g} s"
        else:
            code = self.proc.returncode
            what = f"the worker died ({f'signal {-code}' if code < 0 else f'exit {code}'})"
        tail = self._tail(3).replace("\n", " | ")
        self.stop()
        self.restarts += 1
        return {"index": index, "seed": "?", "kind": [], "rc": None, "seconds": timeout,
                "violations": [f"{what}; log: {tail}"], "error": ""}


# --------------------------------------------------------------------------- the run


def _signature(violation: str) -> str:
    """A violation without its paths, names and numbers, to group alike ones."""
    text = re.sub(r"/\S+", "PATH", violation)
    text = re.sub(r"'[^']*'", "'X'", text)
    return re.sub(r"\d+", "N", text)[:160]


def summary(results: list[dict[str, Any]], *, seed: int, seconds: float, workers: list[Worker],
            verify: bool) -> tuple[str, int]:
    rows: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in results:
        outcome = "violation" if r["violations"] else f"exit {r['rc']}"
        for kind in r["kind"] or ["none"]:
            rows[kind][outcome] += 1
            rows[kind]["cases"] += 1
        rows["all cases"][outcome] += 1
        rows["all cases"]["cases"] += 1
    out = [f"{len(results)} cases, seed {seed}, {seconds:.0f} s on {len(workers)} workers "
           f"({'--verify' if verify else 'no --verify'}); worker peak RSS "
           f"{max((w.peak_rss_mb for w in workers), default=0):.0f} MB, "
           f"{sum(w.restarts for w in workers)} worker restarts",
           "", f"{'corruption':<16}{'cases':>8}{'exit 0':>8}{'exit 2':>8}{'violations':>12}"]
    for kind in sorted(rows, key=lambda k: (k == "all cases", k != "none", k)):
        row = rows[kind]
        out.append(f"{kind:<16}{row['cases']:>8}{row['exit 0']:>8}{row['exit 2']:>8}{row['violation']:>12}")
    out.append("(a case with two corruptions counts in both rows)")
    bad = [r for r in results if r["violations"]]
    groups: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in bad:
        groups[_signature(r["violations"][0])].append(r)
    out.append("")
    out.append(f"violations: {len(bad)}" + (f" in {len(groups)} kinds" if bad else ""))
    for group in sorted(groups.values(), key=len, reverse=True):
        first = group[0]
        out.append(f"  {len(group)} x {first['violations'][0][:240]}")
        out.append(f"    e.g. case {first['index']} ({first['seed']}, {'+'.join(first['kind']) or 'none'}); "
                   f"cases {', '.join(str(r['index']) for r in group[:8])}{' ...' if len(group) > 8 else ''}")
        out.append(f"    rerun: python tools/fuzz.py --seed {seed} --case {first['index']}"
                   f"{'' if verify else ' --no-verify'}")
    return "\n".join(out), len(bad)


def fuzz(cases: int, seed: int, jobs: int, verify: bool, timeout: float, start: int) -> int:
    from tools import fuzzing  # noqa: PLC0415

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="optrewrite-fuzz-run-") as tmp:
        seeds_file = Path(tmp) / "seeds.pickle"
        fuzzing.save_seeds(seeds_file)
        print(f"{len(fuzzing.seeds())} seed graphs; logs in {tmp} while it runs", file=sys.stderr)
        args = [sys.executable, str(Path(__file__).resolve()), "--worker", str(seeds_file), "--seed", str(seed),
                "--timeout", str(timeout), *([] if verify else ["--no-verify"])]
        workers = [Worker(args, Path(tmp) / f"worker{k}.log") for k in range(jobs)]
        indices: Iterator[int] = iter(range(start, start + cases))
        lock = threading.Lock()
        results: list[dict[str, Any]] = []

        def drive(w: Worker) -> None:
            while True:
                with lock:
                    index = next(indices, None)
                if index is None:
                    return
                result = w.run(index, timeout + 60)
                with lock:
                    results.append(result)
                    done = len(results)
                    if result["violations"]:
                        print(f"case {index}: {result['violations'][0][:200]}", file=sys.stderr)
                    if done % 500 == 0:
                        print(f"{done}/{cases} cases, {time.perf_counter() - began:.0f} s", file=sys.stderr)

        threads = [threading.Thread(target=drive, args=(w,)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for w in workers:
            w.stop()
    results.sort(key=lambda r: r["index"])
    text, violations = summary(results, seed=seed, seconds=time.perf_counter() - began, workers=workers,
                               verify=verify)
    print(text)
    return 1 if violations else 0


def one(seed: int, index: int, verify: bool, save: Path | None, timeout: float) -> int:
    """Rerun one case in this process and show everything about it."""
    import logging  # noqa: PLC0415

    from tools import fuzzing  # noqa: PLC0415

    case = fuzzing.case_at(seed, index, verify=verify)
    print(case.describe())
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        fuzzing.write_input(case, save)
        argv = fuzzing.argv_for(case, save)
        print(f"saved; run: optrewrite {' '.join(argv)}")
    handler = logging.StreamHandler(sys.stdout)  # main logs an internal error's traceback at debug level
    logger = logging.getLogger("optrewrite")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    outcome = fuzzing.run_case(case, timeout=timeout)
    logger.removeHandler(handler)
    print(f"exit {outcome.rc} in {outcome.seconds:.2f} s; stderr:\n{outcome.stderr}")
    for v in outcome.violations:
        print(f"VIOLATION: {v}")
    return 1 if outcome.violations else 0


def signals(count: int, seed: int, verify: bool) -> int:
    """Signal faults: ``count`` cases, each run as ``python -m optrewrite`` in a child that
    gets SIGINT, SIGTERM or SIGHUP after a random delay (before, during or after its
    writes). The promise: the input and spec unchanged; exit 128 + the signal with nothing
    left beside them (no output, no temporary name), or the exit a run without the signal
    has (0 with an output that loads, or 2 with nothing written)."""
    import random  # noqa: PLC0415
    import shutil  # noqa: PLC0415
    import signal as sig  # noqa: PLC0415

    from tools import fuzzing  # noqa: PLC0415

    rng = random.Random(f"optrewrite-signals:{seed}")
    bad = 0
    tally: collections.Counter[str] = collections.Counter()
    for index in range(count):
        case = fuzzing.case_at(seed, index, verify=verify)
        case = fuzzing.Case(**{**case.__dict__, "path": "plain", "explain": False})
        d = Path(tempfile.mkdtemp(prefix="optrewrite-signal-"))
        try:
            before = fuzzing.digest(fuzzing.write_input(case, d))
            argv = fuzzing.argv_for(case, d)
            setup = sorted(p.name for p in d.iterdir())
            which = rng.choice([sig.SIGINT, sig.SIGTERM, sig.SIGHUP])
            proc = subprocess.Popen([sys.executable, "-m", "optrewrite", *argv], cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(rng.uniform(0.0, 3.0))
            proc.send_signal(which)
            _, err = proc.communicate(timeout=300)
            rc = proc.returncode
            left = sorted(p.name for p in d.iterdir())
            problems = []
            if fuzzing.digest(d / f"input{case.suffix}") != before or (d / "spec.yaml").read_bytes() != case.spec:
                problems.append("the input or the spec changed")
            if rc in (128 + which, -which, 2) and left != setup:
                problems.append(f"exit {rc} left {sorted(set(left) - set(setup))}")
            elif rc == 0 and any(n.startswith(".") for n in left):
                problems.append(f"exit 0 left temporary names {left}")
            elif rc not in (0, 2, 128 + which, -which):
                problems.append(f"exit {rc}: {err.decode(errors='replace').strip()[-200:]}")
            tally[f"exit {rc}"] += 1
            if problems:
                bad += 1
                print(f"case {index} ({which.name}): {'; '.join(problems)}", flush=True)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    print(f"{count} signal cases (seed {seed}): {dict(sorted(tally.items()))}, {bad} violations")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="index of the first case")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="do not pass --verify")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds one case may take")
    p.add_argument("--case", type=int, help="rerun this one case in this process")
    p.add_argument("--save", type=Path, help="with --case: write its input and spec to this folder")
    p.add_argument("--signals", type=int, metavar="N",
                   help="instead: N cases run in a child interrupted by SIGINT/SIGTERM/SIGHUP")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        return worker(args.worker, args.seed, args.verify, args.timeout)
    if args.signals is not None:
        return signals(args.signals, args.seed, args.verify)
    if args.case is not None:
        return one(args.seed, args.case, args.verify, args.save, args.timeout)
    return fuzz(args.cases, args.seed, max(1, args.jobs), args.verify, args.timeout, args.start)


if __name__ == "__main__":
    sys.exit(main())
