"""``--verify`` for SavedModels: load the output in TensorFlow and run its training signature once.

``tf.saved_model.load`` the directory; for every signature but ``__saved_model_init_op``,
generate its inputs (:func:`optrewrite.verify.generate`; unknown dims 2), run it once, and
count the signature's variables whose values changed. The summary names the signature that
changed the most (the training step); no signature changing any variable is a failure.
Runs in this process (TensorFlow is imported only here).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from optrewrite.verify import Budget, VerificationFailed, failed, generate


def verify_savedmodel(path: Path, *, seed: int, timeout_s: float) -> str:
    """Run the SavedModel at ``path`` (the directory or its ``saved_model.pb``) one step."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf  # noqa: PLC0415

    root = path.parent if path.name == "saved_model.pb" else path
    try:
        loaded = tf.saved_model.load(str(root))
    except Exception as exc:  # noqa: BLE001 - TensorFlow raises many kinds
        raise failed(f"TensorFlow cannot load the SavedModel: {_first(exc)}") from None
    rng = np.random.default_rng(seed)
    budget = Budget()
    best: tuple[int, int, str] | None = None
    for name in sorted(loaded.signatures):
        fn = loaded.signatures[name]
        variables = list(getattr(fn, "variables", ()))
        if not variables:
            continue
        before = [v.numpy().copy() for v in variables]
        kwargs: dict[str, Any] = {}
        for key, spec in fn.structured_input_signature[1].items():
            shape = budget.take(key, [2 if d is None else d for d in spec.shape.as_list()])
            value = generate(rng, shape, np.dtype(spec.dtype.as_numpy_dtype))
            if value is None:
                raise failed(f"signature {name!r}: cannot generate input {key!r} of type {spec.dtype.name}")
            kwargs[key] = value
        try:
            fn(**kwargs)
        except Exception as exc:  # noqa: BLE001
            raise failed(f"signature {name!r} fails: {_first(exc)}") from None
        changed = sum(1 for v, b in zip(variables, before) if not np.array_equal(v.numpy(), b, equal_nan=True))
        if best is None or changed > best[0]:
            best = (changed, len(variables), name)
    if best is None or best[0] == 0:
        raise VerificationFailed("no signature of the SavedModel changed a variable")
    return f"ran one step ({best[2]!r}) in TensorFlow {tf.__version__}: {best[0]} of {best[1]} variables changed"


def _first(exc: BaseException) -> str:
    """The first non-empty line of an exception's message."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
