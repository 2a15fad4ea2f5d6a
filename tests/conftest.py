"""Test-wide settings: quiet, reproducible TensorFlow; onnxruntime without telemetry files.

The environment variables must be set before anything imports tensorflow: oneDNN
reorders float reductions, which breaks bit-for-bit comparisons. $COLUMNS is cleared, so
explain's table is as wide as its rows.
onnxruntime 1.31 writes telemetry files under $TMPDIR and ~/.cache on import unless
ORT_DISABLE_TELEMETRY is set.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
# explain's table fits $COLUMNS: tests read whole rows whatever the terminal (or pytest-xdist's
# workers) set; a test of the width sets COLUMNS itself
os.environ.pop("COLUMNS", None)

from typing import Any  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tf_config() -> Any:
    """A single-threaded session ConfigProto, with TF op determinism switched on."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    return tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
