"""Rewrite the bundled example graphs and show what changed.

    bash tools/dev.sh demo

1. Runs ``optrewrite fixtures/momentum_ref_dense/input.pb --spec .../spec.yaml`` into ``out/``
   and prints the report and the structural diff of the input and the output
   (``optrewrite diff``).
2. Runs ``optrewrite fixtures/adam_preview_lowered/input.onnx --spec .../spec.yaml`` (guard,
   clip, lowering) and trains the result two steps in onnxruntime, the second with an all-zero
   gradient for one tensor, which keeps its value.
"""
from __future__ import annotations

import sys
from pathlib import Path

from optrewrite.cli import main as optrewrite_main
from optrewrite.diff import diff_files

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "fixtures" / "momentum_ref_dense"
ONNX_CASE = ROOT / "fixtures" / "adam_preview_lowered"


def onnx_demo(out_dir: Path) -> int:
    import numpy as np  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415

    src, spec, out = ONNX_CASE / "input.onnx", ONNX_CASE / "spec.yaml", out_dir / "input.rewritten.onnx"
    print(f"\n$ optrewrite {src.relative_to(ROOT)} --spec {spec.relative_to(ROOT)} -o {out.relative_to(ROOT)}")
    rc = optrewrite_main([str(src), "--spec", str(spec), "-o", str(out)])
    if rc:
        return rc
    print(f"\nspec ({spec.relative_to(ROOT)}):\n" + spec.read_text())
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    shapes = {i.name: [d if isinstance(d, int) else 1 for d in i.shape] for i in session.get_inputs()}
    rng = np.random.default_rng(0)
    feed = {n: rng.normal(size=shapes[n]).astype(np.float32) for n in names if n not in ("lr", "step")}
    feed.update({n: np.abs(feed[n]) for n in names if n.endswith("/state1")})
    feed["lr"] = np.array(0.1, np.float32)
    print("onnxruntime (CPUExecutionProvider), two steps of the lowered graph:")
    for step, zero in ((1, False), (2, True)):
        feed["step"] = np.array(step, np.int64)
        if zero:
            feed["dense/bias/grad"] = np.zeros_like(feed["dense/bias/grad"])
        outs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        kernel = np.linalg.norm(outs["dense/kernel/next"], axis=1)
        kept = np.array_equal(outs["dense/bias/next"], feed["dense/bias"])
        print(f"  step {step}: dense/kernel row norms {np.round(kernel, 4).tolist()} (max_norm 1.0); "
              f"dense/bias gradient {'all zero' if zero else 'non-zero'} -> "
              f"{'unchanged' if kept else 'updated'}")
        for name in ("dense/kernel", "dense/bias"):
            feed[name] = outs[f"{name}/next"]
            for k in (0, 1):
                feed[f"{name}/state{k}"] = outs[f"{name}/state{k}/next"]
    return 0


def main() -> int:
    out_dir = ROOT / "out"
    out_dir.mkdir(exist_ok=True)
    src, spec, out = CASE / "input.pb", CASE / "spec.yaml", out_dir / "input.rewritten.pb"
    print(f"$ optrewrite {src.relative_to(ROOT)} --spec {spec.relative_to(ROOT)} -o {out.relative_to(ROOT)} "
          f"--report {(out_dir / 'report.json').relative_to(ROOT)}")
    rc = optrewrite_main([str(src), "--spec", str(spec), "-o", str(out), "--report", str(out_dir / "report.json")])
    if rc:
        return rc
    print(f"\nspec ({spec.relative_to(ROOT)}):\n" + spec.read_text())
    print("what changed (- removed, + added, ~ changed):")
    print(diff_files(src, out).render(str(src.relative_to(ROOT)), str(out.relative_to(ROOT))))
    return onnx_demo(out_dir)


if __name__ == "__main__":
    sys.exit(main())
