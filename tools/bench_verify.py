"""Measure what running --verify's step in a child process costs.

    python tools/bench_verify.py [--repeat 5]

For each runtime: the time to start the verification process (a Python start, optrewrite,
the runtime's import) against a plain ``import`` of the runtime in a fresh interpreter (what
an in-process run paid once); then, per fixture, the median time of one ``verify_file``
through the child and of the same step run in this process (warm), and their difference.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optrewrite import verify  # noqa: E402
from optrewrite.onnx import verify as onnx_verify  # noqa: E402
from optrewrite.tf import verify as tf_verify  # noqa: E402

FIXTURES = sorted(p for p in (ROOT / "fixtures").iterdir() if (p / "spec.yaml").exists())
RUNTIMES = {"optrewrite.tf.verify": "tensorflow", "optrewrite.onnx.verify": "onnxruntime"}


def _import_seconds(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    env_code = "import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'; os.environ['ORT_DISABLE_TELEMETRY'] = '1'; "
    done = subprocess.run([sys.executable, "-c", env_code + code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def _here(module: str, function: str, request: object, **_: object) -> object:
    loaded = importlib.import_module(module)
    return getattr(loaded, function)(request)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    for module, runtime in RUNTIMES.items():
        plain = _import_seconds(runtime)
        start = time.perf_counter()
        verify._worker(module)
        print(f"{runtime}: verification process up in {time.perf_counter() - start:.2f} s "
              f"(import {runtime} in a fresh interpreter: {plain:.2f} s)")
    rows = []
    for case in FIXTURES:
        src = next(case.glob("input.*"))
        isolated = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            verify.verify_file(src)
            isolated.append(time.perf_counter() - start)
        real = (tf_verify.run_isolated, onnx_verify.run_isolated)
        tf_verify.run_isolated = onnx_verify.run_isolated = _here  # type: ignore[assignment]
        try:
            tf_verify.prepare()
            onnx_verify.prepare()
            verify.verify_file(src)  # warm
            here = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                verify.verify_file(src)
                here.append(time.perf_counter() - start)
        finally:
            tf_verify.run_isolated, onnx_verify.run_isolated = real
        a, b = statistics.median(isolated), statistics.median(here)
        rows.append((case.name, a, b))
        print(f"{case.name:28s} child {a * 1000:7.0f} ms   in this process {b * 1000:7.0f} ms   "
              f"overhead {(a - b) * 1000:6.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
