"""Helpers of the tests that train a two-head Keras 3 model saved with its optimizer.

Such a test saves ``module.state_variables`` (the model's variables, then the optimizer's,
by ``variable.path``), runs the original SavedModel step by step with the guard applied by
hand — :func:`restore_masked` after each step — and compares it with the rewritten one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from optrewrite.cli import main


def module_for(net: Any, opt: Any) -> tuple[Any, list[str]]:
    """A tf.Module holding ``net`` and ``opt`` (built for the net's trainable variables) and
    every variable of both as ``state_variables``; the variables' paths, in that order."""
    import tensorflow as tf

    opt.build(net.trainable_variables)
    state = [*net.variables, *opt.variables]
    module = tf.Module()
    module.net, module.opt, module.state_variables = net, opt, state
    return module, [v.path for v in state]


HEADS = ("head_a/", "head_b/")


def masked_by(weights: Any, shared: tuple[str, ...] = ("shared/",)) -> tuple[str, ...]:
    """The variable prefixes a step's loss weights (head a's, head b's) mask: each head whose
    weight is 0, and the ``shared`` layers too when both are (no gradient reaches them then)."""
    masked = tuple(head for head, w in zip(HEADS, weights) if w == 0)
    return masked + shared if len(masked) == len(HEADS) else masked


def masked_names(names: list[str], masked: tuple[str, ...]) -> list[str]:
    """The variables of ``names`` whose path starts with one of ``masked`` (``"head_b/"``), and
    their optimizer slots (``"adam/head_b_kernel_momentum"``); the optimizer's variables come
    last in ``names``."""
    optimizer = names[-1].split("/")[0] + "/"  # "adam_2/" where "adam" was taken
    slots = tuple(optimizer + m.replace("/", "_") for m in masked)
    return [name for name in names if name.startswith(masked + slots)]


def restore_masked(variables: dict[str, Any], before: dict[str, np.ndarray], masked: tuple[str, ...]) -> None:
    """The guard's semantics by hand: the :func:`masked_names` of ``variables`` get their value
    from ``before`` back."""
    for name in masked_names(list(variables), masked):
        variables[name].assign(before[name])


def rewrite(src: Path, tmp_path: Path, spec: str) -> tuple[Path, dict[str, Any]]:
    """``optrewrite SRC --spec SPEC -o OUT --report R``: the output directory and the report."""
    (tmp_path / "spec.yaml").write_text(spec)
    out, report = tmp_path / "out", tmp_path / "report.json"
    assert main([str(src), "--spec", str(tmp_path / "spec.yaml"), "-o", str(out), "--report", str(report), "-q"]) == 0
    return out, json.loads(report.read_text())


def train_steps(export_dir: Path, names: list[str], steps: list[tuple[dict[str, Any], Any]], *,
                guard_by_hand: bool, shared: tuple[str, ...] = ("shared/",)) -> list[dict[str, np.ndarray]]:
    """Load ``export_dir`` and call its ``train`` signature once per step, on that step's inputs
    and loss weights (``w``, head a's and head b's); every variable of ``names`` after each.
    ``guard_by_hand``: after each step, :func:`restore_masked` what the weights mask
    (:func:`masked_by`)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(export_dir))
    variables = dict(zip(names, loaded.state_variables))
    out = []
    for inputs, weights in steps:
        before = {n: v.numpy() for n, v in variables.items()}
        loaded.signatures["train"](**inputs, w=np.asarray(weights, np.float32))
        if guard_by_hand:
            restore_masked(variables, before, masked_by(weights, shared))
        out.append({n: v.numpy() for n, v in variables.items()})
    return out
