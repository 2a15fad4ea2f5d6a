"""An update site as the TensorFlow passes transform it."""
from __future__ import annotations

from dataclasses import dataclass, field

from optrewrite.passes import Selection
from optrewrite.tf.graph import Placement
from optrewrite.tf.sites import UpdateSite


@dataclass
class SiteState:
    """One selected update site during the rewrite.

    ``gradient`` is the tensor the update consumes (replaced by the global-norm clip);
    ``after`` are the nodes that stand for "the update has happened" (the guard's Merge,
    then each clip's write), which the update's original consumers end up waiting for.
    ``applied`` is set by the guard.
    """

    selection: Selection[UpdateSite]
    gradient: str
    after: list[str]
    applied: str | None = None  # the guard's scalar bool: the update ran this step
    step_finite: str | None = None  # guard scope step: every selected gradient is finite
    init_op: str | None = None  # guard counters: the op that initializes them
    counters: list[str] = field(default_factory=list)  # guard counters: the variables added

    @classmethod
    def start(cls, selection: Selection[UpdateSite]) -> SiteState:
        site = selection.site
        deps = list(dict.fromkeys([*site.sinks, *site.writes]))
        return cls(selection=selection, gradient=site.gradient, after=deps)

    @property
    def site(self) -> UpdateSite:
        return self.selection.site

    @property
    def placement(self) -> Placement:
        return Placement(device=self.site.device, colocate_with=self.site.variable)
