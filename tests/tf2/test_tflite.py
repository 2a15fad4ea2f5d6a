"""A rewritten training SavedModel converts to TFLite and trains there as in TensorFlow.

The model is what on-device training exports: a Keras 3 step (Dense -> Dense, static shapes,
no ReLU, Adam) with ``train``, ``restore`` (assigns every variable — model, slots, iteration,
learning rate — from its inputs and returns them) and ``state`` (returns them) signatures.
TFLite facts the test relies on (measured with TensorFlow 2.21): converting with
``TFLITE_BUILTINS`` only and resource variables enabled works for such a step; the
interpreter's variables do not start from the saved values (uninitialized memory), so
``restore`` is called first; a ``restore`` whose outputs did not depend on its assignments
would be pruned by the converter.

- ``restore`` sets variables from inputs, it does not update them: the rewrite leaves its
  function byte for byte (an assignment of an input is no update site).
- The rewritten SavedModel (guard on every variable, a clip on ``dense/kernel``) converts,
  as the original does: every inserted op has a TFLite builtin.
- In ``tf.lite.Interpreter``, after ``restore``, it trains like the rewritten SavedModel in
  TensorFlow (within 1e-5), and on a step whose loss weight is 0 every variable and slot
  keeps its value except the iteration counter and the clipped kernel.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from optrewrite.cli import main
from optrewrite.tf2 import io

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

SPEC = ("version: 1\nguard:\n  variables: ['*']\nclip:\n"
        "  - variables: ['dense/kernel']\n    max_norm: 0.5\n")
WEIGHTS = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
SIGNATURES = ["train", "restore", "state"]


def _build(out: Path) -> Path:
    keras.utils.set_random_seed(0)
    dense, head = keras.layers.Dense(3), keras.layers.Dense(1)
    dense(tf.zeros([2, 4]))
    head(tf.zeros([2, 3]))
    variables = dense.trainable_variables + head.trainable_variables
    opt = keras.optimizers.Adam(0.05)
    opt.build(variables)
    every = variables + list(opt.variables)

    class Step(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.dense, self.head, self.opt = dense, head, opt

        @tf.function(input_signature=[tf.TensorSpec([2, 4]), tf.TensorSpec([2, 1]), tf.TensorSpec([], tf.float32)])
        def train(self, x: Any, y: Any, w: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = w * tf.reduce_mean((self.head(self.dense(x)) - y) ** 2)
            grads = tape.gradient(loss, variables)
            self.opt.apply_gradients(zip(grads, variables))
            return {"loss": loss}

        @tf.function(input_signature=[tf.TensorSpec(v.shape, v.dtype, name=f"v{i}") for i, v in enumerate(every)])
        def restore(self, *values: Any) -> Any:
            out = {}
            for i, (v, x) in enumerate(zip(every, values)):
                v.assign(x)
                out[f"v{i}"] = tf.identity(v)
            return out

        @tf.function(input_signature=[])
        def state(self) -> Any:
            return {f"v{i}": tf.identity(v) for i, v in enumerate(every)}

    step = Step()
    tf.saved_model.save(step, str(out), signatures={
        "train": step.train.get_concrete_function(), "restore": step.restore.get_concrete_function(),
        "state": step.state.get_concrete_function()})
    return out


def _convert(path: Path, signatures: list[str] = SIGNATURES) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(str(path), signature_keys=signatures)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.experimental_enable_resource_variables = True
    return bytes(converter.convert())


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    return np.arange(8, dtype=np.float32).reshape(2, 4) / 7, np.array([[1.0], [2.0]], np.float32)


def _in_tensorflow(path: Path) -> list[dict[str, np.ndarray]]:
    loaded = tf.saved_model.load(str(path))
    state, train = loaded.signatures["state"], loaded.signatures["train"]
    x, y = _inputs()
    out = [{k: v.numpy() for k, v in state().items()}]
    for w in WEIGHTS:
        train(x=tf.constant(x), y=tf.constant(y), w=tf.constant(w))
        out.append({k: v.numpy() for k, v in state().items()})
    return out


def _in_tflite(model: bytes, initial: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    interpreter = tf.lite.Interpreter(model_content=model)
    restored = interpreter.get_signature_runner("restore")(**initial)
    for k, v in initial.items():
        np.testing.assert_array_equal(restored[k], v, err_msg=f"restore output {k}")
    state, train = interpreter.get_signature_runner("state"), interpreter.get_signature_runner("train")
    x, y = _inputs()
    out = [state()]
    for w in WEIGHTS:
        train(x=x, y=y, w=np.float32(w))
        out.append(state())
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tflite")
    src = _build(root / "src")
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    out, report = root / "out", root / "report.json"
    assert main([str(src), "--spec", str(spec), "-o", str(out), "--report", str(report)]) == 0
    return {"src": src, "out": out, "report": json.loads(report.read_text())}


def test_restore_is_no_update_and_stays_as_it_was(saved: dict[str, Any]) -> None:
    updates = " ".join(s["update"] for s in saved["report"]["sites"])
    assert "restore" not in updates, updates
    assert len(saved["report"]["sites"]) == 4, saved["report"]["sites"]
    before = io.load(saved["src"], (saved["src"] / "saved_model.pb").read_bytes()).functions
    after = io.load(saved["out"], (saved["out"] / "saved_model.pb").read_bytes()).functions
    restore = [name for name in before if "restore" in name and "traced" not in name]
    assert restore
    for name in restore:
        assert after[name].SerializeToString(deterministic=True) == before[name].SerializeToString(deterministic=True)


def test_rewritten_step_converts_and_trains_in_tflite_as_in_tensorflow(saved: dict[str, Any]) -> None:
    _convert(saved["src"])  # the original converts: the rewritten one must too
    model = _convert(saved["out"])
    expected = _in_tensorflow(saved["out"])
    got = _in_tflite(model, expected[0])
    names = sorted(expected[0])
    for t in range(len(WEIGHTS) + 1):
        for k in names:
            np.testing.assert_allclose(got[t][k], expected[t][k], rtol=1e-5, atol=1e-6, err_msg=f"after step {t}: {k}")
    # v0 is dense/kernel (clipped every step), v4 the iteration counter
    masked = [t for t, w in enumerate(WEIGHTS) if w == 0.0]
    for t in masked:
        moved = [k for k in names if k not in ("v0", "v4") and not np.array_equal(got[t + 1][k], got[t][k])]
        assert not moved, f"step {t} (masked) moved {moved} in TFLite"
        assert got[t + 1]["v4"] == got[t]["v4"] + 1
    plain = _in_tensorflow(saved["src"])
    assert any(not np.array_equal(plain[t + 1][k], plain[t][k]) for t in masked for k in ("v6", "v7")), \
        "the original moved no slot on a masked step: the test could not fail"


BEYOND = ("version: 1\nguard:\n  variables: ['*']\n  when: zero_or_nonfinite\n  scope: step\n  granularity: {g}\n"
          "clip:\n  - variables: ['dense/kernel']\n    max_norm: 0.5\n    formula: exact\n    on_skipped_steps: false\n")


@pytest.mark.parametrize("granularity", ["row", "element"])
def test_the_options_beyond_the_seed_convert_and_train_as_in_tensorflow(saved: dict[str, Any], tmp_path: Path,
                                                                          granularity: str) -> None:
    """Row and element guards with the step-wide finite test, and the exact clip that skips
    the steps the guard skipped: every op they insert has a TFLite builtin, and the
    interpreter trains as TensorFlow does; a masked step now moves nothing but the counter."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(BEYOND.format(g=granularity))
    out = tmp_path / "out"
    assert main([str(saved["src"]), "--spec", str(spec), "-o", str(out), "-q"]) == 0
    expected = _in_tensorflow(out)
    got = _in_tflite(_convert(out), expected[0])
    names = sorted(expected[0])
    for t in range(len(WEIGHTS) + 1):
        for k in names:
            np.testing.assert_allclose(got[t][k], expected[t][k], rtol=1e-5, atol=1e-6, err_msg=f"after step {t}: {k}")
    for t in (t for t, w in enumerate(WEIGHTS) if w == 0.0):
        assert [k for k in names if k != "v4" and not np.array_equal(got[t + 1][k], got[t][k])] == [], t


def test_counters_convert_and_count_in_tflite(saved: dict[str, Any], tmp_path: Path) -> None:
    """Counters are variables of the TFLite model too, read by the ``optrewrite_counters``
    signature: 0 before the first step (the converter takes them from the SavedModel's init
    op), then one per step whose loss weight was 0 (every gradient all zero)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\nguard:\n  counters: true\n")
    out = tmp_path / "out"
    assert main([str(saved["src"]), "--spec", str(spec), "-o", str(out), "-q"]) == 0
    interpreter = tf.lite.Interpreter(model_content=_convert(out, [*SIGNATURES, "optrewrite_counters"]))
    read = interpreter.get_signature_runner("optrewrite_counters")
    names = {f"{v}/optrewrite_skipped_zero" for v in ("dense/kernel", "dense/bias", "head/kernel", "head/bias")}
    assert read() == dict.fromkeys(names, 0)
    start = tf.saved_model.load(str(out)).signatures["state"]()
    interpreter.get_signature_runner("restore")(**{k: v.numpy() for k, v in start.items()})
    x, y = _inputs()
    for w in WEIGHTS:
        interpreter.get_signature_runner("train")(x=x, y=y, w=np.float32(w))
    assert read() == dict.fromkeys(names, sum(w == 0.0 for w in WEIGHTS))
