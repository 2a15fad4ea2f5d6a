"""Verifying a written graph: load it in its runtime and run one training step on generated data.

:func:`verify_file` reads the file and hands it to the format that claims ``like``
(:func:`optrewrite.formats.format_for`); each format runs the step in its own runtime:

- **TensorFlow** (:mod:`optrewrite.tf.verify`): the graph is imported into a fresh
  ``tf.Graph`` and one ``Session.run`` of the ops after an optimizer update runs on a single
  CPU thread; nothing that writes files is run. The summary counts the variables the step
  changed.
- **ONNX** (:mod:`optrewrite.onnx.verify`): the model runs once in onnxruntime's CPU
  provider, or in onnx's reference evaluator while it still holds preview training ops,
  which onnxruntime does not implement. The summary counts the outputs whose values are all
  finite.

This module holds what the formats share: the exceptions, the generated data, the size
limits and the shape of the messages.

**Generated data** (``numpy.random.default_rng(seed)``, tensors in graph order, so a run is
reproducible): floating values uniform in [0.1, 1.0) — positive, so accumulators such as
Adagrad's stay valid, and below 1, so Adam's beta powers do too; integers 0 (valid indices),
except step counters (which inputs are those is the format's call), which are 1 (the first
step); booleans False; strings empty. Each format chooses the size of an unknown dimension.
A tensor of more than :data:`MAX_ELEMENTS` elements, all tensors together more than
:data:`MAX_TOTAL_ELEMENTS`, or a negative dimension is refused before anything is allocated.

A format's runtime is imported only when a graph of that format is verified. Nothing is
written, except what importing a runtime writes (see the format modules).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from optrewrite.errors import shorten
from optrewrite.formats import format_for

MAX_ELEMENTS = 2**27  # one generated tensor (512 MiB of float32)
MAX_TOTAL_ELEMENTS = 2**28  # all generated tensors of one run
STEP_TIMEOUT_S = 120.0  # a TensorFlow step waiting on an empty queue or reader fails after this
_MAX_MESSAGE = 300


class VerificationFailed(Exception):
    """The graph cannot be loaded or run in its runtime; the message is one short line."""


class TooLargeToVerify(VerificationFailed):
    """The graph may well run, but its data is more than verification generates."""


def verify_file(
    path: Path | str,
    *,
    like: Path | str | None = None,
    seed: int = 0,
    timeout_s: float = STEP_TIMEOUT_S,
) -> str:
    """Load the graph at ``path`` in its runtime and run one step on generated data.

    ``like`` names the format (its suffix and, for TensorFlow, the content decide, as for
    the input of a rewrite); without it ``path``'s name does. Returns a one-line summary.
    Raises VerificationFailed when the graph cannot be loaded or run, and InputError when
    the runtime is not installed. Nothing is written.
    """
    path = Path(path)
    like = Path(like) if like is not None else path
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise VerificationFailed(f"cannot read {path}: {exc.strerror or exc}") from None
    return format_for(like).verify(path, like, raw, seed=seed, timeout_s=timeout_s)


# ------------------------------------------------------------------------ shared by the formats


def first_line(text: str, skip: re.Pattern[str] | None = None) -> str:
    """The first informative line of an error message: not blank, not matched by ``skip``,
    and cut at its first sentence end when long."""
    for line in text.splitlines():
        line = line.strip()
        if line and not (skip and skip.match(line)):
            return sentence(line)
    return ""


def sentence(line: str) -> str:
    """A long line cut at its first sentence end."""
    if len(line) > 160:
        end = line.find(". ", 40)
        if end > 0:
            return line[: end + 1]
    return line


def failed(message: str, kind: type[VerificationFailed] = VerificationFailed) -> VerificationFailed:
    """A ``kind`` exception whose message is ``message`` on one line, shortened to fit."""
    return kind(shorten(" ".join(message.split()), _MAX_MESSAGE))


class Budget:
    """Counts generated elements; refuses absurd shapes before anything is allocated."""

    def __init__(self) -> None:
        self.total = 0

    def take(self, what: str, shape: Sequence[int]) -> tuple[int, ...]:
        """Count the elements of ``shape`` (for the tensor ``what``) and return the shape;
        VerificationFailed for a negative dimension, TooLargeToVerify past the limits."""
        for d in shape:
            if d < 0:
                raise failed(f"{what}: negative dimension {d} in shape {list(shape)}")
        n = math.prod(shape)
        if n > MAX_ELEMENTS:
            raise failed(
                f"{what}: shape {list(shape)} has {n} elements; verify generates at most {MAX_ELEMENTS} per tensor",
                TooLargeToVerify,
            )
        self.total += n
        if self.total > MAX_TOTAL_ELEMENTS:
            raise failed(f"{what}: the generated data would exceed {MAX_TOTAL_ELEMENTS} elements in all",
                         TooLargeToVerify)
        return tuple(shape)


def generate(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype, *, step: bool = False
) -> np.ndarray | None:
    """Values of ``dtype`` (see the module docstring); None for a type it cannot generate."""
    kind = dtype.kind
    if kind in "fc" or dtype.name == "bfloat16":  # ml_dtypes' bfloat16 is kind "V"
        return rng.uniform(0.1, 1.0, shape).astype(dtype)
    if kind in "iu":
        return np.full(shape, 1 if step else 0, dtype)
    if kind == "b":
        return np.zeros(shape, bool)
    if kind in "OSU":
        return np.full(shape, b"", object)
    return None


def count_finite(values: Iterable[Any]) -> tuple[int, int]:
    """How many of ``values`` are all finite (non-floating values count as finite), and how many there are."""
    finite = total = 0
    for value in values:
        total += 1
        arr = np.asarray(value)
        if arr.dtype.kind not in "fc" or bool(np.isfinite(arr).all()):
            finite += 1
    return finite, total


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays have the same shape, type and values (NaN equal to NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
