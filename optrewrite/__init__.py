"""optrewrite: rewrite exported training graphs.

For the variables a YAML spec selects, optrewrite inserts an all-zero-gradient guard
around each optimizer update, a post-update clip-by-norm of the variable, and optionally
a global-norm clip of the gradients, then writes a graph that runs on stock runtimes.
"""
from __future__ import annotations

__version__ = "0.1.0"
