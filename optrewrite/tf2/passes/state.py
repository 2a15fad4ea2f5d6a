"""An update site inside a function body as the SavedModel passes transform it."""
from __future__ import annotations

from dataclasses import dataclass, field

from optrewrite.passes import Selection
from optrewrite.tf2.functions import FunctionEditor
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

    @classmethod
    def start(cls, selection: Selection[FunctionSite], editor: FunctionEditor) -> SiteState:
        site = selection.site
        return cls(selection=selection, editor=editor, gradient=site.gradient, after=list(site.var_writes))

    @property
    def site(self) -> FunctionSite:
        return self.selection.site
