"""Rewrite the bundled example graph and show what changed.

    bash tools/dev.sh demo

Runs ``optrewrite fixtures/momentum_ref_dense/input.pb --spec .../spec.yaml`` into ``out/``
and prints the report and a node-level diff of the input and the output.
"""
from __future__ import annotations

import sys
from pathlib import Path

from optrewrite.canonical import structural_diff
from optrewrite.cli import main as optrewrite_main
from optrewrite.tf import io

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "fixtures" / "momentum_ref_dense"


def main() -> int:
    out_dir = ROOT / "out"
    out_dir.mkdir(exist_ok=True)
    src, spec, out = CASE / "input.pb", CASE / "spec.yaml", out_dir / "input.rewritten.pb"
    print(f"$ optrewrite {src.relative_to(ROOT)} --spec {spec.relative_to(ROOT)} -o {out.relative_to(ROOT)} "
          f"--report {(out_dir / 'report.json').relative_to(ROOT)}")
    rc = optrewrite_main([str(src), "--spec", str(spec), "-o", str(out), "--report", str(out_dir / "report.json")])
    if rc:
        return rc
    before = io.load(src, src.read_bytes()).graph
    after = io.load(out, out.read_bytes()).graph
    print(f"\nspec ({spec.relative_to(ROOT)}):\n" + spec.read_text())
    print("what changed (+ added node, ~ changed node):")
    for line in structural_diff(before, after):
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
