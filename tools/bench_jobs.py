"""Benchmark ``optrewrite -j N``: several graphs rewritten in worker processes against one after another.

    python tools/bench_jobs.py --graph GRAPH.pb [--copies 8] [--jobs 2] [--repeats 3]

Copies GRAPH (a ``tools/bench_tf.py`` graph: its spec guards every variable and clips every
tenth block) into a temporary directory ``--copies`` times and times, in fresh processes and
alternating, ``optrewrite --spec SPEC COPY...`` (sequential) and the same with ``-j N``.
Prints the medians and their ratio; the outputs of both runs are compared byte for byte.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tools.bench_tf import SPEC  # noqa: E402


def run(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "optrewrite", *args], cwd=cwd, check=True)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--graph", type=Path, required=True)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="optrewrite-bench-jobs-") as tmp:
        d = Path(tmp)
        (d / "spec.yaml").write_text(SPEC)
        names = [f"g{k}.pb" for k in range(a.copies)]
        for name in names:
            shutil.copyfile(a.graph, d / name)
        outputs: dict[str, dict[str, bytes]] = {}
        times: dict[str, list[float]] = {"sequential": [], f"-j {a.jobs}": []}
        for _ in range(a.repeats):
            for label, extra in (("sequential", []), (f"-j {a.jobs}", ["-j", str(a.jobs)])):
                for name in names:
                    (d / name.replace(".pb", ".rewritten.pb")).unlink(missing_ok=True)
                times[label].append(run([*extra, "-q", "--spec", "spec.yaml", *names], d))
                outputs[label] = {n: (d / n.replace(".pb", ".rewritten.pb")).read_bytes() for n in names}
        assert outputs["sequential"] == outputs[f"-j {a.jobs}"], "the parallel run wrote other bytes"
        seq, par = statistics.median(times["sequential"]), statistics.median(times[f"-j {a.jobs}"])
        print(f"| graphs | sequential s | -j {a.jobs} s | speed-up |")
        print("|--:|--:|--:|--:|")
        print(f"| {a.copies} × {a.graph.stat().st_size / 1e6:.1f} MB | {seq:.2f} | {par:.2f} | {seq / par:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
