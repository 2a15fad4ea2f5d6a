"""Benchmark of the SavedModel rewrite: rewrite time against a floor, and the step overhead.

A SavedModel of N (default 2,000) small variables (each a [4, 4] matrix, y = tanh(x @ W_i)
summed) trained by one Keras 3 Adam in a ``tf.function`` ``train`` signature, built once and
cached under ``--cache``. In fresh processes, in the same run:

- rewrite: ``optrewrite SAVEDMODEL --spec guard_all -o OUT`` (the CLI's whole run; TensorFlow's
  fingerprinting extension regenerates fingerprint.pb), against a floor: parse ``saved_model.pb``,
  serialize it again and copy ``variables/`` (what any rewrite of the directory must do);
- step: the median wall time of the loaded ``train`` signature (after warm-up steps) of the
  original, the guard on every variable, and guard + a clip that never triggers
  (max_norm 1e30), each as a ratio to the original; the three models' steps interleaved.

``--model mobilenet`` times the same on a real network instead: keras.applications
MobileNetV2 (alpha 0.35, 32 x 32 inputs, no pretrained weights: 158 trainable variables, every
convolution followed by batch normalization) with a dense head, one Keras 3 Adam step.

Prints a markdown table. ``python tools/bench_tf2.py [--variables N] [--steps S] [--model mobilenet]``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

BUILD = r'''
import sys, numpy as np, tensorflow as tf, keras
n, out = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
class M(tf.Module):
    def __init__(self):
        super().__init__()
        self.w = [tf.Variable(rng.uniform(-0.5, 0.5, (4, 4)).astype(np.float32), name=f"w{i}") for i in range(n)]
        self.opt = keras.optimizers.Adam(0.01)
        self.opt.build(self.w)
    @tf.function(input_signature=[tf.TensorSpec([2, 4])])
    def train(self, x):
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_sum(tf.tanh(x @ w)) for w in self.w])
        grads = tape.gradient(loss, self.w)
        self.opt.apply_gradients(zip(grads, self.w))
        return {"loss": loss}
m = M()
tf.saved_model.save(m, out, signatures={"train": m.train.get_concrete_function()})
'''

BUILD_MOBILENET = r'''
import sys, tensorflow as tf, keras
out = sys.argv[2]
keras.utils.set_random_seed(1)
base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, include_top=False,
                                      pooling="avg")
inp = keras.Input((32, 32, 3), batch_size=2)
net = keras.Model(inp, keras.layers.Dense(1, name="head")(base(inp)))
opt = keras.optimizers.Adam(0.01)
opt.build(net.trainable_variables)
m = tf.Module()
m.net, m.opt = net, opt
@tf.function(input_signature=[tf.TensorSpec([2, 32, 32, 3]), tf.TensorSpec([2, 1])])
def train(x, y):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((net(x, training=True) - y) ** 2)
    opt.apply_gradients(zip(tape.gradient(loss, net.trainable_variables), net.trainable_variables))
    return {"loss": loss}
m.train = train
tf.saved_model.save(m, out, signatures={"train": train.get_concrete_function()})
'''

FLOOR = r'''
import shutil, sys, time
from pathlib import Path
from tensorflow.core.protobuf import saved_model_pb2
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
t = time.perf_counter()
sm = saved_model_pb2.SavedModel()
sm.ParseFromString((src / "saved_model.pb").read_bytes())
dst.mkdir()
(dst / "saved_model.pb").write_bytes(sm.SerializeToString(deterministic=True))
shutil.copytree(src / "variables", dst / "variables", copy_function=shutil.copyfile)
print(time.perf_counter() - t)
'''

REWRITE = r'''
import sys, time
t = time.perf_counter()
from optrewrite.cli import main
rc = main([sys.argv[1], "--spec", sys.argv[2], "-o", sys.argv[3]])
assert rc == 0, rc
print(time.perf_counter() - t)
'''

STEP = r'''
import json, sys, time, numpy as np, tensorflow as tf
steps = int(sys.argv[1])
rng = np.random.default_rng(1)
models = {path: tf.saved_model.load(path).signatures["train"] for path in sys.argv[2:]}
first = next(iter(models.values()))
specs = first.structured_input_signature[1]
inputs = {k: rng.uniform(-1, 1, spec.shape).astype(np.float32) for k, spec in specs.items()}
times = {path: [] for path in models}
for _ in range(3):
    for f in models.values():
        f(**inputs)
for _ in range(steps):  # interleaved: a drift of the machine's speed hits every model alike
    for path, f in models.items():
        t = time.perf_counter(); f(**inputs)["loss"].numpy(); times[path].append(time.perf_counter() - t)
print(json.dumps({path: float(np.median(t)) for path, t in times.items()}))
'''


def _run(code: str, *args: str) -> str:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(HERE)}
    done = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True, env=env)
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variables", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=15, help="train steps timed per model (0: time the rewrite alone)")
    ap.add_argument("--repeats", type=int, default=3, help="rewrite and floor runs (median)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "optrewrite-bench-tf2")
    ap.add_argument("--model", choices=["dense", "mobilenet"], default="dense")
    a = ap.parse_args()
    mobilenet = a.model == "mobilenet"
    src = a.cache / ("mobilenet-v2" if mobilenet else f"adam-{a.variables}")
    if not (src / "saved_model.pb").exists():
        a.cache.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        _run(BUILD_MOBILENET if mobilenet else BUILD, str(a.variables), str(src))
        print(f"built {src} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        guard = work / "guard.yaml"
        guard.write_text("version: 1\nguard:\n  variables: ['*']\n")
        clip = work / "clip.yaml"
        clip.write_text("version: 1\nguard:\n  variables: ['*']\nclip:\n  - variables: ['*']\n    max_norm: 1.0e+30\n")
        floors, rewrites = [], []
        for k in range(a.repeats):
            floors.append(float(_run(FLOOR, str(src), str(work / f"floor{k}"))))
            rewrites.append(float(_run(REWRITE, str(src), str(guard), str(work / f"guard{k}"))))
        size = (src / "saved_model.pb").stat().st_size
        floor, rewrite = statistics.median(floors), statistics.median(rewrites)
        what = "MobileNetV2" if mobilenet else f"{a.variables} variables"
        print(f"| {what}, Keras 3 Adam (saved_model.pb {size / 1e6:.1f} MB) | time | ratio |")
        print("|---|---|---|")
        print(f"| floor: parse + serialize saved_model.pb + copy variables/ | {floor:.2f} s | 1.00 |")
        print(f"| rewrite, guard on every variable (whole CLI run) | {rewrite:.2f} s | {rewrite / floor:.2f} |")
        if a.steps <= 0:
            return
        _run(REWRITE, str(src), str(clip), str(work / "clip"))
        steps = json.loads(_run(STEP, str(a.steps), str(src), str(work / "guard0"), str(work / "clip")))
        base = steps[str(src)]
        print(f"| train step, original (median of {a.steps}) | {base * 1e3:.1f} ms | 1.00 |")
        g = steps[str(work / "guard0")]
        c = steps[str(work / "clip")]
        print(f"| train step, guard on every variable | {g * 1e3:.1f} ms | {g / base:.2f} |")
        print(f"| train step, guard + never-triggering clip | {c * 1e3:.1f} ms | {c / base:.2f} |")


if __name__ == "__main__":
    main()
