"""The graph formats optrewrite reads and writes, behind one interface.

A format is one package (``optrewrite/tf``, ``optrewrite/onnx``) whose ``format.py`` defines
a class implementing :class:`Format`; :data:`REGISTRY` names them, in the order they are
asked whether they claim a path. Everything outside a format package — the API, the CLI,
explain, diff, verify, the golden-test helper — reaches a format only through this
interface, so adding a format is one new package and one line here.

Format modules are imported when first asked for, and import their runtime libraries
(onnx, TensorFlow) only inside the methods that need them, so that telling the format of
a path costs nothing.
"""
from __future__ import annotations

import importlib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from optrewrite.core import Analysis, Outcome
    from optrewrite.spec import Spec
    from optrewrite.writeplan import WritePlan

# module:attribute of each format's implementation; the first that claims a path reads it,
# so the last one is the fallback for names no other format claims.
REGISTRY = (
    "optrewrite.onnx.format:ONNX",
    "optrewrite.tf2.format:SAVEDMODEL",
    "optrewrite.tf.format:TENSORFLOW",
)


class Format(Protocol):
    """What optrewrite needs of a graph format. Paths name graphs; ``raw`` are a file's bytes."""

    name: str  # "TensorFlow", "ONNX": how messages and reports name the format
    article: str  # "a TensorFlow graph": the noun phrase for one graph of it

    def claims(self, path: Path) -> bool:
        """Whether ``path`` names a graph of this format (by its name alone: nothing is read)."""
        ...

    def read(self, path: Path) -> bytes:
        """The bytes of the graph ``path`` names, bounded (a file's, or a SavedModel's ``saved_model.pb``)."""
        ...

    def default_output(self, path: Path) -> Path:
        """Where the rewrite of ``path`` goes without ``-o``."""
        ...

    def check_output(self, src: Path, out: Path) -> None:
        """Refuse an output path for ``src`` before anything is read (InputError)."""
        ...

    def check_request(self, path: Path, spec: Spec | None, *, lower: bool) -> None:
        """Refuse, before the graph is read, what the spec asks that this format cannot do."""
        ...

    def rewrite(self, path: Path, raw: bytes, spec: Spec, *, lower: bool) -> Outcome:
        """Rewrite in memory; nothing is serialized. InputError for a bad graph or spec."""
        ...

    def save(self, outcome: Outcome, out: Path, *, check: Callable[[Path], None] | None = None,
             plan: WritePlan | None = None) -> None:
        """Serialize the outcome and stage it for ``out``, with whatever the graph needs
        beside it, registering every path it reads and writes with ``plan`` (the run's
        :class:`~optrewrite.writeplan.WritePlan`, which commits it with the run's other
        outputs; without one, ``out`` is in place when this returns, or nothing is);
        ``check`` runs on the complete temporary output before it replaces anything. The
        only place a rewritten graph is serialized."""
        ...

    def serialize(self, outcome: Outcome) -> bytes:
        """The rewritten graph's bytes (a library call that wants bytes, not a file)."""
        ...

    def sealed(self, path: Path, raw: bytes, spec: Spec, *, lower: bool) -> str | None:
        """When ``raw`` is provably what rewriting with ``spec`` wrote (so a check has nothing
        to do), the report's format name; None otherwise, or where the format keeps no seal.
        Cheaper than a rewrite: ``--check`` asks it first."""
        ...

    def analyse(self, path: Path, raw: bytes, spec: Spec | None, *, lower: bool) -> Analysis:
        """The sites as found; with a spec, also the in-memory rewrite and what it changed."""
        ...

    def diff(self, a: Path, a_raw: bytes, b: Path, b_raw: bytes) -> list[str]:
        """The differences between two graphs of this format, one line each (see optrewrite.diff)."""
        ...

    def verify(self, path: Path, like: Path, raw: bytes, *, seed: int, timeout_s: float) -> str:
        """Run one step of the graph in its runtime; a one-line summary (see optrewrite.verify)."""
        ...

    def encode_as(self, actual: Path, raw: bytes, expected: Path) -> bytes:
        """The graph of ``actual`` (bytes ``raw``) encoded as the file name ``expected`` asks."""
        ...


@lru_cache(maxsize=None)
def _load(entry: str) -> Format:
    module, _, attr = entry.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


def formats() -> list[Format]:
    """Every registered format, in the order they claim paths."""
    return [_load(entry) for entry in REGISTRY]


def read_graph(path: Path) -> bytes:
    """The bytes the format of ``path`` reads for it (a SavedModel is a directory)."""
    return format_for(path).read(path)


def output_for(path: Path) -> Path:
    """The default output for ``path`` (``graph.pb`` -> ``graph.rewritten.pb``, ``export/`` ->
    ``export.rewritten/``)."""
    return format_for(path).default_output(path)


def check_output(src: Path, out: Path) -> None:
    """Refuse an output path before anything is read, as the format of ``src`` says."""
    format_for(src).check_output(src, out)


class SingleFile:
    """What a format whose graph is one file shares: it reads the file (bounded, regular files
    only), writes ``<stem>.rewritten<ext>`` beside it by default, and checks that an output
    can be written there."""

    def read(self, path: Path) -> bytes:
        from optrewrite.fileio import read_input  # noqa: PLC0415

        return read_input(path)

    def default_output(self, path: Path) -> Path:
        from optrewrite.fileio import default_output  # noqa: PLC0415

        return default_output(path)

    def check_output(self, src: Path, out: Path) -> None:
        from optrewrite.fileio import check_writable  # noqa: PLC0415

        check_writable(out)

    def sealed(self, path: Path, raw: bytes, spec: Spec, *, lower: bool) -> str | None:
        return None


def format_for(path: Path) -> Format:
    """The format that claims ``path``."""
    for fmt in formats():
        if fmt.claims(path):
            return fmt
    raise AssertionError(f"no format claims {path}; the last one in REGISTRY must claim every path")
