"""What a spec asks for at one update site, decided once and shared by both formats."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from optrewrite.spec import ClipGroup, Spec

S = TypeVar("S")


@dataclass(frozen=True)
class Selection(Generic[S]):
    site: S
    global_norm: bool
    guard: bool
    clips: tuple[ClipGroup, ...]
    lower: bool = False  # ONNX: the site's training op is replaced by standard ops

    @property
    def touched(self) -> bool:
        return self.global_norm or self.guard or bool(self.clips) or self.lower

    def actions(self) -> list[str]:
        """The action names, as the report lists them."""
        names = ["global_norm_clip"] if self.global_norm else []
        names += ["guard"] if self.guard else []
        names += [f"clip[{g.index}]" for g in self.clips]
        return names + (["lower"] if self.lower else [])


def select(site: S, variable: str, spec: Spec, *, lower: bool = False) -> Selection[S]:
    gnc = spec.global_norm_clip
    return Selection(
        site=site,
        global_norm=gnc is not None and gnc.select.matches(variable),
        guard=spec.guard is not None and spec.guard.select.matches(variable),
        clips=tuple(g for g in spec.clip if g.select.matches(variable)),
        lower=lower,
    )
