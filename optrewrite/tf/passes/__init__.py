"""The TF rewrite passes, one a module. Each works on a :class:`SiteState` per update site."""
from __future__ import annotations

from dataclasses import dataclass, field

from optrewrite.tf.graph import Placement
from optrewrite.tf.sites import UpdateSite


@dataclass
class SiteState:
    """An update site as the passes transform it.

    ``gradient`` is the tensor the update consumes (replaced by the global-norm clip);
    ``after`` are the nodes that stand for "the update has happened" (the guard's Merge,
    then each clip's write), which the update's original consumers end up waiting for.
    """

    site: UpdateSite
    gradient: str
    after: list[str]
    actions: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, site: UpdateSite) -> "SiteState":
        deps = list(dict.fromkeys([*site.sinks, *site.writes]))
        return cls(site=site, gradient=site.gradient, after=deps)

    @property
    def placement(self) -> Placement:
        return Placement(device=self.site.device, colocate_with=self.site.variable)
