"""An update site inside a function body as the SavedModel passes transform it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from optrewrite.errors import InputError
from optrewrite.passes import Selection
from optrewrite.tf2.functions import FunctionEditor, node_of
from optrewrite.tf2.sites import FunctionSite


@dataclass
class SiteState:
    """One selected site during the rewrite.

    ``gradient`` is the tensor the guard tests (replaced by the global-norm clip's output);
    ``after`` are the nodes that stand for "the variable has its new value" (the variable's
    writes, then each clip's write); ``editor`` edits the site's function body.
    """

    selection: Selection[FunctionSite]
    editor: FunctionEditor
    gradient: str
    after: list[str] = field(default_factory=list)
    applied: str | None = None  # the guard's scalar bool: the update ran this step
    step_finite: str | None = None  # guard scope step: every selected gradient of the step is finite
    counters: list[str] = field(default_factory=list)  # guard.counters: the counter variables it increments

    @classmethod
    def start(cls, selection: Selection[FunctionSite], editor: FunctionEditor) -> SiteState:
        site = selection.site
        return cls(selection=selection, editor=editor, gradient=site.gradient, after=list(site.var_writes))

    @property
    def site(self) -> FunctionSite:
        return self.selection.site


def check_acyclic(g: FunctionEditor, states: Sequence[SiteState], what: str, doing: str) -> None:
    """A test or a clip over several gradients must not make an update feed itself."""
    writes = {w for st in states for w in st.site.writes}
    seen: set[str] = set()
    for st in states:
        stack = [node_of(st.gradient)]
        while stack:
            n = stack.pop()
            if n in seen or n not in g.index:
                continue
            if n in writes:
                raise InputError(f"{what}: the gradient of {st.site.var.path} depends on the update "
                                 f"{n!r}; {doing} would create a cycle")
            seen.add(n)
            stack.extend(node_of(i) for i in g.node(n).input)
