"""The format-neutral results of looking at and rewriting one graph.

Each format finds its update sites in its own terms (``optrewrite/tf/sites.py``,
``optrewrite/onnx/sites.py``) and hands the rest of optrewrite these shapes: a
:class:`Site` as explain and the report show it, a :class:`Skip` for an update left alone
and why, the :class:`Outcome` of a rewrite done in memory, and the :class:`Analysis` that
``optrewrite explain`` renders.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from optrewrite.drawing import Changes, GraphView
    from optrewrite.report import Report


@dataclass(frozen=True)
class Site:
    """One update site as found, before any spec."""

    variable: str
    shape: str  # "[2, 3]", "?" when unknown
    dtype: str  # "float", "double", ...
    update: str  # the update op's name (or the decomposed group's scope / training node slot)
    kind: str
    slots: tuple[str, ...]
    sparse: bool
    device: str
    scope: str  # the name prefix, ending in "/", of the nodes the rewrite inserts for this site


@dataclass(frozen=True)
class Skip:
    """An update the rewrite will not touch, and why."""

    update: str
    variable: str | None
    reason: str


@dataclass
class Outcome:
    """A rewrite done in memory: the report, and the rewritten graph, serialized only by
    the format's ``save``. ``changed`` names the existing nodes the rewrite edited;
    ``graph`` is the format's own state (its editor, the parsed input)."""

    report: Report
    changed: frozenset[str] = frozenset()
    graph: Any = field(default=None, repr=False)


@dataclass
class Analysis:
    """What a format finds in one graph for ``optrewrite explain``."""

    format: str
    sites: list[Site]
    skipped: list[Skip]
    changes: Changes | None = None  # with a spec: what the rewrite inserted and changed
    view: Callable[[], GraphView] | None = None  # with a spec: builds the rewritten graph's view, to draw
    report: Report | None = None  # with a spec: the rewrite's report
